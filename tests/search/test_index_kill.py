"""``kill -9`` during an index build leaves the previous index (or none), never a part of one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from indexkit import SMALL_IVFPQ, make_store

from mdpr.search import ExactIndex, index_dir_for, open_index, read_index_meta, search
from mdpr.search.faiss_index import FaissIndex, build_index
from mdpr.store import FeatureStore

pytest.importorskip("faiss")

# Builds a 3-shard IVF-PQ index and SIGKILLs itself at the given progress point: while adding rows to the
# second shard (the first shard's file is complete), or once every shard file is written (only the
# metadata is missing).
SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})  # tests/ (indexkit)
import mdpr.search.faiss_index as fi
from mdpr.store import FeatureStore
fi.ADD_ROWS = 100
stage_to_kill = sys.argv[2]
def progress(stage, done, total):
    if stage == stage_to_kill and (stage != "add" or done > 1000):
        os.kill(os.getpid(), signal.SIGKILL)
with FeatureStore.open(sys.argv[1]) as store:
    fi.build_index(store, "ivfpq", shards=3, queries=50, progress=progress, **{params!r})
print("not killed")
"""


@pytest.mark.parametrize("stage", ["add", "recall"])
@pytest.mark.parametrize("earlier", [False, True])
def test_kill_during_build_leaves_no_half_written_index(tmp_path: Path, stage: str, earlier: bool) -> None:
    path = make_store(tmp_path / "g.h5", n=2000)
    folder = index_dir_for(path)
    if earlier:
        with FeatureStore.open(path) as store:
            build_index(store, "flat", queries=20)
    before = sorted(p.name for p in folder.iterdir()) if earlier else None
    script = tmp_path / "build.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parents[1]), params=SMALL_IVFPQ))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(path), stage], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    names = sorted(p.name for p in folder.iterdir())
    assert any(n.endswith(".faiss") or n.endswith(".tmp") for n in set(names) - set(before or [])), names
    meta = read_index_meta(path)
    with FeatureStore.open(path) as store:
        index, note = open_index(store, "auto")
        if earlier:  # the earlier index is intact and still served
            assert meta is not None and meta.kind == "flat"
            assert isinstance(index, FaissIndex) and index.kind == "flat"
            probe = store.read_features(np.float32, rows=[7])
            np.testing.assert_array_equal(index.search(probe, top_k=5).indices, search(store, probe, top_k=5).indices)
        else:
            assert meta is None and isinstance(index, ExactIndex)
        # the next build cleans what the killed one left and replaces the index whole
        rebuilt = build_index(store, "ivfpq", shards=3, queries=50, **SMALL_IVFPQ)
        assert rebuilt is not None
        assert sorted(p.name for p in folder.iterdir()) == sorted([".lock", "index.json"] + [s["file"] for s in rebuilt.shards])
