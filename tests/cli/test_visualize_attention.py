"""`mdpr visualize-attention`: attention heat maps of the Soft Content Branch over the input images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from storekit import REAL_IMAGES, tiny_checkpoint
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.viz import draw_attention_overlays, heat_colors

runner = CliRunner()


def test_overlays_one_panel_per_map() -> None:
    image = Image.new("RGB", (32, 64), (128, 128, 128))
    maps = {"layer4": np.random.rand(2, 8, 4), "layer3": np.random.rand(2, 8, 4)}
    picture = draw_attention_overlays(image, maps, panel_height=128)
    # input + 2 maps x 2 layers = 5 panels of width 64, gaps of 4 px
    assert picture.size == (5 * (64 + 4) + 4, 128 + 14 + 8)


def test_heat_colors_are_ordered() -> None:
    colors = heat_colors(np.array([0.0, 1.0]))
    assert colors[0].tolist() == [0, 0, 160] and colors[1].tolist() == [220, 0, 0]


def test_cli_writes_one_png_per_image(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    images = sorted(REAL_IMAGES.glob("*.jpg"))[:2]
    out = tmp_path / "attention"
    result = runner.invoke(
        app, ["visualize-attention", *map(str, images), "--weights", str(ckpt), "--out", str(out), "--height", "96",
              "--json"]
    )
    assert result.exit_code == 0, result.output
    files = [Path(p) for p in json.loads(result.stdout)["files"]]
    assert [p.name for p in files] == [f"{p.stem}_attention.png" for p in images]
    with Image.open(files[0]) as png:
        # tiny checkpoint: 64x32 input -> 48-px-wide panels at height 96; 1 input + 2 maps x 2 layers
        assert png.size == (5 * (48 + 4) + 4, 96 + 14 + 8)


def test_maps_are_the_models_softmax(tmp_path: Path) -> None:
    from mdpr.model import load_model

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    model, _ = load_model(ckpt)
    maps = model.attention_maps(torch.rand(1, 3, 64, 32) * 255)
    for layer in ("layer4", "layer3"):
        m = maps[layer]
        assert m.shape[1] == 2 and float(m.min()) >= 0
        # softmax over attention + background channels, background dropped: the kept maps sum to at most one
        assert float(m.sum(1).max()) <= 1.0 + 1e-6


def test_cli_bad_inputs(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    result = runner.invoke(app, ["visualize-attention", str(bad), "--weights", str(ckpt), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "could not be read" in result.stderr
    result = runner.invoke(app, ["visualize-attention", str(bad), "--weights", str(tmp_path / "nope.pt")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    hard_only = tmp_path / "hard.pt"
    from mdpr.config import load_config
    from mdpr.model import build_model, save_checkpoint

    cfg = load_config(None, ["model.depth=18", "model.ibn=false", "model.embedding_dim=16", "model.branches=hard",
                             "input.size_test=[64,32]"])
    save_checkpoint(hard_only, build_model(cfg).eval(), cfg)
    img = sorted(REAL_IMAGES.glob("*.jpg"))[0]
    result = runner.invoke(app, ["visualize-attention", str(img), "--weights", str(hard_only), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no Soft Content Branch" in result.stderr
