"""The one durability rule for whole-file writes, the output-path checks and the safe torch reader."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

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
