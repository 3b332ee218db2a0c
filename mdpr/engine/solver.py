"""Optimizer parameter groups and the learning-rate schedule of fast-reid (and so of the MDPR recipes).

Schedule: fast-reid's ``build_lr_scheduler`` (``fastreid/solver/build.py``) driven by its
``LRScheduler`` hook (``fastreid/engine/hooks.py``), written as a closed form of (iteration, epoch):

* linear warmup per *iteration*: the warmup scheduler steps after every iteration ``i`` with
  ``i + 1 <= W``, so iteration ``i`` runs at factor ``warmup_factor * (1 - i / W) + i / W`` for ``i < W``
  and at 1 from iteration ``W`` on;
* the main scheduler steps after every epoch ``e`` (0-based) for which ``next_iter > W`` and
  ``e + 1 > delay_epochs``, where ``next_iter = (e + 1) * iters_per_epoch + 1`` (the hook reads the
  trainer's iteration counter, already advanced past the epoch's last iteration, plus one). So the
  first step follows epoch ``max(ceil(W / iters_per_epoch) - 1, delay_epochs)``: when W is a multiple
  of the iterations per epoch, the epoch in which the warmup ends is itself followed by a step;
* cosine annealing to ``eta_min_lr`` with ``T_max = max_epochs - max(ceil(W / iters_per_epoch),
  delay_epochs)``, which makes the last epoch run exactly at ``eta_min_lr`` (without a delay); or
  multi-step decay by ``gamma`` at the ``steps`` milestones, counted in main-scheduler steps.

The warmup never overlaps a main-scheduler step (a step needs ``(e + 1) * iters_per_epoch >= W``), so the
rate is the product of the two factors. Because it is a pure function of the position in training,
resuming from a checkpoint reproduces it exactly. (fast-reid also postpones a warmup step when AMP
skips an optimizer step on overflow; here warmup follows the iteration count, so a skipped fp16 step
does not lengthen it.) ``tests/engine/test_solver.py`` compares this against a step-by-step
transcription of the official hooks.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
from torch import nn

from mdpr.config import SolverConfig
from mdpr.errors import MdprError

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def build_optimizer(model: nn.Module, cfg: SolverConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over the trainable parameters, with fast-reid's per-parameter hyper-parameters
    (``weight_decay_norm`` for normalisation layers, ``bias_lr_factor`` for biases), grouped by value.
    Each group remembers its base rate as ``initial_lr`` for :class:`LRSchedule`."""
    groups: Dict[tuple, List[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr = cfg.base_lr * (cfg.bias_lr_factor if name == "bias" else 1.0)
            wd = cfg.weight_decay_norm if isinstance(module, _NORM_TYPES) else cfg.weight_decay
            groups.setdefault((lr, wd), []).append(param)
    param_groups = [{"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    name = cfg.optimizer.lower()
    # the fused kernels are several times faster (CPU too) and give the same updates
    fused: Dict[str, Any] = {"fused": True} if _fusable(model) else {}
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.base_lr, **fused)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.base_lr, **fused)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.base_lr, momentum=cfg.momentum)
    raise MdprError(f"Unknown solver.optimizer '{cfg.optimizer}'; use Adam, AdamW or SGD.")


def _fusable(model: nn.Module) -> bool:
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


class LRSchedule:
    """fast-reid's warmup + per-epoch cosine / multi-step schedule as a function of the position."""

    def __init__(self, cfg: SolverConfig, iters_per_epoch: int) -> None:
        self.cfg = cfg
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        self.warmup_iters = max(0, int(cfg.warmup_iters))
        self.delay_epochs = max(0, int(cfg.delay_epochs))
        warmup_epochs = math.ceil(self.warmup_iters / self.iters_per_epoch)
        #: the first epoch (0-based) after which the main scheduler steps
        self.first_decay_epoch = max(warmup_epochs - 1, self.delay_epochs, 0)
        #: fast-reid's T_max. It is below 1 only when the warmup outlasts the run, and then the cosine
        #: never steps within the run, so clamping it to 1 changes nothing (and avoids dividing by zero).
        self.t_max = max(1, cfg.max_epochs - max(warmup_epochs, self.delay_epochs))

    def warmup_factor(self, iteration: int) -> float:
        if iteration >= self.warmup_iters:
            return 1.0
        alpha = iteration / self.warmup_iters
        return self.cfg.warmup_factor * (1 - alpha) + alpha

    def decay_steps(self, epoch: int) -> int:
        """How many main-scheduler steps happened before ``epoch`` (0-based) starts."""
        return max(0, epoch - self.first_decay_epoch)

    def lr(self, base_lr: float, iteration: int, epoch: int) -> float:
        """Learning rate of a group with base rate ``base_lr`` at global ``iteration`` in ``epoch``."""
        k = self.decay_steps(epoch)
        if self.cfg.scheduler == "cosine":
            eta = self.cfg.eta_min_lr
            main = eta + (base_lr - eta) * (1 + math.cos(math.pi * k / self.t_max)) / 2
        else:
            main = base_lr * self.cfg.gamma ** sum(1 for m in self.cfg.steps if m <= k)
        return main * self.warmup_factor(iteration)

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int, epoch: int) -> float:
        """Set every group's rate for this step; returns the rate of the first group."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr(group["initial_lr"], iteration, epoch)
        return optimizer.param_groups[0]["lr"]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "name": self.cfg.scheduler,
            "iters_per_epoch": self.iters_per_epoch,
            "warmup_iters": self.warmup_iters,
            "delay_epochs": self.delay_epochs,
            "t_max": self.t_max,
        }
