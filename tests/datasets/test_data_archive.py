from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from fakes import build_market, torchreid_market_stats
from typer.testing import CliRunner

import mdpr.data.archive as archive_module
from mdpr.cli import app
from mdpr.data.archive import extract_archive, unsafe_reason
from mdpr.errors import MdprError

runner = CliRunner()


def _zip_tree(folder: Path, zip_path: Path) -> Path:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
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
    zip_path = _zip_tree(src, tmp_path / "dl" / "Market-1501-v15.09.15.zip")
    result = runner.invoke(app, ["prepare", "market1501", str(zip_path), "--json"])
    assert result.exit_code == 0, result.output
    dest = tmp_path / "dl" / "Market-1501-v15.09.15"  # the archive's own top folder, not doubled
    assert (dest / "query").is_dir() and not (dest / "Market-1501-v15.09.15").exists()
    assert json.loads(result.stdout)["train_images"] == torchreid_market_stats(src)["train_images"]
    # a second run reuses the extracted files and touches none of them
    victim = next((dest / "query").glob("*.jpg"))
    before = victim.stat().st_mtime_ns
    again = runner.invoke(app, ["prepare", "market1501", str(zip_path)])
    assert again.exit_code == 0 and "reused" in again.output
    assert victim.stat().st_mtime_ns == before
    # without the record of the finished extraction, a different file under an archive name is never overwritten
    (zip_path.parent / f".{zip_path.name}.mdpr-extract.json").unlink()
    victim.write_bytes(b"mine")
    result = runner.invoke(app, ["prepare", "market1501", str(zip_path)])
    assert result.exit_code == 2 and "not overwritten" in result.output
    assert victim.read_bytes() == b"mine"


def test_zip_without_a_top_folder_goes_into_a_folder_named_after_it(tmp_path: Path) -> None:
    src = build_market(tmp_path / "src")
    zip_path = tmp_path / "market.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    assert extract_archive(zip_path) == tmp_path / "market"
    assert (tmp_path / "market" / "bounding_box_train").is_dir()


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
    (tmp_path / "dl").mkdir()
    zip_path = tmp_path / "dl" / "data.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("link/x.jpg", b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dl" / "link").symlink_to(outside)  # the archive's top folder, beside it, is a link out
    with pytest.raises(MdprError, match="outside"):
        extract_archive(zip_path)
    assert not (outside / "x.jpg").exists()


def test_not_a_zip(tmp_path: Path) -> None:
    f = tmp_path / "data.tar"
    f.write_bytes(b"not an archive")
    result = runner.invoke(app, ["prepare", "market1501", str(f)])
    assert result.exit_code == 2 and "not a .zip or .tar archive" in result.output


def test_members_are_published_in_batches_and_an_interrupted_extraction_keeps_whole_files(tmp_path, monkeypatch):
    real_batch = archive_module.atomic_batch
    monkeypatch.setattr(archive_module, "atomic_batch", lambda: real_batch(limit=3))
    zpath = tmp_path / "many.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i in range(8):
            zf.writestr(f"many/{i}.txt", f"file {i}")
    calls = []

    def stop_after_five(done: int, total: int, stage: str) -> None:
        calls.append(done)
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_archive(zpath, progress=stop_after_five)
    out = tmp_path / "many"
    assert sorted(p.name for p in out.iterdir()) == ["0.txt", "1.txt", "2.txt"]  # one batch published, no temporaries
    assert extract_archive(zpath) == out  # resumes
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.txt" for i in range(8)]
    assert all((out / f"{i}.txt").read_text() == f"file {i}" for i in range(8))
