"""``mdpr prepare``: output forms and every bad-input case (one sentence, exit status 2, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import build_market
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.data import load_dataset

runner = CliRunner()


def _error(args: list) -> str:
    result = runner.invoke(app, ["prepare", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    message = result.stderr.strip()
    assert message.startswith("Error:")
    return " ".join(message.split())


def test_help_has_examples() -> None:
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0
    assert "mdpr prepare demo mdpr-demo/data" in result.stdout and "--with-distractors" in result.stdout
    assert "prepare" in runner.invoke(app, ["--help"]).stdout


def test_table_output_and_registration(tmp_path: Path) -> None:
    build_market(tmp_path)
    result = runner.invoke(app, ["prepare", "market", str(tmp_path), "--name", "mkt"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("train", "query", "gallery", "ids", "images", "cameras", "--dataset mkt"):
        assert word in out
    assert "40" in out and "52" in out
    assert load_dataset("mkt").dataset == "market1501"


def test_json_is_exactly_one_object(tmp_path: Path) -> None:
    build_market(tmp_path)
    result = runner.invoke(app, ["prepare", "market1501", str(tmp_path), "--json"])
    assert result.exit_code == 0
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert list(stats) == [
        "dataset",
        "train_ids",
        "train_images",
        "query_ids",
        "query_images",
        "gallery_ids",
        "gallery_images",
        "cameras",
    ]
    assert all(isinstance(v, int) for k, v in stats.items() if k != "dataset")


def test_rerun_replaces_registration(tmp_path: Path) -> None:
    root = build_market(tmp_path)
    assert runner.invoke(app, ["prepare", "market1501", str(tmp_path), "--json"]).exit_code == 0
    for p in (root / "query").glob("0001_*.jpg"):
        p.unlink()
    result = runner.invoke(app, ["prepare", "market1501", str(tmp_path), "--json"])
    assert json.loads(result.stdout)["query_images"] == 6
    assert len(load_dataset("market1501").query) == 6


def test_error_root_missing(tmp_path: Path) -> None:
    msg = _error(["market1501", str(tmp_path / "nowhere")])
    assert "does not exist" in msg and "nowhere" in msg


def test_error_unknown_layout_names_expected_and_found(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "labels").mkdir()
    msg = _error(["market1501", str(tmp_path)])
    assert "bounding_box_train/" in msg and "bounding_box_test/" in msg
    assert "photos/" in msg and "labels/" in msg


def test_error_unknown_dataset_lists_supported(tmp_path: Path) -> None:
    msg = _error(["viper", str(tmp_path)])
    for name in ("market1501", "dukemtmc", "msmt17", "cuhk03", "synergyreid", "folder", "demo"):
        assert name in msg


def test_error_empty_split(tmp_path: Path) -> None:
    root = build_market(tmp_path)
    for p in (root / "query").glob("*.jpg"):
        p.unlink()
    msg = _error(["market1501", str(tmp_path)])
    assert "query split is empty" in msg and str(root / "query") in msg


def test_error_unsafe_zip(tmp_path: Path) -> None:
    import zipfile

    zip_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("../../outside.jpg", b"x")
    msg = _error(["market1501", str(zip_path)])
    assert "Refusing to extract" in msg and "'..'" in msg


@pytest.mark.parametrize(
    "args, text",
    [
        (["msmt17", ".", "--with-distractors"], "--with-distractors applies to market1501 only"),
        (["market1501", ".", "--with-val"], "--with-val applies to msmt17 only"),
        (["dukemtmc", ".", "--variant", "detected"], "--variant applies to cuhk03 only"),
        (["market1501", ".", "--ids", "10"], "--ids applies to `mdpr prepare demo` only"),
        (["cuhk03", ".", "--variant", "both"], "Unknown CUHK03 variant"),
        (["market1501", ".", "--name", "a/b"], "not valid"),
    ],
)
def test_error_options(tmp_path: Path, args: list, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    build_market(tmp_path)
    assert text in _error(args)
