from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest
from fakes import build_market, torchreid_market_stats
from typer.testing import CliRunner

import mdpr.data.archive as archive_module
from mdpr.cli import app
from mdpr.data.archive import default_extract_dir, extract_zip, unsafe_reason
from mdpr.errors import MdprError

runner = CliRunner()


def _zip_tree(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.parent.rglob("*")):
            zf.write(p, p.relative_to(folder.parent).as_posix())
    return zip_path


@pytest.mark.parametrize(
    "name, unsafe",
    [
        ("Market/a.jpg", False),
        ("./a/b.jpg", False),
        ("../evil.jpg", True),
        ("a/../../evil.jpg", True),
        ("/etc/passwd", True),
        ("C:\\x\\y.jpg", True),
        ("a\\..\\..\\evil.jpg", True),
        ("\\\\server\\share", True),
    ],
)
def test_unsafe_reason(name: str, unsafe: bool) -> None:
    assert (unsafe_reason(name) is not None) == unsafe


def test_prepare_from_zip_extracts_next_to_it_and_never_overwrites(tmp_path: Path) -> None:
    src = build_market(tmp_path / "src")
    zip_path = _zip_tree(src, tmp_path / "Market-1501-v15.09.15.zip")
    result = runner.invoke(app, ["prepare", "market1501", str(zip_path), "--json"])
    assert result.exit_code == 0, result.output
    dest = default_extract_dir(zip_path)
    assert dest == tmp_path / "Market-1501-v15.09.15"
    assert json.loads(result.stdout)["train_images"] == torchreid_market_stats(src)["train_images"]
    # a second run reuses the extracted files (same sizes) and touches none of them
    victim = next((dest / "Market-1501-v15.09.15" / "query").glob("*.jpg"))
    before = victim.stat().st_mtime_ns
    assert runner.invoke(app, ["prepare", "market1501", str(zip_path), "--json"]).exit_code == 0
    assert victim.stat().st_mtime_ns == before
    # a different file under an archive name is never overwritten
    victim.write_bytes(b"mine")
    result = runner.invoke(app, ["prepare", "market1501", str(zip_path)])
    assert result.exit_code == 2 and "not overwritten" in result.output
    assert victim.read_bytes() == b"mine"


@pytest.mark.parametrize("evil", ["../escape.jpg", "/abs/escape.jpg", "ok/../../escape.jpg"])
def test_zip_with_unsafe_entry_is_refused_before_writing(tmp_path: Path, evil: str) -> None:
    zip_path = tmp_path / "data.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("Market/bounding_box_train/0001_c1s1_000001_00.jpg", b"x")
        zf.writestr(evil, b"x")
    result = runner.invoke(app, ["prepare", "market1501", str(zip_path)])
    assert result.exit_code == 2
    assert "Refusing to extract" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "escape.jpg").exists()


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    zip_path = tmp_path / "data.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("link/x.jpg", b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    with pytest.raises(MdprError, match="outside"):
        extract_zip(zip_path)
    assert not (outside / "x.jpg").exists()


def test_not_a_zip(tmp_path: Path) -> None:
    f = tmp_path / "data.tar"
    f.write_bytes(b"not an archive")
    result = runner.invoke(app, ["prepare", "market1501", str(f)])
    assert result.exit_code == 2 and "not a .zip archive" in result.output


def test_members_are_published_in_batches_and_a_repeated_entry_is_checked(tmp_path, monkeypatch):
    real_batch = archive_module.atomic_batch
    monkeypatch.setattr(archive_module, "atomic_batch", lambda: real_batch(limit=3))
    zpath = tmp_path / "many.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(zpath, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        for i in range(7):
            zf.writestr(f"d/{i}.txt", f"file {i}")
        zf.writestr("d/0.txt", "a different, longer file 0")
    with pytest.raises(MdprError, match="differ"):
        archive_module.extract_zip(zpath, tmp_path / "out")
    out = tmp_path / "out" / "d"
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.txt" for i in range(7)]  # no temporary files left
    assert (out / "0.txt").read_text() == "file 0"
