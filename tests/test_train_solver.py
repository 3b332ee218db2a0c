"""fast-reid's learning-rate schedule and optimizer groups."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from mdpr.config import SolverConfig, load_config
from mdpr.engine.solver import LRSchedule, build_optimizer
from mdpr.errors import MdprError


def _fastreid_trace(cfg: SolverConfig, ipe: int):
    """The learning rate of every iteration as fast-reid's hooks produce it, with torch's own schedulers:
    a CosineAnnealingLR / MultiStepLR stepped at epoch ends after the warmup, and a linear warmup
    stepped after each of the first WARMUP_ITERS iterations."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=cfg.base_lr)
    t_max = cfg.max_epochs - math.ceil(cfg.warmup_iters / ipe)
    if cfg.scheduler == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=cfg.eta_min_lr)
    else:
        main = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.steps), gamma=cfg.gamma)
    w, f = cfg.warmup_iters, cfg.warmup_factor
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 if i >= w else f * (1 - i / w) + i / w)
    trace = []
    it = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(cfg.max_epochs):
            for _ in range(ipe):
                trace.append(opt.param_groups[0]["lr"])
                opt.step()
                if it + 1 <= w:
                    warm.step()
                it += 1
            if it > w:  # fast-reid: next_iter = (index of the epoch's last iteration) + 1 = it
                main.step()
    return trace


@pytest.mark.parametrize(
    "warmup, ipe, epochs, sched",
    [(20, 7, 12, "cosine"), (21, 7, 12, "cosine"), (5, 10, 6, "cosine"), (0, 4, 5, "cosine"), (12, 5, 10, "multistep")],
)
def test_schedule_matches_fastreid(warmup, ipe, epochs, sched) -> None:
    cfg = SolverConfig(base_lr=3.5e-4, warmup_iters=warmup, max_epochs=epochs, scheduler=sched, steps=(4, 7))
    reference = _fastreid_trace(cfg, ipe)
    schedule = LRSchedule(cfg, ipe)
    ours = [schedule.lr(cfg.base_lr, i, i // ipe) for i in range(epochs * ipe)]
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-15)


def test_paper_recipe_schedule_landmarks() -> None:
    cfg = load_config("market1501").solver
    ipe = 12936 // 64  # Market-1501: 202 iterations per epoch
    s = LRSchedule(cfg, ipe)
    assert s.t_max == 50
    assert s.lr(cfg.base_lr, 0, 0) == pytest.approx(3.5e-5)
    assert s.lr(cfg.base_lr, 1000, 4) == pytest.approx(3.5e-4 * (0.1 * 0.5 + 0.5))
    assert s.lr(cfg.base_lr, 2000, 9) == pytest.approx(3.5e-4)
    assert s.lr(cfg.base_lr, 59 * ipe - 1, 58) == pytest.approx(1e-7 + (3.5e-4 - 1e-7) * (1 + math.cos(math.pi * 49 / 50)) / 2)
    assert s.lr(cfg.base_lr, 60 * ipe - 1, 59) == pytest.approx(1e-7)  # the last epoch runs at eta_min


def test_optimizer_groups_and_errors() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    cfg = SolverConfig(base_lr=1e-3, weight_decay=5e-4, weight_decay_norm=0.0, bias_lr_factor=2.0)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.Adam)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model[1].weight)]["weight_decay"] == 0.0
    assert by_param[id(model[0].weight)]["weight_decay"] == 5e-4
    assert by_param[id(model[0].bias)]["initial_lr"] == 2e-3
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(MdprError, match="optimizer"):
        build_optimizer(model, SolverConfig(optimizer="Lion"))
    with pytest.raises(MdprError, match="scheduler"):
        LRSchedule(SolverConfig(scheduler="poly"), 10)
