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

Evaluation runs on rank 0 with the unwrapped model while the other processes wait at a barrier that
every process reaches.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import yaml
from torch import nn

from mdpr.config import Config
from mdpr.engine.distributed import DistContext
from mdpr.engine.report import plot_training, read_metrics, summarize
from mdpr.engine.solver import LRSchedule, build_optimizer
from mdpr.errors import MdprError
from mdpr.fileio import atomic_copy, atomic_write_json, atomic_write_text, read_torch_file
from mdpr.runtime import resolve_device

ProgressFn = Callable[[Dict[str, Any]], None]

LAST = "last.pt"
FINAL_MODEL = "model.pt"
METRICS = "metrics.jsonl"
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


# --------------------------------------------------------------------------------------------- RNG state


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in types ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------- evaluation


def evaluate_on_test_split(
    model: nn.Module,
    cfg: Config,
    manifest: Any,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> Dict[str, Any]:
    """Query/gallery metrics of ``model`` on ``manifest`` (cosine distance, the standard protocol).

    ``progress(split, done, total)`` is called after every extracted batch.
    """
    from mdpr.evaluation import evaluate
    from mdpr.evaluation.distance import compute_distance
    from mdpr.inference import FeatureExtractor

    if not manifest.query or not manifest.gallery:
        raise MdprError(f"Dataset '{manifest.name}' has no query/gallery split to evaluate on; set train.eval_period=-1.")
    extractor = FeatureExtractor.from_model(
        model,
        cfg,
        device=None,  # extract where the model already is
        batch_size=cfg.dataloader.test_batch_size,
        num_workers=cfg.dataloader.num_workers,
        flip=cfg.train.eval_flip,
    )
    failed_total = 0

    def extract(split: str, records: List[Any]) -> tuple:
        nonlocal failed_total
        paths = [str(manifest.image_path(r)) for r in records]
        report = (lambda done, total: progress(split, done, total)) if progress else None
        feats, ok, failed = extractor.extract_paths(paths, progress=report)
        failed_total += len(failed)
        ok = np.asarray(ok, dtype=np.int64)
        pids = np.asarray([records[i].pid for i in ok], dtype=np.int64)
        camids = np.asarray([records[i].camid for i in ok], dtype=np.int64)
        return np.asarray(feats), pids, camids

    qf, q_pids, q_camids = extract("query", manifest.query)
    gf, g_pids, g_camids = extract("gallery", manifest.gallery)
    distmat = compute_distance(qf, gf, metric="cosine")
    res = evaluate(distmat, q_pids, g_pids, q_camids, g_camids)
    cmc = np.asarray(res["cmc"], dtype=np.float64)

    def rank(k: int) -> float:
        return float(cmc[min(k, len(cmc)) - 1]) if len(cmc) else 0.0

    return {
        "mAP": float(res["mAP"]),
        "mINP": float(res["mINP"]),
        "rank1": rank(1),
        "rank5": rank(5),
        "rank10": rank(10),
        "num_query": int(len(q_pids)),
        "num_valid_query": int(res.get("num_valid", len(q_pids))),
        "num_gallery": int(len(g_pids)),
        "unreadable_images": failed_total,
    }


# --------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One process's share of a training run (rank 0 also writes files and reports progress)."""

    def __init__(self, request: TrainRequest, ctx: Optional[DistContext] = None, progress: Optional[ProgressFn] = None):
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
            raise MdprError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU implementation); drop it for --procs.")
        self._tb: Any = None
        self._log_file: Any = None
        self._eval_seconds = 0.0  #: duration of the latest evaluation, for the ETA

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
            )
        else:
            self.model = self.module

    def _load_resume_state(self) -> None:
        from mdpr.model.loading import load_weights

        path = self.run_dir / LAST
        if not path.is_file():
            raise MdprError(f"{self.run_dir} has no checkpoint ({LAST}); start a new run with --output instead of --resume.")
        ckpt = read_torch_file(path, what="Checkpoint")
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
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise MdprError(
                f"Checkpoint {path} does not fit the configured optimizer ({str(exc)[:200]}); resume without "
                f"changing solver.optimizer settings, or start a new run with --weights {path}."
            ) from None
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.iteration = int(ckpt["iteration"])
        states = ckpt.get("rng") or []
        if len(states) == self.ctx.world_size:
            restore_rng_state(states[self.ctx.rank])
        elif states:
            restore_rng_state(states[0])

    # -- files ---------------------------------------------------------------------------------------

    def _open_outputs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save_yaml(self.run_dir / CONFIG)
        metrics = self.run_dir / METRICS
        if self.request.resume:
            # drop what was written after the checkpoint: the resumed run replays it
            kept = [r for r in read_metrics(metrics) if int(r.get("iteration", 0)) <= self.iteration and r.get("type") != "error"]
            atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))
        elif metrics.exists():
            metrics.unlink()
        self._metrics = open(metrics, "a", buffering=1)
        self._log_file = open(self.run_dir / "log.txt", "a", buffering=1)
        try:  # TensorBoard only when it is installed (extra "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        except Exception:
            self._tb = None

    def _close_outputs(self) -> None:
        for f in (getattr(self, "_metrics", None), self._log_file):
            if f is not None:
                f.close()
        if self._tb is not None:
            self._tb.close()

    def _record(self, record: Dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        self._metrics.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record.get("iteration", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step", "iteration", "time"):
                    self._tb.add_scalar(f"{record['type']}/{k}", v, step)

    def _log(self, message: str) -> None:
        if self._log_file is not None:
            self._log_file.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")

    def _emit(self, event: Dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(event)

    def _save_checkpoint(self, epoch: int) -> None:
        """All processes call this (RNG states are gathered); rank 0 writes."""
        from mdpr.model import save_checkpoint

        rng_states = self.ctx.all_gather_object(capture_rng_state())
        if self.ctx.is_main:
            path = self.run_dir / LAST
            save_checkpoint(
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
            period = self.cfg.train.checkpoint_period
            if period > 0 and epoch % period == 0:
                atomic_copy(path, self.run_dir / f"epoch_{epoch:03d}.pt")
            self._emit({"event": "checkpoint", "path": str(path), "epoch": epoch})

    # -- loop ----------------------------------------------------------------------------------------

    def train(self) -> Optional[Dict[str, Any]]:
        """Run (or continue) the training; returns the summary on rank 0, None on the others."""
        self._build()
        if self.ctx.is_main:
            self._open_outputs()
        try:
            return self._train_loop()
        finally:
            if self.ctx.is_main:
                self._close_outputs()

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
        self._emit(start)
        self._log(
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
                eta += self._eval_seconds * self._evaluations_left(epoch + 1, max_epochs)
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
                self._emit(event)
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
                    self._record(record)
                    self._log(
                        f"epoch {epoch + 1}/{max_epochs} step {step + 1}/{self.steps_per_epoch} lr {lr:.3g} "
                        f"loss {event['loss']:.4f} {images_per_s:.1f} img/s eta {_hms(eta)}"
                    )
            seconds = time.perf_counter() - epoch_start
            failed_all = [p for part in self.ctx.all_gather_object(failed_here) for p in part]
            replaced = len(failed_all)
            if failed_all:
                unique = sorted(set(failed_all))
                self._emit({"event": "warning", "message": f"epoch {epoch + 1}: {replaced} unreadable image read(s) "
                            f"replaced by another image of the same identity ({len(unique)} file(s), e.g. {unique[0]})"})
                self._log(f"unreadable images replaced in epoch {epoch + 1}: {unique}")
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
            self._record(epoch_record)
            self._emit({"event": "epoch", **epoch_record})
            if self._evaluates_after(epoch + 1, max_epochs):
                self._evaluate(epoch + 1)
            self._save_checkpoint(epoch + 1)
            self.ctx.barrier()
        if self.ctx.is_main:
            return self._finish()
        return None

    def _evaluates_after(self, epoch: int, max_epochs: int) -> bool:
        period = self.cfg.train.eval_period
        return (period > 0 and epoch % period == 0) or (epoch == max_epochs and period >= 0)

    def _evaluations_left(self, epoch: int, max_epochs: int) -> int:
        """Evaluations still to come from the end of ``epoch`` (1-based) on."""
        return sum(self._evaluates_after(e, max_epochs) for e in range(epoch, max_epochs + 1))

    def _step(self, batch: Dict[str, Any], epoch: int) -> tuple:
        lr = self.schedule.apply(self.optimizer, self.iteration, epoch)
        images = batch["images"].to(self.device, non_blocking=True)
        targets = batch["targets"].to(self.device, non_blocking=True)
        size = images.shape[0] // self.chunks
        self.optimizer.zero_grad(set_to_none=True)
        names: List[str] = []
        total_values: Optional[torch.Tensor] = None
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        for c in range(self.chunks):
            last = c == self.chunks - 1
            sync = self.model.no_sync() if (ddp and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                    outputs = self.model(images[c * size : (c + 1) * size])
                    terms = self.criterion(outputs, targets[c * size : (c + 1) * size])
                names = list(terms)
                values = self.ctx.all_reduce_mean(torch.stack([t.detach().float() for t in terms.values()]))
                if not bool(torch.isfinite(values).all()):
                    self._non_finite(names, values, epoch)
                total = sum(terms.values())
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
        message = (
            f"Training stopped: loss term '{name}' became {value} at epoch {epoch + 1}, iteration {self.iteration + 1}; "
            f"the last good checkpoint is kept in {self.run_dir / LAST} (lower solver.base_lr or set solver.grad_clip, "
            f"then continue with --resume {self.run_dir})."
        )
        self._record({"type": "error", "epoch": epoch + 1, "iteration": self.iteration + 1, "term": name, "value": str(value)})
        self._log(message)
        raise NonFiniteLoss(message)

    def _evaluate(self, epoch: int) -> None:
        if self.ctx.is_main:
            self._emit({"event": "eval_start", "epoch": epoch})
            start = time.perf_counter()
            metrics = evaluate_on_test_split(
                self.module,
                self.cfg,
                self.manifest,
                progress=lambda split, done, total: self._emit(
                    {"event": "eval_progress", "epoch": epoch, "split": split, "done": done, "total": total}
                ),
            )
            self.module.train()
            self._eval_seconds = time.perf_counter() - start
            record = {"type": "eval", "epoch": epoch, "iteration": self.iteration, **metrics,
                      "seconds": round(self._eval_seconds, 3)}
            self._record(record)
            self._log(
                f"evaluation after epoch {epoch}: mAP {metrics['mAP']:.4f} Rank-1 {metrics['rank1']:.4f} "
                f"Rank-5 {metrics['rank5']:.4f} mINP {metrics['mINP']:.4f}"
            )
            self._emit({"event": "eval", **record})
        self.ctx.barrier()

    def _previous_time(self) -> float:
        if not (self.request.resume and self.ctx.is_main):
            return 0.0
        times = [float(r["time"]) for r in read_metrics(self.run_dir / METRICS) if "time" in r]
        return max(times, default=0.0)

    def _finish(self) -> Dict[str, Any]:
        from mdpr.model import save_checkpoint

        save_checkpoint(self.run_dir / FINAL_MODEL, self.module, self.cfg, classes=self.classes)
        self._metrics.flush()
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
        self._log(f"done: {json.dumps(summary.get('final_metrics', {}))}")
        self._emit({"event": "done", "summary": summary})
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


def run_training(ctx: Optional[DistContext], request: TrainRequest, progress: Optional[ProgressFn] = None) -> Optional[Dict[str, Any]]:
    """Train in this process (``ctx`` None = one process on ``request.device``).

    Module-level and picklable, so :func:`mdpr.engine.distributed.launch` can spawn it as a worker;
    ``progress`` (also picklable then) is called with event dicts on rank 0 only.
    """
    return Trainer(request, ctx, progress).train()


#: Recipe used when ``--recipe`` is not given, by the prepared dataset's kind.
DEFAULT_RECIPES = {"market1501": "market1501", "dukemtmc": "dukemtmc", "synergyreid": "synergyreid", "demo": "demo-cpu"}
FALLBACK_RECIPE = "market1501"


@dataclass
class RunPlan:
    """A resolved run: its config, directory and whether it continues an earlier one."""

    config: Config
    run_dir: Path
    resume: bool
    notes: List[str] = field(default_factory=list)


def plan_run(
    dataset: Optional[str] = None,
    recipe: Optional[str] = None,
    overrides: Sequence[str] = (),
    output: Optional[Union[str, Path]] = None,
    resume: Optional[Union[str, Path]] = None,
    epochs: Optional[int] = None,
    eval_period: Optional[int] = None,
    checkpoint_period: Optional[int] = None,
    runs_root: Union[str, Path] = "runs",
) -> RunPlan:
    """Resolve the CLI's choices into a :class:`RunPlan` (one clear MdprError for each bad input).

    A new run: the dataset must be registered; the recipe defaults by dataset kind; the run directory
    defaults to ``runs/<dataset>-<recipe>-<timestamp>`` and must not already hold a run. Resuming: the
    run directory must hold ``last.pt``; its ``config.yaml`` is the base, ``--dataset``, ``--epochs``,
    the periods and ``--set`` overrides apply on top (they change the run from there on).
    """
    from mdpr.config import load_config
    from mdpr.data import load_dataset

    notes: List[str] = []
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / LAST).is_file():
            raise MdprError(
                f"Cannot resume: {run_dir} holds no checkpoint ({LAST}); give the directory of an earlier run, "
                f"or start a new one with --output."
            )
        if recipe:
            raise MdprError("--recipe cannot change a resumed run; use --set key=value for individual settings.")
        config_path = run_dir / CONFIG
        if config_path.is_file():
            base = yaml.safe_load(config_path.read_text()) or {}
        else:
            ckpt = read_torch_file(run_dir / LAST, what="Checkpoint")
            base = ckpt.get("config") or {}
        from mdpr.config import _deep_merge, parse_overrides

        cfg = Config.from_dict(_deep_merge(base, parse_overrides(overrides)))
        if dataset:
            cfg.dataset = dataset
        load_dataset(cfg.dataset)  # fails early, naming the registered datasets
    else:
        if not dataset:
            raise MdprError("Name the dataset to train on with --dataset NAME (see `mdpr prepare --help`).")
        manifest = load_dataset(dataset)
        if not recipe:
            recipe = DEFAULT_RECIPES.get(manifest.dataset)
            if recipe is None:
                recipe = FALLBACK_RECIPE
                notes.append(
                    f"No recipe is specific to '{manifest.dataset}' datasets; using the paper's {FALLBACK_RECIPE} "
                    f"recipe (choose another with --recipe)."
                )
        cfg = load_config(recipe, overrides)
        cfg.dataset = dataset
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(output) if output else Path(runs_root) / f"{Path(dataset).stem}-{cfg.recipe}-{stamp}"
        if (run_dir / LAST).exists():
            raise MdprError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --output.")
    if epochs is not None:
        cfg.solver.max_epochs = epochs
    if eval_period is not None:
        cfg.train.eval_period = eval_period
    if checkpoint_period is not None:
        cfg.train.checkpoint_period = checkpoint_period
    if cfg.solver.max_epochs < 1:
        raise MdprError(f"The number of epochs must be at least 1, got {cfg.solver.max_epochs}.")
    return RunPlan(cfg, run_dir, resume is not None, notes)
