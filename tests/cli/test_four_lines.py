"""The four lines users describe mdpr with, typed as they are (issue 12, acceptance 1).

    mdpr prepare duke /data
    mdpr train --dataset duke --gpus 2
    mdpr extract --images dir/
    mdpr query probe.jpg
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fakes import build_market
from typer.testing import CliRunner

from mdpr.cli import app

REAL_IMAGES = Path(__file__).resolve().parents[1] / "data" / "real_images"
runner = CliRunner()


def mdpr(line: str):
    """Run one command line exactly as typed (split on spaces: the lines have no quoting)."""
    assert line.startswith("mdpr ")
    return runner.invoke(app, line.split()[1:])


def test_the_four_lines_work_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    build_market(tmp_path / "data", folder="DukeMTMC-reID", cams=(1, 2, 3, 4, 5, 6, 7, 8), duke=True)
    crops = tmp_path / "crops"
    shutil.copytree(REAL_IMAGES, crops)

    prepared = mdpr("mdpr prepare duke data")
    assert prepared.exit_code == 0, prepared.output
    assert "dukemtmc" in prepared.stdout
    assert "(or --dataset duke, as you typed it)" in prepared.stdout
    assert "Next: train on it with mdpr train --dataset dukemtmc" in prepared.stdout

    trained = mdpr("mdpr train --dataset duke --recipe demo-cpu --epochs 1")
    assert trained.exit_code == 0, trained.output
    assert "Next: mdpr evaluate" in trained.stdout
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "model.pt").is_file()

    listed = mdpr("mdpr list runs --json")
    assert json.loads(listed.stdout)["entries"][-1]["model"] == str((runs[0] / "model.pt").resolve())

    extracted = mdpr("mdpr extract --images crops/")
    assert extracted.exit_code == 0, extracted.output
    assert "using the most recent trained model" in extracted.stderr
    assert "mdpr query PROBE.jpg" in extracted.stdout

    probe = "crops/0022_c6s1_002976_01.jpg"
    queried = mdpr(f"mdpr query {probe}")
    assert queried.exit_code == 0, queried.output
    assert "searching the most recent store" in queried.stderr
    as_json = mdpr(f"mdpr query {probe} --json")
    assert as_json.exit_code == 0, as_json.output
    results = json.loads(as_json.stdout)[0]["results"]
    assert len(results) == 5 and results[0]["path"].endswith("0022_c6s1_002976_01.jpg")
    assert results[0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert results[0]["camid"] == 5  # c6, numbered as the store numbers it (0-based) ...
    assert " 5 " in queried.stdout.split("0022_c6s1_002976_01.jpg")[-2].splitlines()[-1]  # ... and in the table


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has the GPUs")
def test_train_on_two_gpus_without_gpus_is_one_sentence_about_gpus(tmp_path: Path) -> None:
    build_market(tmp_path / "data", folder="DukeMTMC-reID", cams=(1, 2, 3, 4), duke=True)
    assert mdpr(f"mdpr prepare duke {tmp_path / 'data'}").exit_code == 0
    result = mdpr("mdpr train --dataset duke --gpus 2")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "GPU" in message
    assert "dataset" not in message.lower() and "Traceback" not in result.output


def test_defaults_that_cannot_be_resolved_are_one_sentence(tmp_path: Path) -> None:
    shutil.copytree(REAL_IMAGES, tmp_path / "crops")
    no_model = mdpr(f"mdpr extract --images {tmp_path / 'crops'}")
    assert no_model.exit_code == 2 and "No trained model" in no_model.stderr and "--weights" in no_model.stderr
    no_store = mdpr(f"mdpr query {tmp_path / 'crops' / '0022_c6s1_002976_01.jpg'}")
    assert no_store.exit_code == 2 and "run `mdpr extract` first" in no_store.stderr and "--gallery" in no_store.stderr


def test_a_corrupt_history_is_reported_and_rebuilt(mdpr_home: Path) -> None:
    (mdpr_home / "runs.json").write_text("{not json")
    result = mdpr("mdpr list runs")
    assert result.exit_code == 0 and "rebuilt" in result.stderr
    assert json.loads((mdpr_home / "runs.json").read_text()) == []


def test_query_refuses_a_recorded_checkpoint_that_is_gone_and_list_shows_it_missing(tmp_path: Path) -> None:
    import numpy as np

    from mdpr.store import StoreMeta, write_store
    from mdpr.workflows.history import record_store

    store = tmp_path / "g.h5"
    gone = tmp_path / "deleted.pt"
    write_store(store, StoreMeta(dim=4, fingerprint="abc", weights=str(gone)), np.eye(4, dtype=np.float32),
                ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    record_store(store, gone, "abc", 4, "test")
    probe = REAL_IMAGES / "0022_c6s1_002976_01.jpg"
    result = mdpr(f"mdpr query {probe}")
    assert result.exit_code == 2 and f"{gone} that made" in result.stderr and "--weights" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the note naming the store, then the one error sentence
    store.unlink()
    listing = json.loads(mdpr("mdpr list stores --json").stdout)
    assert listing["entries"][-1]["missing"] is True


def test_query_refuses_a_recorded_checkpoint_whose_weights_changed(tmp_path: Path) -> None:
    from storekit import tiny_checkpoint

    crops = tmp_path / "crops"
    shutil.copytree(REAL_IMAGES, crops)
    weights = tiny_checkpoint(tmp_path / "model.pt", seed=0)
    store = tmp_path / "g.h5"
    made = mdpr(f"mdpr extract --images {crops} --weights {weights} --output {store} --device cpu")
    assert made.exit_code == 0, made.output
    probe = crops / "0022_c6s1_002976_01.jpg"
    assert mdpr(f"mdpr query {probe} --device cpu").exit_code == 0  # the recorded checkpoint, unchanged
    tiny_checkpoint(weights, seed=1)  # retrained in place: same path, other weights
    result = mdpr(f"mdpr query {probe} --device cpu")
    assert result.exit_code == 2, result.output
    assert f"The checkpoint {weights} that made {store} has changed since" in " ".join(result.stderr.split())
    assert "--weights CKPT" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 2  # the note naming the store, then the one error sentence
