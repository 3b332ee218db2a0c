"""mdpr.fileio: the one durability rule, and no other module renaming files into place by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mdpr
from mdpr import fileio

PACKAGE = Path(mdpr.__file__).parent

# Files that still publish by hand, with the reason; every other module goes through mdpr.fileio.
HAND_ROLLED = {
    "fileio.py": "the one home",
    "export/openvino.py": "swaps a whole existing IR folder (old one moved aside first); owned by the export package",
}
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


def test_atomic_path_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    fileio.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), fileio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_replace_durably_moves_a_finished_folder_and_flushes_both_folders(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(fileio, "fsync_dir", lambda p: flushed.append(Path(p)))
    src = tmp_path / ".data.partial"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.txt").write_text("x")
    fileio.replace_durably(src, tmp_path / "data")
    assert (tmp_path / "data" / "a" / "x.txt").read_text() == "x" and not src.exists()
    assert flushed == [src, tmp_path]  # its entries before the rename, the rename itself after


def test_atomic_write_json_refuses_non_finite_numbers(tmp_path):
    with pytest.raises(ValueError):
        fileio.atomic_write_json(tmp_path / "m.json", {"mAP": float("nan")})
    assert not list(tmp_path.iterdir())


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
