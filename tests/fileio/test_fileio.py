"""The one durability rule for whole-file writes, the output-path checks and the safe torch reader."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

import mdpr
from mdpr import fileio
from mdpr.errors import MdprError
from mdpr.fileio import (
    atomic_copy,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_output_file,
    check_output_folder,
    read_torch_file,
)


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.json"
        atomic_write_json(fresh, {"a": 1})
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        kept = tmp_path / "kept.txt"
        kept.write_text("x")
        kept.chmod(0o640)
        atomic_copy(fresh, kept)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == fresh.read_text()
    finally:
        os.umask(old)


def test_json_refuses_non_finite_numbers(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"mAP": float("nan")})
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("case", ["parent_is_file", "target_is_dir", "dangling_link"])
def test_output_paths_are_checked_before_work(tmp_path: Path, case: str) -> None:
    if case == "parent_is_file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "out.h5"
        expect = "is a file, not a folder"
    elif case == "target_is_dir":
        target = tmp_path / "d"
        target.mkdir()
        expect = "it is a folder"
    else:
        (tmp_path / "link").symlink_to(tmp_path / "link")  # a loop
        target = tmp_path / "link" / "out.h5"
        expect = "Cannot write"
    with pytest.raises(MdprError, match=expect):
        check_output_file(target, "the store")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(MdprError, match="not writable"):
            check_output_folder(ro / "new")
    finally:
        ro.chmod(0o755)


def test_torch_reader_refuses_non_checkpoints_in_one_sentence_without_unsafe_advice(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    h5 = tmp_path / "store.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    for path, expect in ((evil, "not a readable PyTorch checkpoint"), (h5, "HDF5 file"),
                         (tmp_path / "missing.pt", "does not exist")):
        with pytest.raises(MdprError, match=expect) as info:
            read_torch_file(path)
        assert "weights_only=False" not in str(info.value)


# ---------------------------------------------------------------- no hand-rolled renames, batches
PACKAGE = Path(mdpr.__file__).parent

# Files that still publish by hand, with the reason; every other module goes through mdpr.fileio.
HAND_ROLLED = {"fileio.py": "the one home"}
FORBIDDEN = {("os", "replace"), ("os", "rename"), ("shutil", "move"), ("tempfile", "mkstemp")}


def _forbidden_calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = node.func.attr
            if isinstance(owner, ast.Name) and (owner.id, name) in FORBIDDEN:
                yield f"{owner.id}.{name}", node.lineno
            elif (name in ("rename", "replace") and len(node.args) == 1 and not node.keywords
                  and not (isinstance(owner, ast.Name) and owner.id == "dataclasses")):
                yield f"Path.{name}", node.lineno  # str.replace takes two arguments, Path.replace one


def test_no_module_renames_files_into_place_by_hand():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in HAND_ROLLED:
            continue
        found += [f"{rel}:{line} {call}" for call, line in _forbidden_calls(path)]
    assert not found, f"write through mdpr.fileio (atomic_path, atomic_write_*, replace_durably): {found}"


def test_atomic_path_replaces_and_flushes_the_folder(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(fileio, "fsync_dir", lambda p: flushed.append(Path(p)))
    target = tmp_path / "sub" / "out.bin"
    target.parent.mkdir()
    target.write_bytes(b"old")
    with fileio.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible before the block ends
    assert target.read_bytes() == b"new"
    assert flushed == [target.parent]
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_replace_durably_moves_a_finished_folder_and_flushes_both_folders(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(fileio, "fsync_dir", lambda p: flushed.append(Path(p)))
    src = tmp_path / ".data.partial"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.txt").write_text("x")
    fileio.replace_durably(src, tmp_path / "data")
    assert (tmp_path / "data" / "a" / "x.txt").read_text() == "x" and not src.exists()
    assert flushed == [src, tmp_path]  # its entries before the rename, the rename itself after


def test_replace_durably_swaps_out_a_non_empty_folder_and_leaves_nothing_aside(tmp_path):
    dst = tmp_path / "model_openvino_model"
    dst.mkdir()
    (dst / "old.xml").write_text("old")
    src = tmp_path / ".model.partial"
    src.mkdir()
    (src / "model.xml").write_text("new")
    fileio.replace_durably(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["model.xml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_openvino_model"]


def test_a_batch_publishes_at_each_commit_and_removes_only_unpublished_files_on_error(tmp_path):
    with pytest.raises(RuntimeError), fileio.atomic_batch(limit=2) as batch:
        for i in range(3):
            batch.path(tmp_path / f"{i}.txt").write_text(str(i))
            batch.commit_if_full()
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["0.txt", "1.txt"]
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.txt", "1.txt"]


def test_fsync_files_reports_a_missing_file(tmp_path):
    (tmp_path / "a").write_text("a")
    with pytest.raises(FileNotFoundError):
        fileio.fsync_files([tmp_path / "a", tmp_path / "missing"])
