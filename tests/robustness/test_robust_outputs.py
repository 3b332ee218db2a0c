"""Class 1: OS errors on output paths (checked before work; an OS error while working is one sentence naming the
path; a full disk keeps what was written and a re-run continues)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
from robustkit import cli, one_sentence

import mdpr.fileio


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain-file"
    path.write_text("not a folder")
    return path


def test_extract_output_under_a_file(tiny_weights, crops, a_file) -> None:
    one_sentence(cli("extract", "--images", crops, "--weights", tiny_weights, "--output", a_file / "s.h5"),
                 "is a file, not a folder")


def test_export_output_under_a_file(tiny_weights, a_file) -> None:
    one_sentence(cli("export", "--weights", tiny_weights, "--output", a_file / "m.onnx"), str(a_file))


def test_store_export_and_compact_under_a_file(a_file) -> None:
    one_sentence(cli("store", "compact", a_file / "c.h5"), "is a file, not a folder")
    one_sentence(cli("demo", "--output", a_file / "demo"), "is a file, not a folder")


def test_mdpr_home_is_a_file(monkeypatch, a_file, tmp_path) -> None:
    monkeypatch.setenv("MDPR_HOME", str(a_file))
    one_sentence(cli("prepare", "demo", tmp_path / "demo"), "MDPR_HOME")
    one_sentence(cli("train", "--dataset", "demo"), "MDPR_HOME")


def test_evaluate_save_metrics_is_a_folder(tiny_weights, tmp_path) -> None:
    one_sentence(cli("evaluate", "--dataset", "nosuch", "--weights", tiny_weights, "--save-metrics", tmp_path))


def test_read_only_output_folder(monkeypatch, tiny_weights, crops, tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # what a read-only mount answers (root ignores chmod, so simulate it)
        if Path(kwargs.get("dir", "")).resolve() == ro.resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(ro))
        return real(*args, **kwargs)

    monkeypatch.setattr(mdpr.fileio.tempfile, "mkstemp", mkstemp)
    one_sentence(cli("extract", "--images", crops, "--weights", tiny_weights, "--output", ro / "s.h5"), "read-only")
    assert list(ro.iterdir()) == []


def test_os_error_while_working_is_one_sentence(monkeypatch, tiny_weights, crops, tmp_path) -> None:
    from mdpr.store import journal

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal, "_pwrite_all", full)
    line = one_sentence(cli("extract", "--images", crops, "--weights", tiny_weights, "--output", tmp_path / "s.h5"),
                        "the disk is full")
    assert "s.h5.journal" in line


def test_full_disk_during_fold_keeps_the_journal_and_a_rerun_continues(monkeypatch, tiny_weights, crops, tmp_path):
    from mdpr.store import hdf5

    out = tmp_path / "s.h5"
    real = hdf5.write_file
    calls = {"n": 0}

    def write_file(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:  # HDF5 reports a full disk as a RuntimeError
            raise RuntimeError("Can't decrement id ref count (file write failed: errno = 28, error message = "
                               "'No space left on device')")
        return real(*args, **kwargs)

    monkeypatch.setattr(hdf5, "write_file", write_file)
    line = one_sentence(cli("extract", "--images", crops, "--weights", tiny_weights, "--output", out,
                            "--batch-size", "2", "--checkpoint-every", "0"), "the disk is full")
    assert str(out) in line
    monkeypatch.setattr(hdf5, "write_file", real)
    again = cli("extract", "--images", crops, "--weights", tiny_weights, "--output", out)
    assert again.exit_code == 0, again.output
    from mdpr.store import FeatureStore

    with FeatureStore.open(out) as store:
        assert len(store) == 8 and store.complete


def test_refused_before_the_disk_runs_out(monkeypatch, tiny_weights, crops, tmp_path) -> None:
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(mdpr.fileio.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    one_sentence(cli("extract", "--images", crops, "--weights", tiny_weights, "--output", tmp_path / "s.h5",
                     "--checkpoint-every", "0"), "free some space")
