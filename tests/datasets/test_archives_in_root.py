"""`mdpr prepare DATASET ROOT` with ROOT holding only the official download: extracted safely, once."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest
from fakes import (
    STAT_KEYS,
    build_cuhk03_config,
    build_cuhk03_mat,
    build_market,
    build_msmt17,
    cuhk03_images,
    torchreid_cuhk03_new_stats,
)
from typer.testing import CliRunner

import mdpr.cli.prepare  # noqa: F401  (registers the subcommand)
import mdpr.data.archive as archive_mod
from mdpr.cli import app
from mdpr.data.archive import extract_archive, find_archives
from mdpr.data.records import load_dataset
from mdpr.errors import MdprError

runner = CliRunner()


def _zip(folder: Path, zip_path: Path) -> Path:
    """Pack ``folder`` as the official downloads are: every entry under the folder's own name."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder.parent).as_posix())
    return zip_path


def _tar(folder: Path, tar_path: Path) -> Path:
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return tar_path


def _prepare(*args: str) -> Dict[str, int]:
    result = runner.invoke(app, ["prepare", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _files(folder: Path) -> List[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "typed, folder, archive, duke",
    [
        ("duke", "DukeMTMC-reID", "DukeMTMC-reID.zip", True),
        ("market", "Market-1501-v15.09.15", "Market-1501-v15.09.15.zip", False),
    ],
)
def test_root_holding_only_the_archive_gives_the_statistics_of_the_tree(
    tmp_path: Path, typed: str, folder: str, archive: str, duke: bool
) -> None:
    tree = build_market(tmp_path / "src", folder=folder, duke=duke)
    expected = _prepare(typed, str(tree), "--name", "from-tree")
    root = tmp_path / "data"
    _zip(tree, root / archive)
    assert [p.name for p in root.iterdir()] == [archive]
    got = _prepare(typed, str(root))
    assert {k: got[k] for k in STAT_KEYS} == {k: expected[k] for k in STAT_KEYS}
    assert got["dataset"] == expected["dataset"]
    assert _files(root / folder) == _files(tree)  # next to the archive, not doubled
    assert not (root / folder / folder).exists()


def test_a_second_prepare_reuses_the_extracted_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = build_market(tmp_path / "src", folder="DukeMTMC-reID", duke=True)
    root = tmp_path / "data"
    _zip(tree, root / "DukeMTMC-reID.zip")
    first = _prepare("duke", str(root))

    def no_reading(*_a, **_k):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(archive_mod, "_Reader", no_reading)
    assert _prepare("duke", str(root)) == first
    assert _prepare("duke", str(root / "DukeMTMC-reID.zip")) == first


def test_msmt17_tar_gz(tmp_path: Path) -> None:
    tree = build_msmt17(tmp_path / "src", version=1)
    expected = _prepare("msmt17", str(tree), "--name", "from-tree")
    root = tmp_path / "data"
    _tar(tree, root / "MSMT17_V1.tar.gz")
    got = _prepare("msmt17_v1", str(root))
    assert {k: got[k] for k in STAT_KEYS} == {k: expected[k] for k in STAT_KEYS}
    assert _files(root / "MSMT17_V1") == _files(tree)


def test_cuhk03_release_zip_beside_the_protocol_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    mat = build_cuhk03_mat(tmp_path / "src" / "cuhk03_release" / "cuhk-03.mat")
    _zip(mat.parent, root / "cuhk03_release.zip")
    config = build_cuhk03_config(root / "cuhk03_new_protocol_config_detected.mat", cuhk03_images(variant="detected"),
                                 (1, 5, 9, 12))
    got = _prepare("cuhk03-detected", str(root))
    assert {k: got[k] for k in STAT_KEYS} == torchreid_cuhk03_new_stats(config)
    assert (root / "cuhk03_release" / "cuhk-03.mat").is_file()
    assert load_dataset("CUHK03-detected").options == {"variant": "detected", "protocol": "new"}


def test_an_interrupted_extraction_is_completed_before_parsing(tmp_path: Path) -> None:
    tree = build_market(tmp_path / "src", folder="DukeMTMC-reID", duke=True)
    expected = _prepare("duke", str(tree), "--name", "from-tree")
    root = tmp_path / "data"
    zip_path = _zip(tree, root / "DukeMTMC-reID.zip")
    extract_archive(zip_path)
    # as if killed half-way: some images missing, the marker still says "extracting"
    for p in sorted((root / "DukeMTMC-reID" / "query").glob("*.jpg"))[:3]:
        p.unlink()
    marker = root / ".DukeMTMC-reID.zip.mdpr-extract.json"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "state": "extracting"}))
    got = _prepare("duke", str(root))
    assert got["query_images"] == expected["query_images"]
    assert json.loads(marker.read_text())["state"] == "done"


def test_a_tree_extracted_by_hand_beside_the_archive_is_used_as_it_is(tmp_path: Path) -> None:
    tree = build_market(tmp_path / "src", folder="DukeMTMC-reID", duke=True)
    root = tmp_path / "data"
    _zip(tree, root / "DukeMTMC-reID.zip")
    shutil.copytree(tree, root / "DukeMTMC-reID")
    victim = sorted((root / "DukeMTMC-reID" / "query").glob("*.jpg"))[0]
    victim.unlink()  # the user's tree differs from the archive: it is theirs, never "repaired"
    got = _prepare("duke", str(root))
    assert got["query_images"] == len(list((tree / "query").glob("*.jpg"))) - 1
    assert not victim.exists() and not (root / ".DukeMTMC-reID.zip.mdpr-extract.json").exists()


def test_two_archives_of_the_dataset_are_ambiguous(tmp_path: Path) -> None:
    tree = build_msmt17(tmp_path / "src", version=1)
    _tar(tree, tmp_path / "data" / "MSMT17_V1.tar.gz")
    _tar(tree, tmp_path / "data" / "MSMT17_V2.tar.gz")
    assert [p.name for p in find_archives(tmp_path / "data", ("MSMT17_V1", "MSMT17_V2"))] == [
        "MSMT17_V1.tar.gz", "MSMT17_V2.tar.gz"]
    result = runner.invoke(app, ["prepare", "msmt17", str(tmp_path / "data")])
    assert result.exit_code == 2 and "more than one MSMT17 archive" in result.output


# ------------------------------------------------------------------------------------ hostile archives


def _zip_entries(path: Path, entries: Dict[str, bytes], links: Dict[str, str] = {}) -> Path:  # noqa: B006
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def _tar_entries(path: Path, members: List[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, link
    m.size = 1 if kind == tarfile.REGTYPE else 0
    return m


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: _zip_entries(p / "a.zip", {"d/a": b"x", "d/a/b": b"y"}), "is a file but entry 'd/a/b' uses it"),
        (lambda p: _zip_entries(p / "a.zip", {"d/a/b": b"y", "d/a": b"x"}), "is a file but entry 'd/a/b' uses it"),
        (lambda p: _zip_entries(p / "a.zip", {"d/x": b"x"}, {"d/link": "/etc"}), "'d/link' is a symbolic link"),
        (lambda p: _tar_entries(p / "a.tar", [_member("d/x"), _member("d/l", tarfile.SYMTYPE, "/etc")]),
         "'d/l' is a symbolic link"),
        (lambda p: _tar_entries(p / "a.tar", [_member("d/x"), _member("d/h", tarfile.LNKTYPE, "d/x")]),
         "'d/h' is a hard link"),
        (lambda p: _tar_entries(p / "a.tar", [_member("d/fifo", tarfile.FIFOTYPE)]), "'d/fifo' is a device or FIFO"),
        (lambda p: _tar_entries(p / "a.tar", [_member("d/x"), _member("../evil")]), "'..' component"),
        (lambda p: _tar_entries(p / "a.tar", [_member("/abs/evil")]), "an absolute path"),
        (lambda p: _tar_entries(p / "a.tar", [_member("d/x"), _member("d/x")]), "lists the file 'd/x' twice"),
    ],
)
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path: Path, make, why: str) -> None:
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(MdprError, match="Refusing to extract") as err:
        extract_archive(path)
    assert why in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, no marker, no file
    result = runner.invoke(app, ["prepare", "market1501", str(path)])
    assert result.exit_code == 2 and "Refusing to extract" in result.output and "Traceback" not in result.output
