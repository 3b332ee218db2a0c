"""The training loop: PK batches, MDPR losses, AMP on GPU, fast-reid's schedule, DDP, exact resume.

A run directory holds:

* ``config.yaml``: the resolved :class:`~mdpr.config.Config` (also stored inside every checkpoint);
* ``metrics.jsonl`` (see :mod:`mdpr.engine.report`) and ``log.txt``;
* ``last.pt`` after every epoch and ``epoch_NNN.pt`` (``epoch_010.pt`` for epoch 10) every ``train.checkpoint_period`` epochs
  (mdpr checkpoints with the full training state: model, optimizer, schedule, AMP scaler, epoch and
  iteration, the RNG states of every process, sampler state, config, class list);
* ``model.pt`` (weights, config and classes only) and ``summary.json`` / ``training.png`` at the end.

Exact resume: the sampler draws each epoch from ``(seed, epoch)`` and every image's augmentation from
its own seed, and the learning rate is a function of the position, so a run resumed from ``last.pt``
(written at an epoch boundary) replays the interrupted epoch exactly: on CPU with a fixed seed the
losses and final metrics equal those of an uninterrupted run. Records written after the checkpoint
are dropped from ``metrics.jsonl`` when resuming, so the file reads as one clean run.

What happens around the loop (metrics files, TensorBoard, evaluation, checkpoints) is done by hooks
(:mod:`mdpr.engine.hooks`); the train workflow (:mod:`mdpr.workflows.train`) plans the run and chooses them.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from mdpr.config import Config
from mdpr.engine.distributed import DistContext
from mdpr.engine.hooks import LAST, METRICS, HookBase, MetricsHook, default_hooks
from mdpr.engine.report import plot_training, read_metrics, summarize
from mdpr.engine.rng import restore_rng_state, seed_everything
from mdpr.engine.solver import LRSchedule, build_optimizer
from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_json, read_torch_file
from mdpr.runtime import resolve_device

ProgressFn = Callable[[Dict[str, Any]], None]

FINAL_MODEL = "model.pt"
#: After this many steps of the first epoch a CPU run says how long it will take, when that is long.
_ETA_STEPS = 5
_SLOW_CPU_RUN_S = 2 * 3600
CONFIG = "config.yaml"
SUMMARY = "summary.json"
PLOT = "training.png"


@dataclass
class TrainRequest:
    """Everything a (possibly spawned) training process needs; picklable."""

    config: Dict[str, Any]  #: resolved ``Config.to_dict()``
    run_dir: str
    resume: bool = False
    device: str = "auto"
    extra: Dict[str, Any] = field(default_factory=dict)


class NonFiniteLoss(MdprError):
    """A loss term became NaN or infinite; the message names the term and the last good checkpoint."""


# --------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One process's share of a training run (rank 0 also writes files and reports progress)."""

    def __init__(self, request: TrainRequest, ctx: Optional[DistContext] = None, progress: Optional[ProgressFn] = None,
                 hooks: Optional[Sequence[HookBase]] = None):
        """``hooks`` default to :func:`mdpr.engine.hooks.default_hooks` without evaluation."""
        from mdpr.data import load_dataset

        self.request = request
        self.cfg = Config.from_dict(request.config)
        self.ctx = ctx or DistContext(device=_single_device(request.device))
        self.device = self.ctx.device
        self.run_dir = Path(request.run_dir)
        self.progress = progress if self.ctx.is_main else None
        self.manifest = load_dataset(self.cfg.dataset)
        self.num_classes = int(self.manifest.num_train_pids)
        if self.num_classes < 1 or not self.manifest.train:
            raise MdprError(f"Dataset '{self.cfg.dataset}' has no training images; prepare it with its train split.")
        self.cfg.model.num_classes = self.num_classes
        self.classes = _class_list(self.manifest)
        self.chunks = max(1, int(self.cfg.solver.grad_accumulation))
        self.use_amp = bool(self.cfg.solver.amp) and self.device.type == "cuda"
        if self.cfg.train.sync_bn and self.ctx.world_size > 1 and self.device.type != "cuda":
            raise MdprError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU implementation); set "
                            "train.sync_bn=false to train in CPU processes.")
        self.hooks: List[HookBase] = list(default_hooks() if hooks is None else hooks)
        for hook in self.hooks:
            hook.trainer = self
        self.failed = False

    @classmethod
    def from_config(cls, config: Config, run_dir: Union[str, Path], *, resume: bool = False, device: str = "auto",
                    progress: Optional[ProgressFn] = None, hooks: Optional[Sequence[HookBase]] = None) -> Trainer:
        """A single-process trainer for ``config`` writing into ``run_dir``."""
        return cls(TrainRequest(config.to_dict(), str(run_dir), resume=resume, device=device), None, progress, hooks)

    # -- setup ---------------------------------------------------------------------------------------

    def _build(self) -> None:
        from mdpr.data.loader import build_train_loader
        from mdpr.losses import MDPRLoss
        from mdpr.model import build_model

        seed_everything(self.cfg.train.seed)
        build_cfg = self.cfg
        if self.request.resume and self.cfg.model.pretrained:
            # the checkpoint's weights replace the initialisation: do not read the init file again
            build_cfg = Config.from_dict(self.cfg.to_dict())
            build_cfg.model.pretrained = None
        model = build_model(build_cfg)
        if self.cfg.train.sync_bn and self.ctx.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.module = model.to(self.device)
        self.criterion = MDPRLoss(self.cfg.loss)
        train = self.manifest.train
        self.loader, self.sampler = build_train_loader(
            [self.manifest.image_path(r) for r in train],
            [r.pid for r in train],
            [r.camid for r in train],
            self.cfg,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            pin_memory=self.device.type == "cuda",
        )
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.chunks = self.sampler.layout.chunks_per_update  # process steps (x legacy chunks) per update
        self.optimizer = build_optimizer(self.module, self.cfg.solver)
        self.schedule = LRSchedule(self.cfg.solver, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.start_epoch = 0
        self.iteration = 0
        if self.request.resume:
            self._load_resume_state()
        if self.ctx.world_size > 1:
            self.model: nn.Module = nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,
                # as the official code: each process keeps its own BatchNorm statistics between updates
                # (rank 0's are the ones saved), instead of rank 0's overwriting them before every forward
                broadcast_buffers=False,
            )
        else:
            self.model = self.module

    def _load_resume_state(self) -> None:
        from mdpr.model.loading import load_weights

        path = self.run_dir / LAST
        if not path.is_file():
            raise MdprError(f"{self.run_dir} has no checkpoint ({LAST}); start a new run with --output instead of --resume.")
        ckpt = read_torch_file(path, what="Checkpoint")
        if int(ckpt["epoch"]) > self.cfg.solver.max_epochs:
            raise MdprError(
                f"The run in {self.run_dir} has already trained {int(ckpt['epoch'])} epochs, more than the "
                f"{self.cfg.solver.max_epochs} asked (--epochs, solver.max_epochs, counts all the run's epochs, not extra "
                f"ones); ask for more than {int(ckpt['epoch'])} to continue it.")
        saved_classes = int(ckpt.get("num_classes", len(ckpt.get("classes") or [])))
        if saved_classes != self.num_classes:
            raise MdprError(
                f"Checkpoint {path} was trained with {saved_classes} identities but dataset '{self.cfg.dataset}' has "
                f"{self.num_classes} training identities; resume with the run's own dataset "
                f"('{ckpt.get('dataset', '?')}') or start a new run."
            )
        report = load_weights(self.module, ckpt["model"], strict=False)
        if not report.ok:
            raise MdprError(
                f"Checkpoint {path} does not fit the configured model ({report.summary()}); resume without "
                f"changing model.* settings, or start a new run with --weights {path}."
            )
        # the optimizer's state carries each group's rates from the checkpoint; the schedule's base rates
        # (``initial_lr``) must be the configured ones, or a resumed run with a new solver.base_lr would
        # record the new rate and keep training with the old one
        base_rates = [group["initial_lr"] for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise MdprError(
                f"Checkpoint {path} does not fit the configured optimizer ({str(exc)[:200]}); resume without "
                f"changing solver.optimizer settings, or start a new run with --weights {path}."
            ) from None
        for group, rate in zip(self.optimizer.param_groups, base_rates):
            group["initial_lr"] = rate
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.resumed_from = ckpt.get("config") or {}
        self.start_epoch = int(ckpt["epoch"])
        self.iteration = int(ckpt["iteration"])
        states = ckpt.get("rng") or []
        if len(states) == self.ctx.world_size:
            restore_rng_state(states[self.ctx.rank])
        elif states:
            restore_rng_state(states[0])

    # -- what hooks use ----------------------------------------------------------------------------

    def record(self, record: Dict[str, Any]) -> None:
        """Hand a metrics record to the hooks (main process only)."""
        if self.ctx.is_main:
            for hook in self.hooks:
                hook.on_record(record)

    def log(self, message: str) -> None:
        """A line for the run's log (main process only)."""
        if self.ctx.is_main:
            for hook in self.hooks:
                hook.on_log(message)

    def emit(self, event: Dict[str, Any]) -> None:
        """A progress event for the caller's ``progress`` callback (main process only)."""
        if self.progress is not None:
            self.progress(event)

    def save_state(self, path: Path, epoch: int, rng_states: List[Any]) -> Path:
        """Write the full training state (a resumable mdpr checkpoint) to ``path``."""
        from mdpr.model import save_checkpoint

        return save_checkpoint(
            path,
            self.module,
            self.cfg,
            classes=self.classes,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            scaler=self.scaler.state_dict(),
            epoch=epoch,
            iteration=self.iteration,
            rng=rng_states,
            sampler=self.sampler.state_dict(),
            dataset=self.cfg.dataset,
            num_classes=self.num_classes,
            world_size=self.ctx.world_size,
        )

    # -- loop ----------------------------------------------------------------------------------------

    def train(self) -> Optional[Dict[str, Any]]:
        """Run (or continue) the training; returns the summary on rank 0, None on the others."""
        self._build()
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save_yaml(self.run_dir / CONFIG)
        for hook in self.hooks:
            hook.before_train()
        try:
            return self._train_loop()
        except BaseException:
            self.failed = True
            raise
        finally:
            for hook in self.hooks:
                hook.after_train()

    def _train_loop(self) -> Optional[Dict[str, Any]]:
        cfg = self.cfg
        max_epochs = cfg.solver.max_epochs
        total_iters = max_epochs * self.steps_per_epoch
        start = {
            "event": "start",
            "run_dir": str(self.run_dir),
            "dataset": cfg.dataset,
            "recipe": cfg.recipe,
            "device": str(self.device),
            "world_size": self.ctx.world_size,
            "num_classes": self.num_classes,
            "num_train_images": len(self.manifest.train),
            "epochs": max_epochs,
            "start_epoch": self.start_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "iteration": self.iteration,
            "total_iterations": total_iters,
            "batch_size": cfg.dataloader.batch_size,
            "amp": self.use_amp,
            "resumed": bool(self.request.resume),
        }
        self.emit(start)
        if self.request.resume:
            self._record_resume()
        self.log(
            f"{'resuming' if self.request.resume else 'starting'} {cfg.recipe} on {cfg.dataset}: epoch {self.start_epoch + 1}/"
            f"{max_epochs}, {self.steps_per_epoch} steps/epoch, {self.ctx.world_size} process(es) on {self.device}"
        )
        run_start = time.perf_counter()
        time_offset = self._previous_time()
        iter_times: List[float] = []
        images_per_step = cfg.dataloader.batch_size
        for epoch in range(self.start_epoch, max_epochs):
            self.module.train()
            self.sampler.set_epoch(epoch)
            epoch_start = time.perf_counter()
            sums: Dict[str, float] = {}
            tick = time.perf_counter()
            failed_here: List[str] = []
            for step, batch in enumerate(self.loader):
                failed_here += batch["failed"]
                lr, losses = self._step(batch, epoch)
                self.iteration += 1
                now = time.perf_counter()
                iter_times.append(now - tick)
                tick = now
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                recent = iter_times[-20:]
                sec_per_iter = sum(recent) / len(recent)
                images_per_s = images_per_step / sec_per_iter if sec_per_iter > 0 else 0.0
                eta = sec_per_iter * (total_iters - self.iteration)
                eta += sum(hook.extra_seconds(epoch + 1, max_epochs) for hook in self.hooks)
                event = {
                    "event": "step",
                    "epoch": epoch + 1,
                    "epochs": max_epochs,
                    "step": step + 1,
                    "steps_per_epoch": self.steps_per_epoch,
                    "iteration": self.iteration,
                    "total_iterations": total_iters,
                    "lr": lr,
                    "losses": losses,
                    "loss": sum(losses.values()),
                    "images_per_s": images_per_s,
                    "eta_s": eta,
                }
                self.emit(event)
                if step + 1 == _ETA_STEPS and epoch == self.start_epoch and self.device.type == "cpu" \
                        and eta > _SLOW_CPU_RUN_S:
                    self.emit({"event": "warning", "message": (
                        f"on this CPU the run will take about {eta / 3600:.1f} hours ({self.steps_per_epoch} steps "
                        f"per epoch at {sec_per_iter:.1f} s each); a GPU runs it far faster, and the demo-cpu recipe "
                        "(--recipe demo-cpu) trains in minutes on a CPU.")})
                for hook in self.hooks:
                    hook.after_step(event)
                log_period = max(1, cfg.train.log_period)
                if self.iteration % log_period == 0 or step + 1 == self.steps_per_epoch:
                    record = {
                        "type": "train",
                        "epoch": epoch + 1,
                        "step": step + 1,
                        "iteration": self.iteration,
                        "lr": lr,
                        "loss": event["loss"],
                        **losses,
                        "images_per_s": round(images_per_s, 2),
                        "time": round(time_offset + now - run_start, 3),
                    }
                    self.record(record)
                    self.log(
                        f"epoch {epoch + 1}/{max_epochs} step {step + 1}/{self.steps_per_epoch} lr {lr:.3g} "
                        f"loss {event['loss']:.4f} {images_per_s:.1f} img/s eta {_hms(eta)}"
                    )
            seconds = time.perf_counter() - epoch_start
            failed_all = [p for part in self.ctx.all_gather_object(failed_here) for p in part]
            replaced = len(failed_all)
            if failed_all:
                unique = sorted(set(failed_all))
                self.emit({"event": "warning", "message": f"epoch {epoch + 1}: {replaced} unreadable image read(s) "
                            f"replaced by another image of the same identity ({len(unique)} file(s), e.g. {unique[0]})"})
                self.log(f"unreadable images replaced in epoch {epoch + 1}: {unique}")
            n = max(1, self.steps_per_epoch)
            means = {k: v / n for k, v in sums.items()}
            epoch_record = {
                "type": "epoch",
                "epoch": epoch + 1,
                "iteration": self.iteration,
                "loss": sum(means.values()),
                **means,
                "images": images_per_step * self.steps_per_epoch,
                "seconds": round(seconds, 3),
                "replaced_images": replaced,
            }
            self.record(epoch_record)
            self.emit({"event": "epoch", **epoch_record})
            for hook in self.hooks:
                hook.after_epoch(epoch + 1)
        if self.ctx.is_main:
            return self._finish()
        return None

    def _step(self, batch: Dict[str, Any], epoch: int) -> tuple:
        lr = self.schedule.apply(self.optimizer, self.iteration, epoch)
        images = batch["images"].to(self.device, non_blocking=True)
        targets = batch["targets"].to(self.device, non_blocking=True)
        size = images.shape[0] // self.chunks
        self.optimizer.zero_grad(set_to_none=True)
        names: List[str] = []
        total_values: Optional[torch.Tensor] = None
        ddp = self.model if isinstance(self.model, nn.parallel.DistributedDataParallel) else None
        for c in range(self.chunks):
            last = c == self.chunks - 1
            sync = ddp.no_sync() if (ddp is not None and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                    outputs = self.model(images[c * size : (c + 1) * size])
                    terms = self.criterion(outputs, targets[c * size : (c + 1) * size])
                names = list(terms)
                values = self.ctx.all_reduce_mean(torch.stack([t.detach().float() for t in terms.values()]))
                if not bool(torch.isfinite(values).all()):
                    self._non_finite(names, values, epoch)
                total = sum(terms.values())
                assert isinstance(total, torch.Tensor)  # the loss always has terms; sum() alone types as int | Tensor
                self.scaler.scale(total / self.chunks).backward()
            total_values = values if total_values is None else total_values + values
        if self.cfg.solver.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.solver.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        assert total_values is not None
        means = (total_values / self.chunks).tolist()
        return lr, dict(zip(names, means))

    def _non_finite(self, names: List[str], values: torch.Tensor, epoch: int) -> None:
        bad = [(n, v) for n, v in zip(names, values.tolist()) if not math.isfinite(v)]
        name, value = bad[0]
        lower = f"{self.cfg.solver.base_lr / 10:.3g}"
        if (self.run_dir / LAST).is_file():
            advice = (f"the last good checkpoint is kept in {self.run_dir / LAST} (continue with a lower rate: "
                      f"--resume {self.run_dir} --set solver.base_lr={lower}, or with solver.grad_clip set)")
        else:
            advice = (f"no checkpoint was written yet (start the run again with --set solver.base_lr={lower}, or "
                      "with solver.grad_clip set)")
        message = (f"Training stopped: loss term '{name}' became {value} at epoch {epoch + 1}, iteration "
                   f"{self.iteration + 1}; {advice}.")
        self.record({"type": "error", "epoch": epoch + 1, "iteration": self.iteration + 1, "term": name, "value": str(value)})
        self.log(message)
        raise NonFiniteLoss(message)

    def _record_resume(self) -> None:
        """A ``resume`` record (and log line) naming the settings changed since the checkpoint."""
        before = getattr(self, "resumed_from", {}) or {}
        changed: Dict[str, List[Any]] = {}
        now = self.cfg.to_dict()
        for section, values in now.items():
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                old = (before.get(section) or {}).get(key, value) if isinstance(before.get(section), dict) else value
                if old != value:
                    changed[f"{section}.{key}"] = [old, value]
        self.record({"type": "resume", "epoch": self.start_epoch, "iteration": self.iteration, "changed": changed})
        if changed:
            self.log("resumed with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))

    def _previous_time(self) -> float:
        if not (self.request.resume and self.ctx.is_main):
            return 0.0
        times = [float(r["time"]) for r in read_metrics(self.run_dir / METRICS) if "time" in r]
        return max(times, default=0.0)

    def _finish(self) -> Dict[str, Any]:
        from mdpr.model import save_checkpoint

        save_checkpoint(self.run_dir / FINAL_MODEL, self.module, self.cfg, classes=self.classes)
        for hook in self.hooks:
            if isinstance(hook, MetricsHook):
                hook.flush()
        records = read_metrics(self.run_dir / METRICS)
        summary = summarize(records)
        summary.update(
            {
                "run_dir": str(self.run_dir),
                "dataset": self.cfg.dataset,
                "recipe": self.cfg.recipe,
                "checkpoint": str(self.run_dir / LAST),
                "model": str(self.run_dir / FINAL_MODEL),
                "plot": str(self.run_dir / PLOT),
            }
        )
        plot_training(records, self.run_dir / PLOT, title=f"{self.cfg.recipe} on {self.cfg.dataset}")
        atomic_write_json(self.run_dir / SUMMARY, summary)
        self.log(f"done: {json.dumps(summary.get('final_metrics', {}))}")
        self.emit({"event": "done", "summary": summary})
        return summary


# --------------------------------------------------------------------------------------------- helpers


def _single_device(device: str) -> torch.device:
    return resolve_device(device)


def _class_list(manifest: Any) -> List[int]:
    """Original identity of every class index (train pids are relabelled 0..N-1)."""
    classes: Dict[int, int] = {}
    for r in manifest.train:
        classes.setdefault(int(r.pid), int(r.orig_pid))
    return [classes[i] for i in sorted(classes)]


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def run_training(ctx: Optional[DistContext], request: TrainRequest, progress: Optional[ProgressFn] = None,
                 hooks: Optional[Sequence[HookBase]] = None) -> Optional[Dict[str, Any]]:
    """Train in this process (``ctx`` None = one process on ``request.device``) with ``hooks``
    (default: :func:`mdpr.engine.hooks.default_hooks` without evaluation).

    Module-level and picklable, so :func:`mdpr.engine.distributed.launch` can spawn it as a worker;
    ``progress`` (also picklable then) is called with event dicts on rank 0 only.
    """
    return Trainer(request, ctx, progress, hooks).train()
