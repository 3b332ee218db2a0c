"""Drifts that existed before each job had one home: each has its test here."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mdpr.evaluation.distance import compute_distance
from mdpr.evaluation.pipeline import METRICS as EVALUATION_METRICS
from mdpr.evaluation.pipeline import EvaluationResult, LabelledFeatures, Protocol, evaluate_features
from mdpr.runtime import resolve_device
from mdpr.search import METRICS as SEARCH_METRICS
from mdpr.search import GalleryIndex, search


def test_mps_is_accepted_by_train_where_mps_exists(monkeypatch) -> None:
    """`mps` used to work in extract/evaluate/query but was refused by train."""
    from mdpr.engine.distributed import plan_launch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps").type == "mps"
    plan = plan_launch(None, None, "mps")  # what `mdpr train --device mps` plans
    assert plan.mode == "single" and plan.device == "mps"
    from mdpr.engine import trainer

    assert trainer.resolve_device is resolve_device  # the trainer resolves devices with the one function


def test_mps_is_refused_in_one_sentence_where_it_does_not_exist(monkeypatch) -> None:
    from mdpr.errors import MdprError

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(MdprError, match="MPS"):
        resolve_device("mps")


def test_euclidean_means_the_same_distance_in_evaluate_and_query() -> None:
    """`euclidean` used to be the squared distance in `mdpr evaluate` and the true one in `mdpr query`."""
    assert set(EVALUATION_METRICS) == set(SEARCH_METRICS)
    rng = np.random.default_rng(0)
    probes = rng.standard_normal((3, 8)).astype(np.float32)
    gallery = rng.standard_normal((20, 8)).astype(np.float32)
    found = search(GalleryIndex(gallery), probes, top_k=5, metric="euclidean")
    evaluated = compute_distance(probes, gallery, "euclidean")  # what the evaluation pipeline ranks by
    for q in range(3):
        np.testing.assert_allclose(found.distances[q], evaluated[q, found.indices[q]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(found.distances[q], np.linalg.norm(gallery[found.indices[q]] - probes[q], axis=1),
                                   rtol=1e-5, atol=1e-5)


def _side(name: str, feats: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> LabelledFeatures:
    return LabelledFeatures(name, feats, pids, cams, name)


def test_one_result_schema_for_every_evaluation(tmp_path: Path) -> None:
    """`num_query` / `num_queries` / `num_valid_query` used to differ between train, evaluate and the demo."""
    from mdpr.engine.report import summarize

    rng = np.random.default_rng(1)
    q = _side("query", rng.standard_normal((6, 4)).astype(np.float32), np.arange(6), np.zeros(6, np.int64))
    g = _side("gallery", rng.standard_normal((12, 4)).astype(np.float32), np.arange(12) % 6, np.ones(12, np.int64))
    result = evaluate_features(q, g, Protocol(metric="euclidean"))
    keys = {f.name for f in dataclasses.fields(EvaluationResult)}
    assert set(result.to_dict()) == keys
    assert {"num_queries", "num_valid_queries", "num_gallery"} <= keys
    # training's eval records are the same dict minus the curve and the protocol text
    record = {"type": "eval", "epoch": 1, "iteration": 3, **{k: v for k, v in result.to_dict().items()
                                                            if k not in ("cmc", "protocol")}}
    final = summarize([record])["final_metrics"]
    assert set(final) - {"epoch", "iteration"} <= keys and "num_queries" in final
    json.dumps(result.to_dict(), allow_nan=False)  # always valid JSON


PACKAGE = Path(__file__).resolve().parents[2] / "mdpr"
#: (owner, attribute) calls that only their one home may make.
ONE_HOME_CALLS = {
    ("torch", "set_num_threads"): "runtime.py",  # thread policy: runtime.torch_threads / cpu_threads / share_cpu_threads
    ("torch", "load"): "fileio.py",  # every checkpoint read goes through fileio.read_torch_file
    ("os", "fsync"): "fileio.py",  # durability rule; the store's append-only journal is the one other writer
}
ALSO_ALLOWED = {("os", "fsync"): {"store/journal.py"}}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            yield (node.func.value.id, node.func.attr), node.lineno


def test_threads_checkpoint_reads_and_fsyncs_have_one_home() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for call, line in _calls(path):
            home = ONE_HOME_CALLS.get(call)
            if home is not None and rel != home and rel not in ALSO_ALLOWED.get(call, set()):
                found.append(f"mdpr/{rel}:{line} calls {'.'.join(call)} (its home is mdpr/{home})")
    assert not found, "\n".join(found)

