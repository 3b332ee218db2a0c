"""Run summaries and the Pillow plot from metrics.jsonl; process planning errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from mdpr.engine.distributed import DistContext, plan_processes
from mdpr.engine.report import loss_groups, plot_training, read_metrics, summarize
from mdpr.errors import MdprError
from mdpr.runtime import resolve_device


def _records():
    recs = []
    for i in range(1, 41):
        recs.append({"type": "train", "epoch": (i - 1) // 10 + 1, "step": (i - 1) % 10 + 1, "iteration": i,
                     "lr": 1e-3 * min(1.0, i / 10), "loss": 5 * math.exp(-i / 10) + 0.5,
                     "loss_hard_global_cls": 4 * math.exp(-i / 10), "loss_hard_global_triplet": 0.5,
                     "loss_diversity_loss_4": 0.3, "loss_mutual_distillation": -0.3})
        if i % 10 == 0:
            recs.append({"type": "epoch", "epoch": i // 10, "iteration": i, "loss": 1.0, "loss_hard_global_cls": 0.5,
                         "images": 320, "seconds": 4.0, "replaced_images": 1})
        if i % 20 == 0:
            recs.append({"type": "eval", "epoch": i // 10, "iteration": i, "mAP": i / 50, "rank1": i / 45,
                         "rank5": 0.9, "rank10": 0.95, "mINP": 0.3})
    return recs


def test_summary_numbers() -> None:
    s = summarize(_records())
    assert s["epochs"] == 4 and s["iterations"] == 40
    assert s["images"] == 1280 and s["seconds"] == 16.0 and s["images_per_s"] == 80.0
    assert s["replaced_images"] == 4
    assert [e["epoch"] for e in s["evaluations"]] == [2, 4]
    assert s["final_metrics"]["mAP"] == pytest.approx(0.8)
    assert s["final_losses"] == {"loss": 1.0, "loss_hard_global_cls": 0.5}
    assert summarize([])["epochs"] == 0


def test_loss_groups() -> None:
    g = loss_groups(_records()[0])
    assert set(g) == {"classification", "triplet", "attention", "distillation"}
    assert g["distillation"] == -0.3


def test_plot_is_a_png_and_reading_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()) + '{"type": "train", "ite')
    records = read_metrics(path)
    assert len(records) == len(_records())
    out = plot_training(records, tmp_path / "training.png", title="test")
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (1000, 960)
    assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # something was drawn
    plot_training([], tmp_path / "empty.png")  # no data yet is not an error


def test_process_planning_errors() -> None:
    assert plan_processes(None, None) == (1, None, None)
    assert plan_processes(None, 2) == (2, "gloo", "cpu")
    assert plan_processes(None, 1) == (1, None, "cpu")
    with pytest.raises(MdprError, match="not both"):
        plan_processes(1, 2)
    with pytest.raises(MdprError, match="at least 1"):
        plan_processes(None, 0)
    with pytest.raises(MdprError, match="gpus N for CUDA"):
        plan_processes(None, 2, device="cuda")
    if torch.cuda.device_count() < 3:
        with pytest.raises(MdprError, match="^gpus 3 needs 3 CUDA GPU"):  # library terms; the CLI says --gpus
            plan_processes(3, None)
    with pytest.raises(MdprError, match="Unknown device"):
        resolve_device("tpu:7x")
    assert resolve_device("cpu") == torch.device("cpu")


def test_single_process_context_is_a_no_op() -> None:
    ctx = DistContext()
    assert ctx.is_main and not ctx.distributed
    ctx.barrier()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(ctx.all_reduce_mean(t), t)
    assert ctx.all_gather_object({"a": 1}) == [{"a": 1}]
    assert ctx.broadcast_object(5) == 5
