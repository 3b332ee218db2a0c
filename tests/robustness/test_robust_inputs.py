"""Classes 2, 3, 6, 7: config values, numeric options, CSV manifests and training-run integrity through the real CLI:
one sentence before any work, nothing written earlier lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from robustkit import cli, one_sentence
from trainkit import TINY, make_dataset

from mdpr.config import load_config
from mdpr.fileio import ExclusiveLock
from mdpr.workflows.train import RUN_LOCK


def _sets(items):
    return [a for item in items for a in ("--set", item)]


@pytest.fixture
def tiny(tmp_path: Path):
    return make_dataset(tmp_path / "tiny-data")


# ------------------------------------------------------------------------------------------- class 2: config


@pytest.mark.parametrize("bad, key", [
    ("input.size_train=[96]", "input.size_train"), ("input.size_train=[0,0]", "input.size_train"),
    ("input.size_test=[-64,32]", "input.size_test"), ("solver.base_lr=-1", "solver.base_lr"),
    ("dataloader.steps_per_epoch=-1", "dataloader.steps_per_epoch"),
    ("dataloader.test_batch_size=0", "dataloader.test_batch_size"), ("solver.nosuch=1", "solver.nosuch"),
])
def test_bad_config_value_is_one_sentence_naming_the_key(tiny, tmp_path, bad, key) -> None:
    run = tmp_path / "run"
    one_sentence(cli("train", "--dataset", "tiny", "--recipe", "demo-cpu", "--init", "none", "--output", run,
                     *_sets([*TINY, bad])), key)
    assert not (run / "last.pt").exists()


# ------------------------------------------------------------------------------------------- class 3: options


@pytest.mark.parametrize("args, flag", [
    (["extract", "--images", ".", "--threads", "100000"], "--threads"),
    (["extract", "--images", ".", "--batch-size", "99999999999999999999"], "--batch-size"),
    (["extract", "--images", ".", "--workers", "100000"], "--workers"),
    (["train", "--dataset", "tiny", "--procs", "64"], "--procs"),
    (["export", "--weights", "x.pt", "--output", "m.onnx", "--opset", "3"], "--opset"),
    (["query", "x.jpg", "--top-k", "0"], "--top-k"),
    (["evaluate", "--dataset", "x", "--k1", "0"], "--k1"),
    (["evaluate", "--dataset", "x", "--lambda", "2"], "--lambda"),
    (["train", "--dataset", "tiny", "--epochs", "0"], "--epochs"),
    (["index", "build", "-g", "s.h5", "--shards", "100000"], "--shards"),
])
def test_out_of_range_option_is_one_sentence(tiny, args, flag) -> None:
    one_sentence(cli(*args), flag)


# ------------------------------------------------------------------------------------------- class 6: CSV


def _csv(tmp_path: Path, first: str, bom: bool = False) -> Path:
    """dataset.csv over make_dataset's images, with the line ``first`` as line 2."""
    root = tmp_path / "d"
    make_dataset(root, register=False)
    rows = [f"{p.relative_to(root).as_posix()},{int(p.name[:4])},{p.parent.name},{int(p.name[6]) - 1}\n"
            for p in sorted(root.rglob("*.png"))]
    path = root / "dataset.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ("path,pid,split,camid\n" + first + "".join(rows)).encode())
    return path


def test_csv_with_bom_is_read(tmp_path) -> None:
    path = _csv(tmp_path, "", bom=True)
    result = cli("prepare", "folder", path, "--name", "bom")
    assert result.exit_code == 0, result.output
    from mdpr.data import load_dataset

    assert len(load_dataset("bom").train) == 24


@pytest.mark.parametrize("row, expected", [
    ("train/0001_c1s1_000000_00.png,1\n", "Line 2 of"),
    ("train/0001_c1s1_000000_00.png,1,train,0,extra\n", "Line 2 of"),
    ("../outside.png,1,train,0\n", "outside the dataset folder"),
    ("/etc/passwd,1,train,0\n", "outside the dataset folder"),
    ("train/0001_c1s1_000000_00.png,one,train,0\n", "Line 2 of"),
    ("train/missing.png,1,train,0\n", "does not exist"),
])
def test_bad_csv_row_is_one_sentence_with_the_line(tmp_path, row, expected) -> None:
    path = _csv(tmp_path, row)
    one_sentence(cli("prepare", "folder", path, "--verify"), expected)


def test_csv_without_the_columns(tmp_path) -> None:
    path = _csv(tmp_path, "")
    path.write_text("file,person\n" + path.read_text().split("\n", 1)[1])
    one_sentence(cli("prepare", "folder", path), "path,pid,split")


# ------------------------------------------------------------------------------------------- class 7: runs


def _fake_run(tmp_path: Path, epochs_done: int = 3, epochs: int = 3) -> Path:
    """A run directory as training leaves it (config.yaml, last.pt) without training: planning reads only these."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    cfg = load_config("demo-cpu", [*TINY, f"solver.max_epochs={epochs}", "model.num_classes=6"])
    cfg.dataset = "tiny"
    cfg.save_yaml(run / "config.yaml")
    torch.save({"epoch": epochs_done, "iteration": epochs_done, "num_classes": 6, "model": {},
                "config": cfg.to_dict()}, run / "last.pt")
    return run


@pytest.mark.parametrize("change, key", [
    ("model.embedding_dim=48", "model.embedding_dim"), ("input.size_train=[96,48]", "input.size_train"),
    ("dataloader.batch_size=16", "dataloader.batch_size"), ("solver.optimizer=SGD", "solver.optimizer"),
    ("loss.triplet_margin=0.3", "loss.triplet_margin"),
])
def test_resume_refuses_fixed_settings(tiny, tmp_path, change, key) -> None:
    run = _fake_run(tmp_path)
    before = (run / "config.yaml").read_bytes()
    one_sentence(cli("train", "--resume", run, "--set", change), f"{key} cannot change when resuming")
    assert (run / "config.yaml").read_bytes() == before


def test_resume_refuses_another_dataset(tiny, tmp_path) -> None:
    make_dataset(tmp_path / "other-data", name="other")
    one_sentence(cli("train", "--resume", _fake_run(tmp_path), "--dataset", "other"), "dataset cannot change")


def test_resume_with_fewer_epochs_than_done(tiny, tmp_path) -> None:
    line = one_sentence(cli("train", "--resume", _fake_run(tmp_path), "--epochs", "1"), "already trained 3 epochs")
    assert "4..1" not in line


def test_corrupt_run_config_on_resume(tiny, tmp_path) -> None:
    run = _fake_run(tmp_path)
    (run / "config.yaml").write_text("model: [unclosed\n")
    one_sentence(cli("train", "--resume", run), "config.yaml")


def test_second_training_into_a_locked_run_directory(tiny, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with ExclusiveLock(run / RUN_LOCK) as lock:  # what a running `mdpr train --output run` holds
        assert lock.acquire()
        one_sentence(cli("train", "--dataset", "tiny", "--recipe", "demo-cpu", "--init", "none", "--output", run,
                         *_sets(TINY)), "Another training is writing into")
        resumed = _fake_run(tmp_path / "b")
        with ExclusiveLock(resumed / RUN_LOCK) as other:
            assert other.acquire()
            one_sentence(cli("train", "--resume", resumed), "Another training")
    assert not (run / "last.pt").exists()


def test_lock_is_not_held_by_forked_children(tmp_path) -> None:
    import os

    lock = ExclusiveLock(tmp_path / "x.lock")
    assert lock.acquire()
    pid = os.fork()
    if pid == 0:  # a DataLoader worker: its copy of the descriptor is closed right after the fork
        os._exit(0 if lock.fd == -1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not ExclusiveLock(tmp_path / "x.lock").acquire()  # the parent still holds it
    lock.release()
    assert ExclusiveLock(tmp_path / "x.lock").acquire()


def _train_records(run: Path) -> list:
    import json

    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "train"]


def test_resume_with_a_new_learning_rate_trains_at_it(tiny, tmp_path) -> None:
    run = tmp_path / "lr-run"
    fixed = [*TINY, "input.size_train=[32,16]", "input.size_test=[32,16]", "dataloader.steps_per_epoch=2",
             "solver.warmup_iters=0", "train.log_period=1"]
    first = cli("train", "--dataset", "tiny", "--recipe", "demo-cpu", "--init", "none", "--output", run,
                "--epochs", "1", "--eval-period", "-1",
                *_sets([*fixed, "solver.base_lr=1e-3", "solver.eta_min_lr=1e-3"]))
    assert first.exit_code == 0, first.output
    again = cli("train", "--resume", run, "--epochs", "2", *_sets(["solver.base_lr=1e-4", "solver.eta_min_lr=1e-4"]))
    assert again.exit_code == 0, again.output
    records = _train_records(run)
    assert {round(r["lr"], 9) for r in records if r["epoch"] in (0, 1) and r["iteration"] <= 2} == {1e-3}
    assert {round(r["lr"], 9) for r in records if r["iteration"] > 2} == {1e-4}
    assert "base_lr: 0.0001" in (run / "config.yaml").read_text()


def test_full_disk_during_training_keeps_the_last_checkpoint_and_resume_continues(tiny, tmp_path, monkeypatch) -> None:
    import errno
    import os

    from mdpr.engine.trainer import Trainer
    from mdpr.fileio import read_torch_file

    run = tmp_path / "disk-run"
    fixed = [*TINY, "input.size_train=[32,16]", "input.size_test=[32,16]", "dataloader.steps_per_epoch=1"]
    real = Trainer.save_state
    calls = {"n": 0}

    def save_state(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # before the first step, after epoch 1, then the disk is full after epoch 2
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "last.pt"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "save_state", save_state)
    line = one_sentence(cli("train", "--dataset", "tiny", "--recipe", "demo-cpu", "--init", "none", "--output", run,
                            "--epochs", "3", "--eval-period", "-1", *_sets(fixed)), "the disk is full")
    assert "last.pt" in line and f"--resume {run}" in line  # not "the same command", which starts a new run
    assert read_torch_file(run / "last.pt")["epoch"] == 1
    monkeypatch.setattr(Trainer, "save_state", real)
    again = cli("train", "--resume", run)
    assert again.exit_code == 0, again.output
    assert read_torch_file(run / "last.pt")["epoch"] == 3 and (run / "model.pt").is_file()


def test_non_finite_loss_in_the_first_step_names_a_checkpoint_that_exists(tiny, tmp_path, monkeypatch) -> None:
    import re

    from mdpr.engine.trainer import Trainer

    real = Trainer._step

    def poisoned(self, batch, epoch):
        batch["images"] = batch["images"] * float("nan")
        return real(self, batch, epoch)

    monkeypatch.setattr(Trainer, "_step", poisoned)
    run = tmp_path / "nan-run"
    line = one_sentence(cli("train", "--dataset", "tiny", "--recipe", "demo-cpu", "--init", "none", "--output", run,
                            "--epochs", "1", "--eval-period", "-1",
                            *_sets([*TINY, "input.size_train=[32,16]", "input.size_test=[32,16]"])),
                        "at epoch 1, iteration 1")
    named = re.findall(r"(/\S+\.pt)", line)
    assert named and all(Path(p).is_file() for p in named), line
    assert "--resume" in line and "solver.base_lr=" in line
