"""fast-reid's learning-rate schedule (against a transcription of the official hooks) and optimizer groups."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from mdpr.config import SolverConfig, load_config
from mdpr.engine.solver import LRSchedule, build_optimizer
from mdpr.errors import MdprError


def _official_trace(cfg: SolverConfig, ipe: int) -> list:
    """The learning rate of every iteration of an official run, transcribed step by step from fast-reid:

    * ``fastreid/solver/build.py``: ``T_max = MAX_EPOCH - max(ceil(WARMUP_ITERS / iters_per_epoch),
      DELAY_EPOCHS)``; the main scheduler is built first, then ``WarmupLR`` (only when WARMUP_ITERS > 0),
      whose constructor sets the rate to ``base * factor(0)``;
    * ``fastreid/engine/train_loop.py``: ``for epoch: for _ in range(ipe): step; after_step; iter += 1``
      then ``after_epoch``;
    * ``fastreid/engine/hooks.py`` ``LRScheduler``: after a step, ``next_iter = iter + 1`` and the warmup
      steps while ``next_iter <= WARMUP_ITERS``; after an epoch, ``next_iter = iter + 1`` (iter already
      counts the epoch's iterations) and the main scheduler steps when ``next_iter > WARMUP_ITERS and
      epoch + 1 > DELAY_EPOCHS``;
    * ``WarmupLR.get_lr`` = ``base * factor(last_epoch)`` (not chained); torch's ``CosineAnnealingLR``
      in its recursive (chainable) form and ``MultiStepLR``, which multiply the group's current rate.
    """
    base, w, f, eta = cfg.base_lr, cfg.warmup_iters, cfg.warmup_factor, cfg.eta_min_lr
    t_max = cfg.max_epochs - max(math.ceil(w / ipe), cfg.delay_epochs)

    def factor(i: int) -> float:
        return 1.0 if i >= w else f * (1 - i / w) + i / w

    lr = base * factor(0) if w > 0 else base
    warm_last, main_last, it, trace = 0, 0, 0, []
    for epoch in range(cfg.max_epochs):
        for _ in range(ipe):
            trace.append(lr)
            if w > 0 and it + 1 <= w:  # after_step
                warm_last += 1
                lr = base * factor(warm_last)
            it += 1
        if it + 1 > w and epoch + 1 > cfg.delay_epochs:  # after_epoch
            main_last += 1
            e = main_last
            if cfg.scheduler == "cosine":
                if (e - 1 - t_max) % (2 * t_max) == 0:
                    lr = lr + (base - eta) * (1 - math.cos(math.pi / t_max)) / 2
                else:
                    lr = (1 + math.cos(math.pi * e / t_max)) / (1 + math.cos(math.pi * (e - 1) / t_max)) * (lr - eta) + eta
            elif e in cfg.steps:
                lr = lr * cfg.gamma ** list(cfg.steps).count(e)
    return trace


def _torch_trace(cfg: SolverConfig, ipe: int) -> list:
    """The same hooks with torch's own schedulers (checks the transcription of torch's cosine above)."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=cfg.base_lr)
    t_max = cfg.max_epochs - max(math.ceil(cfg.warmup_iters / ipe), cfg.delay_epochs)
    if cfg.scheduler == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=cfg.eta_min_lr)
    else:
        main = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.steps), gamma=cfg.gamma)
    w, f = cfg.warmup_iters, cfg.warmup_factor
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 if i >= w else f * (1 - i / w) + i / w)
    trace, it = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(cfg.max_epochs):
            for _ in range(ipe):
                trace.append(opt.param_groups[0]["lr"])
                opt.step()
                if it + 1 <= w:
                    warm.step()
                it += 1
            if it + 1 > w and epoch + 1 > cfg.delay_epochs:
                main.step()
    return trace


def _ours(cfg: SolverConfig, ipe: int) -> list:
    schedule = LRSchedule(cfg, ipe)
    return [schedule.lr(cfg.base_lr, i, i // ipe) for i in range(cfg.max_epochs * ipe)]


@pytest.mark.parametrize("warmup", [2000, 200])
@pytest.mark.parametrize("ipe", [50, 64, 100, 258])
def test_schedule_equals_the_official_one_over_the_whole_run(warmup: int, ipe: int) -> None:
    """The paper's schedule (60 epochs, cosine to 1e-7) for warmup 2000 and 200, including the
    multiples of the iterations per epoch (2000 / 50, 2000 / 100, 200 / 50, 200 / 100)."""
    cfg = load_config("market1501", [f"solver.warmup_iters={warmup}"]).solver
    official, ours = _official_trace(cfg, ipe), _ours(cfg, ipe)
    assert len(official) == len(ours) == 60 * ipe
    assert ours == pytest.approx(official, rel=1e-9, abs=1e-15)
    assert ours[-1] == pytest.approx(cfg.eta_min_lr)  # the last epoch runs at eta_min
    assert ours[0] == pytest.approx(0.1 * cfg.base_lr)


@pytest.mark.parametrize(
    "warmup, ipe, epochs, sched, delay",
    [(20, 7, 12, "cosine", 0), (21, 7, 12, "cosine", 0), (14, 7, 12, "cosine", 0), (5, 10, 6, "cosine", 0),
     (0, 4, 5, "cosine", 0), (12, 5, 10, "multistep", 0), (10, 5, 10, "multistep", 0), (10, 5, 10, "cosine", 4),
     (30, 5, 10, "cosine", 2), (0, 3, 8, "cosine", 3), (40, 5, 6, "cosine", 0)],
)
def test_schedule_matches_the_official_hooks(warmup, ipe, epochs, sched, delay) -> None:
    cfg = SolverConfig(base_lr=3.5e-4, warmup_iters=warmup, max_epochs=epochs, scheduler=sched, steps=(4, 7),
                       delay_epochs=delay)
    official = _official_trace(cfg, ipe)
    if math.ceil(warmup / ipe) < epochs:  # torch refuses T_max <= 0, which only a warmup outlasting the run gives
        assert official == pytest.approx(_torch_trace(cfg, ipe), rel=1e-12, abs=1e-18)
    assert _ours(cfg, ipe) == pytest.approx(official, rel=1e-9, abs=1e-15)


def test_the_multiple_case_is_the_official_one_not_a_step_later() -> None:
    """Market-1501 at batch 256: 50 iterations per epoch, warmup 2000 = 40 epochs exactly."""
    cfg = load_config("market1501").solver
    s = LRSchedule(cfg, 50)
    assert s.t_max == 20 and s.first_decay_epoch == 39
    assert s.lr(cfg.base_lr, 2000, 40) < cfg.base_lr  # epoch 41 already decays once
    assert s.lr(cfg.base_lr, 59 * 50, 59) == pytest.approx(cfg.eta_min_lr)


def test_resume_position_gives_the_same_rate() -> None:
    cfg = load_config("market1501").solver
    a, b = LRSchedule(cfg, 64), LRSchedule(cfg, 64)  # a fresh schedule after a restart
    for i in (0, 1999, 2000, 2047, 2048, 64 * 45 + 3, 64 * 60 - 1):
        assert a.lr(cfg.base_lr, i, i // 64) == b.lr(cfg.base_lr, i, i // 64)


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
    with pytest.raises(MdprError, match="solver.scheduler"):
        LRSchedule(SolverConfig(scheduler="poly"), 10)
