"""`mdpr query`: JSON shape, brute-force agreement, fingerprint refusal, pictures, bad input."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image
from storekit import REAL_IMAGES, make_crops, tiny_checkpoint
from typer.testing import CliRunner

import mdpr.cli.extract  # noqa: F401  (registers the subcommands)
import mdpr.cli.query  # noqa: F401
from mdpr.cli import app
from mdpr.inference import FeatureExtractor
from mdpr.store import FeatureStore
from mdpr.viz import ranked_list_size

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("gallery")
    weights = tiny_checkpoint(tmp / "tiny.pt")
    images = tmp / "images"
    shutil.copytree(REAL_IMAGES, images / "real")
    make_crops(images / "synthetic", 20)
    out = tmp / "feats.h5"
    result = runner.invoke(app, ["extract", "--images", str(images), "--weights", str(weights), "--output", str(out),
                                 "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    return {"tmp": tmp, "weights": weights, "images": images, "store": out}


def _query(*args: str) -> object:
    return runner.invoke(app, ["query", "--device", "cpu", *args])


def test_json_shape_and_brute_force_agreement(gallery: dict) -> None:
    probes = sorted((gallery["images"] / "real").glob("*.jpg"))[:2]
    result = _query(*map(str, probes), "--gallery", str(gallery["store"]), "--weights", str(gallery["weights"]),
                    "--top-k", "4", "--json", "--threads", "1")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [o["probe"] for o in out] == [str(p) for p in probes]
    assert all(set(o) == {"probe", "results"} for o in out)
    for o in out:
        assert [r["rank"] for r in o["results"]] == [1, 2, 3, 4]
        assert all(set(r) == {"rank", "path", "distance", "pid", "camid"} for r in o["results"])
    # The probe itself is in the gallery: rank 1, distance 0, with pid / camid parsed from its name.
    first = out[0]["results"][0]
    assert first["path"] == str(probes[0].resolve()) and first["distance"] == pytest.approx(0.0, abs=1e-5)
    assert (first["pid"], first["camid"]) == (22, 5)
    assert (out[1]["results"][0]["pid"], out[1]["results"][0]["camid"]) == (27, 1)

    # Brute force: numpy cosine over the whole matrix.
    with FeatureStore.open(gallery["store"]) as store:
        feats = store.read_features().astype(np.float64)
        paths = [str(store.resolve(p)) for p in store.paths]
    q = FeatureExtractor(gallery["weights"], device="cpu", num_workers=0, normalize=True)(probes).astype(np.float64)
    dist = 1.0 - q @ (feats / np.linalg.norm(feats, axis=1, keepdims=True)).T
    for row, o in zip(dist, out):
        order = np.argsort(row, kind="stable")[:4]
        assert [r["path"] for r in o["results"]] == [paths[i] for i in order]
        np.testing.assert_allclose([r["distance"] for r in o["results"]], np.maximum(row[order], 0), atol=1e-5)

    # --workers 0 decodes in the main thread, 2 in two threads: the same results (same range as other commands)
    for workers in ("0", "2"):
        again = _query(*map(str, probes), "--gallery", str(gallery["store"]), "--weights", str(gallery["weights"]),
                       "--top-k", "4", "--json", "--threads", "1", "--workers", workers)
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout) == out


def test_table_rerank_and_picture(gallery: dict) -> None:
    probe = sorted((gallery["images"] / "real").glob("*.jpg"))[0]
    picture = gallery["tmp"] / "out" / "ranked.png"
    result = _query(str(probe), str(gallery["images"] / "synthetic" / "cam1"), "--gallery", str(gallery["store"]),
                    "--weights", str(gallery["weights"]), "--top-k", "3", "--rerank", "--save", str(picture))
    assert result.exit_code == 0, result.output
    assert "rank" in result.stdout and "0022_c6s1_002976_01.jpg" in result.stdout
    n_probes = 1 + len(list((gallery["images"] / "synthetic" / "cam1").glob("*.jpg")))
    with Image.open(picture) as pic:
        assert pic.format == "PNG"
        assert pic.size == ranked_list_size(n_probes, 3, (128, 64))  # 64x32 model input -> 128x64 thumbnails


def test_different_weights_are_refused(gallery: dict) -> None:
    other = tiny_checkpoint(gallery["tmp"] / "other.pt", seed=3)
    probe = sorted((gallery["images"] / "real").glob("*.jpg"))[0]
    result = _query(str(probe), "--gallery", str(gallery["store"]), "--weights", str(other))
    assert result.exit_code == 2
    assert "are not the ones that made" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _bad_inputs(gallery: dict) -> list:
    tmp = gallery["tmp"] / "bad"
    tmp.mkdir(exist_ok=True)
    (tmp / "notes.jpg").write_text("not an image")
    (tmp / "plain.txt").write_text("hello")
    with h5py.File(tmp / "foreign.h5", "w") as h5:
        h5["features"] = np.zeros((3, 4), np.float32)
    probe = str(sorted((gallery["images"] / "real").glob("*.jpg"))[0])
    store, weights = str(gallery["store"]), str(gallery["weights"])
    return [
        ([str(tmp / "notes.jpg"), "--gallery", store, "--weights", weights], "could not be read"),
        ([str(tmp / "missing.jpg"), "--gallery", store, "--weights", weights], "does not exist"),
        ([probe, "--gallery", str(tmp / "plain.txt"), "--weights", weights], "not an HDF5 file"),
        ([probe, "--gallery", str(tmp / "foreign.h5"), "--weights", weights], "not an mdpr feature store"),
        ([probe, "--gallery", str(tmp / "nope.h5"), "--weights", weights], "does not exist"),
        ([probe, "--gallery", store, "--weights", str(tmp / "nope.pt")], "does not exist"),
        ([probe, "--gallery", store, "--weights", weights, "--save", str(tmp / "x.jpg")], ".png"),
    ]


def test_bad_input_is_one_sentence_and_exit_2(gallery: dict) -> None:
    for args, message in _bad_inputs(gallery):
        result = _query(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_fresh_index_is_used_by_auto_and_its_distances_are_exact(gallery: dict) -> None:
    """Issue 16, acceptance 2: `mdpr query PROBE --index auto` uses a fresh index, says so, prints exact distances."""
    pytest.importorskip("faiss")
    built = runner.invoke(app, ["index", "build", "--gallery", str(gallery["store"]), "--kind", "hnsw", "--json"])
    assert built.exit_code == 0, built.output
    probe = str(sorted(REAL_IMAGES.glob("*.jpg"))[0])
    auto = _query(probe, "--gallery", str(gallery["store"]), "--weights", str(gallery["weights"]), "--json",
                  "--index", "auto")
    exact = _query(probe, "--gallery", str(gallery["store"]), "--weights", str(gallery["weights"]), "--json",
                   "--index", "exact")
    assert auto.exit_code == 0 and exact.exit_code == 0, auto.output + exact.output
    assert "HNSW" in auto.stderr or "index" in auto.stderr.lower()
    rows_auto = {r["path"]: r["distance"] for r in json.loads(auto.stdout)[0]["results"]}
    rows_exact = {r["path"]: r["distance"] for r in json.loads(exact.stdout)[0]["results"]}
    for path, distance in rows_auto.items():
        if path in rows_exact:
            assert distance == pytest.approx(rows_exact[path], abs=1e-6)
    assert len(set(rows_auto) & set(rows_exact)) >= len(rows_exact) - 1  # recall on a tiny store
