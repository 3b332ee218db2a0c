"""`mdpr demo` end to end on tiny settings: every artefact it promises exists and the summary is printed."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from mdpr.cli import app

runner = CliRunner()

TINY = ["--ids", "8", "--images-per-id", "4", "--epochs", "1", "--set", "input.size_train=[64,32]",
        "--set", "input.size_test=[64,32]", "--set", "dataloader.batch_size=8", "--set", "model.embedding_dim=16",
        "--device", "cpu"]


def test_demo_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    for step in ("Step 1", "Step 2", "Step 3", "Step 4", "Step 5", "Demo finished", "Each step by hand"):
        assert step in result.stdout
    assert (out / "run" / "last.pt").is_file()
    assert (out / "run" / "config.yaml").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["rank1"] <= 1.0 and metrics["num_valid_queries"] > 0
    assert f"Rank-1 {metrics['rank1']:.3f}" in result.stdout
    with Image.open(out / "ranked.png") as png:
        assert png.width > png.height > 0
    import h5py

    with h5py.File(out / "gallery.h5", "r") as f:
        assert f["features"].shape[0] == len(f["paths"]) > 0

    # a second run reuses the data and the finished training run; --threads/--workers reach every model step
    again = runner.invoke(app, ["demo", "--out", str(out), *TINY, "--threads", "1", "--workers", "0"])
    assert again.exit_code == 0, again.output
    assert "reused the demo" in again.stdout and "--resume" in again.stdout
    steps = [line for line in again.stdout.splitlines() if line.startswith("$ mdpr ")]
    assert [line.split()[2] for line in steps] == ["prepare", "train", "evaluate", "extract", "query"]
    assert all(line.endswith("--threads 1 --workers 0") for line in steps[1:]), steps


def test_demo_refuses_a_file_as_output(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = runner.invoke(app, ["demo", "--out", str(target)])
    assert result.exit_code == 2
    assert "is a file" in result.stderr
