"""``benchmarks/backend_speed.py --quick`` runs and reports every backend with same-run ratios and cosines."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("onnxruntime")


def test_backend_speed_quick() -> None:
    out = subprocess.run([sys.executable, "benchmarks/backend_speed.py", "--quick", "--json", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    rows = {r["backend"]: r for r in result["rows"]}
    expected = {"torch", "torch-channels-last", "onnxruntime", "onnxruntime-int8"}
    if importlib.util.find_spec("openvino") is not None:
        expected |= {"openvino", "openvino-int8"}
    assert set(rows) == expected
    assert rows["torch"]["throughput_ratio"] == 1.0 and rows["torch"]["latency_ratio"] == 1.0
    for name, row in rows.items():
        assert row["images_per_s"] > 0 and row["latency_ms"] > 0
        assert row["min_cosine"] >= (0.9 if name.endswith("int8") else 0.99999), row
    assert result["date"] and "threads" in result["machine"]
