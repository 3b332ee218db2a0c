"""``mdpr evaluate`` on stored features: table, JSON, options and one-sentence errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import mdpr.cli.evaluate  # registers the subcommand
import mdpr.evaluation.pipeline
from mdpr.cli import app
from mdpr.evaluation import aqe, compute_distance, evaluate, re_rank
from mdpr.store import StoreMeta, write_store

runner = CliRunner()


def _features(rng, pids, dim):
    centers = rng.standard_normal((int(pids.max()) + 1, dim))
    return (centers[pids] + 0.8 * rng.standard_normal((pids.size, dim))).astype(np.float32)


def _store(path: Path, feats, pids, camids, fingerprint="abc123", normalized=False) -> Path:
    meta = StoreMeta(dim=feats.shape[1], fingerprint=fingerprint, normalized=normalized)
    write_store(path, meta, feats, [f"img_{i}.jpg" for i in range(len(feats))], pids, camids)
    return path


@pytest.fixture
def stores(tmp_path):
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(1, 12, 30), np.r_[rng.integers(1, 12, 70), np.zeros(10, int)]
    q_cams, g_cams = rng.integers(0, 3, 30), rng.integers(0, 3, 80)
    qf, gf = _features(rng, q_pids, 16), _features(rng, g_pids, 16)
    q = _store(tmp_path / "q.h5", qf, q_pids, q_cams)
    g = _store(tmp_path / "g.h5", gf, g_pids, g_cams)
    return {"q": q, "g": g, "qf": qf, "gf": gf, "labels": (q_pids, g_pids, q_cams, g_cams)}


def _run_json(stores, *extra):
    result = runner.invoke(app, ["evaluate", "--query-features", str(stores["q"]), "--gallery-features",
                                 str(stores["g"]), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_equals_the_library(stores):
    out = _run_json(stores)
    ref = evaluate(compute_distance(stores["qf"], stores["gf"]), *stores["labels"])
    assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
    assert out["mINP"] == pytest.approx(ref["mINP"], abs=1e-12)
    assert out["cmc"] == pytest.approx(list(ref["cmc"]), abs=1e-12)
    assert out["rank1"] == pytest.approx(ref["cmc"][0], abs=1e-12)
    assert out["num_queries"] == 30 and out["num_valid_queries"] == ref["num_valid"]
    assert "cross-camera" in out["protocol"] and "cosine" in out["protocol"]


def test_save_metrics_writes_the_json_summary(stores, tmp_path):
    target = tmp_path / "out" / "metrics.json"
    result = runner.invoke(app, ["evaluate", "--query-features", str(stores["q"]), "--gallery-features",
                                 str(stores["g"]), "--save-metrics", str(target)])
    assert result.exit_code == 0, result.output
    assert "Rank-1" in result.stdout  # the table is still printed
    saved = json.loads(target.read_text())
    assert saved["mAP"] == pytest.approx(_run_json(stores)["mAP"], abs=1e-12)


def test_table_output(stores):
    result = runner.invoke(app, ["evaluate", "--query-features", str(stores["q"]), "--gallery-features", str(stores["g"])])
    assert result.exit_code == 0, result.output
    for text in ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "queries used / skipped", "Protocol:"):
        assert text in result.stdout


@pytest.mark.parametrize("method,metric", [("jaccard", "cosine"), ("zhong", "euclidean")])
def test_rerank_and_aqe_options(stores, method, metric):
    out = _run_json(stores, "--rerank", "--rerank-method", method, "--metric", metric, "--aqe", "--k1", "8")
    qf, gf = aqe(stores["qf"], stores["gf"], qe_k=5, alpha=3.0)
    ref = evaluate(re_rank(qf, gf, k1=8, method=method, metric=metric), *stores["labels"])
    assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-9)
    assert f"{method} re-ranking" in out["protocol"] and "alpha-QE" in out["protocol"]


def test_protocol_options_reach_the_metrics(stores):
    q_pids, g_pids, q_cams, g_cams = stores["labels"]
    dist = compute_distance(stores["qf"], stores["gf"], "sqeuclidean")
    out = _run_json(stores, "--metric", "euclidean", "--no-cross-camera-only", "--ap", "trapezoid", "--max-rank", "7")
    ref = evaluate(dist, *stores["labels"], max_rank=7, cross_camera_only=False, ap="trapezoid")
    assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-12) and len(out["cmc"]) == 7
    assert "single-camera" in out["protocol"] and "trapezoidal" in out["protocol"]
    out = _run_json(stores, "--cuhk03-classic", "--seed", "4")
    ref = evaluate(compute_distance(stores["qf"], stores["gf"]), *stores["labels"], cuhk03_classic=True, seed=4)
    assert out["cmc"] == pytest.approx(list(ref["cmc"]), abs=1e-12)


def test_images_without_person_id_are_left_out(stores, tmp_path):
    q_pids, _, q_cams, _ = stores["labels"]
    pids = q_pids.copy()
    pids[:4] = -1
    q = _store(tmp_path / "q_unlabelled.h5", stores["qf"], pids, q_cams)
    result = runner.invoke(app, ["evaluate", "--query-features", str(q), "--gallery-features", str(stores["g"]), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["num_queries"] == 26 and out["unlabelled_dropped"] == {"query": 4, "gallery": 0}


def _error(args) -> str:
    result = runner.invoke(app, ["evaluate", *map(str, args)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert message.startswith("Error:") and "Traceback" not in result.output
    return message


def test_error_different_dimensions(stores, tmp_path):
    rng = np.random.default_rng(1)
    g = _store(tmp_path / "g8.h5", rng.standard_normal((5, 8)).astype(np.float32), np.arange(5), np.zeros(5, int))
    assert "16-d but the gallery features" in _error(["--query-features", stores["q"], "--gallery-features", g])


def test_error_different_models(stores, tmp_path):
    _, g_pids, _, g_cams = stores["labels"]
    g = _store(tmp_path / "other.h5", stores["gf"], g_pids, g_cams, fingerprint="fff999")
    assert "are not the ones that made the gallery store" in _error(["--query-features", stores["q"], "--gallery-features", g])


def test_error_empty_store(stores, tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(stores["q"], "r") as src, h5py.File(path, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.create_dataset("features", shape=(0, 16), maxshape=(None, 16), dtype="f4")
        dst.create_dataset("paths", shape=(0,), dtype=h5py.string_dtype())
        dst.create_dataset("pids", shape=(0,), dtype="i4")
        dst.create_dataset("camids", shape=(0,), dtype="i4")
    assert "is empty" in _error(["--query-features", path, "--gallery-features", stores["g"]])


def test_error_mismatched_lengths(stores, tmp_path):
    path = tmp_path / "short_pids.h5"
    path.write_bytes(stores["q"].read_bytes())
    with h5py.File(path, "a") as f:
        pids = f["pids"][...]
        del f["pids"]
        f.create_dataset("pids", data=pids[:-3])
    assert "'pids' has 27 rows but 'features' has 30" in _error(
        ["--query-features", path, "--gallery-features", stores["g"]])


def test_error_mode_choice(stores):
    assert "Say what to evaluate" in _error([])
    assert "both --query-features and --gallery-features" in _error(["--query-features", stores["q"]])
    assert "not both" in _error(["--dataset", "demo", "--weights", "w.pt", "--query-features", stores["q"],
                                 "--gallery-features", stores["g"]])


def test_error_no_query_has_a_match(stores, tmp_path):
    _, _, q_cams, _ = stores["labels"]
    q = _store(tmp_path / "strangers.h5", stores["qf"], np.full(30, 999), q_cams)
    assert "None of the 30 queries has a true match" in _error(
        ["--query-features", q, "--gallery-features", stores["g"]])


def test_error_unknown_cameras_need_single_camera_mode(stores, tmp_path):
    q_pids, _, _, _ = stores["labels"]
    q = _store(tmp_path / "nocam.h5", stores["qf"], q_pids, np.full(30, -1))
    assert "--no-cross-camera-only" in _error(["--query-features", q, "--gallery-features", stores["g"]])
    result = runner.invoke(app, ["evaluate", "--query-features", str(q), "--gallery-features", str(stores["g"]),
                                 "--no-cross-camera-only", "--json"])
    assert result.exit_code == 0, result.output


def test_error_normalised_and_raw_stores_under_euclidean(stores, tmp_path):
    _, g_pids, _, g_cams = stores["labels"]
    g = _store(tmp_path / "g_unit.h5", stores["gf"], g_pids, g_cams, normalized=True)
    assert "L2-normalised features and the other raw" in _error(
        ["--query-features", stores["q"], "--gallery-features", g, "--metric", "euclidean"])
    result = runner.invoke(app, ["evaluate", "--query-features", str(stores["q"]), "--gallery-features", str(g), "--json"])
    assert result.exit_code == 0, result.output  # cosine normalises anyway


def test_rerank_prints_an_estimate_before_long_runs(stores, monkeypatch):
    monkeypatch.setattr(mdpr.evaluation.pipeline, "ANNOUNCE_RERANK_IMAGES", 50)
    result = runner.invoke(app, ["evaluate", "--query-features", str(stores["q"]), "--gallery-features",
                                 str(stores["g"]), "--rerank", "--json"])
    assert result.exit_code == 0, result.output
    assert "Re-ranking 110 images (jaccard): about" in result.stderr and "GB of memory" in result.stderr
    json.loads(result.stdout)  # stdout stays one JSON object
