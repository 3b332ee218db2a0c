"""The scripts in examples/ run as documented (on tiny data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from storekit import REAL_IMAGES, TINY, tiny_checkpoint
from typer.testing import CliRunner

from mdpr.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


def _run(script: str, *args: str, cwd: Path) -> str:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_embed_tracker_crops(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    store = tmp_path / "gallery.h5"
    result = runner.invoke(app, ["extract", "--images", str(REAL_IMAGES), "--weights", str(ckpt), "--output", str(store)])
    assert result.exit_code == 0, result.output
    frame = sorted(REAL_IMAGES.glob("*.jpg"))[0]
    out = _run("embed_tracker_crops.py", "--weights", str(ckpt), "--gallery", str(store), "--frame", str(frame),
               cwd=tmp_path)
    assert "embedded 2 crops" in out
    # the whole-frame crop is the gallery image itself: rank 1, distance ~0
    first = out.splitlines()[2]
    assert frame.name in first and "distance 0.0000" in first


def test_custom_dataset_from_folder(tmp_path: Path) -> None:
    out = _run("custom_dataset_from_folder.py", "crops", "--make-sample", "--name", "sample", "--train", "--epochs", "1",
               cwd=tmp_path)
    assert "registered 'sample'" in out and "final metrics" in out
    assert (tmp_path / "runs" / "sample" / "last.pt").is_file()
    assert (tmp_path / "crops" / "train").is_dir()


def test_evaluate_official_checkpoint(tmp_path: Path) -> None:
    from mdpr.config import load_config
    from mdpr.model import build_model
    from mdpr.model.formats import to_official_state_dict

    result = runner.invoke(app, ["prepare", "demo", str(tmp_path / "data"), "--ids", "8", "--images-per-id", "4",
                                 "--size", "64x32", "--name", "tiny"])
    assert result.exit_code == 0, result.output
    cfg = load_config(None, TINY + ["model.num_classes=4"])
    model = build_model(cfg).eval()
    official = tmp_path / "official.pth"
    torch.save({"model": to_official_state_dict(model.state_dict())}, official)
    out = _run("evaluate_official_checkpoint.py", str(official), "--dataset", "tiny", "--device", "cpu", cwd=tmp_path)
    assert "ResNet-18" in out and "Rank-1" in out and "mAP" in out
