"""benchmarks/append_speed.py --quick runs (so that the script cannot rot) and measures what it claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def store_layout() -> str:
    return "auto"  # the script chooses its layouts itself


def test_append_speed_quick(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "append_speed.py"), "--quick", "--json",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rows"] == 20_000 and result["segments"] == 10
    # Even at this small size an append writes a fraction of what rewriting writes.
    assert 0 < result["append_bytes"] < result["rewrite_bytes"] / 3
    assert result["rewrite_bytes"] >= result["store_bytes"] * 0.9
    assert result["compact_s"] > 0 and result["read_write_s"] > 0
    assert not list(tmp_path.iterdir())  # the script cleans up after itself
