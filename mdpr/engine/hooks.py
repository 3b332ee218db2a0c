"""Training hooks: what happens around the loop (logging, TensorBoard, evaluation, checkpointing).

The :class:`~mdpr.engine.trainer.Trainer` runs the optimisation; hooks are called at fixed points on
every process (``before_train``, ``after_step``, ``after_epoch``, ``after_train``) and decide themselves
what only the main process does. Evaluation is given to :class:`EvalHook` as a function, so the engine
does not depend on how features are extracted or scored (the train workflow passes the one evaluation
pipeline of :mod:`mdpr.workflows.evaluate`).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from mdpr.engine.report import read_metrics
from mdpr.engine.rng import capture_rng_state
from mdpr.fileio import atomic_copy, atomic_write_text

if TYPE_CHECKING:
    from torch import nn

    from mdpr.config import Config
    from mdpr.engine.trainer import Trainer

#: ``evaluate(model, config, manifest, progress(split, done, total)) -> metrics`` (rank 0 only).
EvaluateFn = Callable[["nn.Module", "Config", Any, Callable[[str, int, int], None]], Dict[str, Any]]

LAST = "last.pt"
METRICS = "metrics.jsonl"


class HookBase:
    """Override the points you need; ``self.trainer`` is set when the hook is registered."""

    trainer: Trainer

    def before_train(self) -> None:
        """After the model, data and state are built (and restored when resuming)."""

    def after_step(self, event: Dict[str, Any]) -> None:
        """After each optimizer update, with the step's progress event."""

    def after_epoch(self, epoch: int) -> None:
        """After the epoch's record is written (``epoch`` counts from 1)."""

    def after_train(self) -> None:
        """After the last epoch (or when the loop stops with an error: then ``trainer.failed`` is set)."""

    def on_record(self, record: Dict[str, Any]) -> None:
        """A metrics record (``type`` train / epoch / eval / error) on the main process."""

    def on_log(self, message: str) -> None:
        """A line for the human-readable log on the main process."""

    def extra_seconds(self, epoch: int, max_epochs: int) -> float:
        """Time this hook will still take after ``epoch``, for the ETA."""
        return 0.0


class MetricsHook(HookBase):
    """``metrics.jsonl`` (one JSON record per line) and ``log.txt`` in the run directory."""

    def __init__(self) -> None:
        self._metrics: Any = None
        self._log: Any = None

    def before_train(self) -> None:
        t = self.trainer
        if not t.ctx.is_main:
            return
        path = t.run_dir / METRICS
        if t.request.resume:
            # drop what was written after the checkpoint: the resumed run replays it
            kept = [r for r in read_metrics(path) if int(r.get("iteration", 0)) <= t.iteration and r.get("type") != "error"]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif path.exists():
            path.unlink()
        self._metrics = open(path, "a", buffering=1, encoding="utf-8")
        self._log = open(t.run_dir / "log.txt", "a", buffering=1, encoding="utf-8")

    def on_record(self, record: Dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")

    def on_log(self, message: str) -> None:
        if self._log is not None:
            self._log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")

    def flush(self) -> None:
        if self._metrics is not None:
            self._metrics.flush()

    def after_train(self) -> None:
        for f in (self._metrics, self._log):
            if f is not None:
                f.close()
        self._metrics = self._log = None


class TensorBoardHook(HookBase):
    """Scalars of every record under ``tensorboard/``, when the ``tensorboard`` extra is installed."""

    def __init__(self) -> None:
        self._writer: Any = None

    def before_train(self) -> None:
        if not self.trainer.ctx.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard is optional (extra "tensorboard")
            return
        self._writer = SummaryWriter(str(self.trainer.run_dir / "tensorboard"))

    def on_record(self, record: Dict[str, Any]) -> None:
        if self._writer is None:
            return
        step = record.get("iteration", 0)
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step", "iteration", "time"):
                self._writer.add_scalar(f"{record['type']}/{key}", value, step)

    def after_train(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class EvalHook(HookBase):
    """Evaluates on rank 0 every ``train.eval_period`` epochs and after the last (period 0: only the last,
    -1: never); the other processes wait at a barrier that every process reaches."""

    def __init__(self, evaluate: EvaluateFn) -> None:
        self.evaluate = evaluate
        self._seconds = 0.0  #: duration of the latest evaluation, for the ETA

    def due(self, epoch: int, max_epochs: int) -> bool:
        period = self.trainer.cfg.train.eval_period
        return (period > 0 and epoch % period == 0) or (epoch == max_epochs and period >= 0)

    def extra_seconds(self, epoch: int, max_epochs: int) -> float:
        return self._seconds * sum(self.due(e, max_epochs) for e in range(epoch, max_epochs + 1))

    def after_epoch(self, epoch: int) -> None:
        t = self.trainer
        if not self.due(epoch, t.cfg.solver.max_epochs):
            return
        if t.ctx.is_main:
            t.emit({"event": "eval_start", "epoch": epoch})
            start = time.perf_counter()
            metrics = self.evaluate(
                t.module, t.cfg, t.manifest,
                lambda split, done, total: t.emit(
                    {"event": "eval_progress", "epoch": epoch, "split": split, "done": done, "total": total}),
            )
            t.module.train()
            self._seconds = time.perf_counter() - start
            record = {"type": "eval", "epoch": epoch, "iteration": t.iteration, **metrics,
                      "seconds": round(self._seconds, 3)}
            t.record(record)
            t.log(f"evaluation after epoch {epoch}: mAP {metrics['mAP']:.4f} Rank-1 {metrics['rank1']:.4f} "
                  f"Rank-5 {metrics['rank5']:.4f} mINP {metrics['mINP']:.4f}")
            t.emit({"event": "eval", **record})
        t.ctx.barrier()


class CheckpointHook(HookBase):
    """``last.pt`` after every epoch (full training state) and ``epoch_NNN.pt`` every ``train.checkpoint_period``;
    a new run also writes ``last.pt`` before its first step, so that an interrupt inside the first epoch leaves a
    run that ``--resume`` continues (from the start, exactly)."""

    def before_train(self) -> None:
        t = self.trainer
        if t.request.resume:
            return
        rng_states = t.ctx.all_gather_object(capture_rng_state())
        if t.ctx.is_main:
            t.save_state(t.run_dir / LAST, t.start_epoch, rng_states)
        t.ctx.barrier()

    def after_epoch(self, epoch: int) -> None:
        t = self.trainer
        rng_states = t.ctx.all_gather_object(capture_rng_state())  # every process takes part
        if t.ctx.is_main:
            path = t.save_state(t.run_dir / LAST, epoch, rng_states)
            period = t.cfg.train.checkpoint_period
            if period > 0 and epoch % period == 0:
                atomic_copy(path, t.run_dir / f"epoch_{epoch:03d}.pt")
            t.emit({"event": "checkpoint", "path": str(path), "epoch": epoch})
        t.ctx.barrier()


def default_hooks(evaluate: Optional[EvaluateFn] = None) -> List[HookBase]:
    """The hooks of a normal run, in the order they act at the end of an epoch."""
    hooks: List[HookBase] = [MetricsHook(), TensorBoardHook()]
    if evaluate is not None:
        hooks.append(EvalHook(evaluate))
    hooks.append(CheckpointHook())
    return hooks
