"""Optimizer parameter groups and the learning-rate schedule of fast-reid (and so of the MDPR recipes).

Schedule (``fastreid/solver`` + its ``LRScheduler`` hook), as a closed form of (iteration, epoch):

* linear warmup per *iteration*: factor ``warmup_factor * (1 - i / W) + i / W`` for iteration ``i < W``;
* then one step of the main scheduler at the end of every epoch whose last iteration is past the
  warmup (``(epoch + 1) * iters_per_epoch > W``):
  cosine annealing to ``eta_min_lr`` with ``T_max = max_epochs - ceil(W / iters_per_epoch)``,
  or multi-step decay by ``gamma`` at the ``steps`` milestones (counted in such epochs).

Because the learning rate is a pure function of the position in training, resuming from a checkpoint
reproduces it exactly. (fast-reid also postpones a warmup step when AMP skips an optimizer step on
overflow; here warmup follows the iteration count, so a skipped fp16 step does not lengthen it.)
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
    fused = {"fused": True} if _fusable(model) else {}
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
        if cfg.scheduler not in ("cosine", "multistep"):
            raise MdprError(f"Unknown solver.scheduler '{cfg.scheduler}'; use cosine or multistep.")
        self.cfg = cfg
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        self.warmup_iters = max(0, int(cfg.warmup_iters))
        warmup_epochs = math.ceil(self.warmup_iters / self.iters_per_epoch)
        #: fast-reid's T_max; at least 1 so a warmup longer than the run does not divide by zero
        self.t_max = max(1, cfg.max_epochs - warmup_epochs)

    def warmup_factor(self, iteration: int) -> float:
        if iteration >= self.warmup_iters:
            return 1.0
        alpha = iteration / self.warmup_iters
        return self.cfg.warmup_factor * (1 - alpha) + alpha

    def decay_steps(self, epoch: int) -> int:
        """How many main-scheduler steps happened before ``epoch`` (0-based) starts."""
        # epochs e < epoch whose end iteration (e + 1) * ipe exceeds the warmup
        first = self.warmup_iters // self.iters_per_epoch  # smallest e with (e+1)*ipe > W
        return max(0, epoch - first)

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
            "t_max": self.t_max,
        }
