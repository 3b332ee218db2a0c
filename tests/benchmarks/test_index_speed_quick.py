"""``benchmarks/index_speed.py --quick`` runs (so the benchmark cannot rot) and reports what it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")
ROOT = Path(__file__).resolve().parents[2]


def test_index_speed_quick(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "benchmarks/index_speed.py", "--quick", "--json", "--work", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [p["part"] for p in out["parts"]] == ["memory", "disk"]
    for part in out["parts"]:
        assert part["kind"] == "ivfpq" and part["build_peak_rss_gb"] > 0 and part["index_memory_gb"] > 0
        assert set(part["build_recall"]) >= {"at_1", "at_10", "at_100"}
        assert part["build_recall"]["at_10"] >= 0.9 and part["probe_recall_at_10"] >= 0.8
        assert part["index_ms_per_probe"] > 0 and part["exact_ms_per_probe"] > 0
        assert "Using the IVF-PQ index" in part["note"]
