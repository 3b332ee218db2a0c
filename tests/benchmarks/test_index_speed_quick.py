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


def test_index_speed_quick_on_extracted_features_replicated(tmp_path: Path) -> None:
    from storekit import make_crops, tiny_checkpoint
    from typer.testing import CliRunner

    from mdpr.cli import app

    weights = tiny_checkpoint(tmp_path / "tiny.pt")
    make_crops(tmp_path / "crops", 42)
    seed = tmp_path / "seed.h5"
    done = CliRunner().invoke(app, ["extract", "--images", str(tmp_path / "crops"), "--weights", str(weights),
                                    "--output", str(seed), "--device", "cpu", "--workers", "0"])
    assert done.exit_code == 0, done.output
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "benchmarks/index_speed.py", "--quick", "--json", "--parts", "memory",
                           "--structure", "demo", "--seed-store", str(seed), "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    part = json.loads(proc.stdout.strip().splitlines()[-1])["parts"][0]
    assert part["structure"] == "demo" and part["seed"]["rows"] == 42 and part["seed"]["ids"] == 7
    assert part["rows"] == 20_000 and part["probe_recall_at_10"] >= 0.8
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, "benchmarks/index_speed.py", "--quick", "--structure", "demo", "--seed-store",
                        str(tmp_path / "missing.h5"), "--work", str(tmp_path / "work")], cwd=ROOT, env=env,
                       check=True, capture_output=True, timeout=120)
