"""``mdpr train``: plan a run (recipe, run directory, resume rules), launch its processes, train, evaluate.

Python users train in one call: ``train_run(TrainOptions(dataset="demo", recipe="demo-cpu"))``, or
``Trainer.from_config(config, run_dir, hooks=training_hooks()).train()`` for a config built by hand.
"""

from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from mdpr.config import Config
from mdpr.engine.hooks import HookBase, default_hooks
from mdpr.engine.trainer import CONFIG, LAST, SUMMARY, ProgressFn, TrainRequest, run_training
from mdpr.errors import MdprError
from mdpr.fileio import ExclusiveLock, check_output_folder, describe_os_error, read_torch_file

#: Recipe used when ``recipe`` is not given, by the prepared dataset's kind.
DEFAULT_RECIPES = {"market1501": "market1501", "dukemtmc": "dukemtmc", "synergyreid": "synergyreid", "demo": "demo-cpu"}
FALLBACK_RECIPE = "market1501"
#: The run directory's lock file (see :func:`lock_run_dir`).
RUN_LOCK = ".train.lock"


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
    init: Optional[str] = None,
    check_init: bool = True,
) -> RunPlan:
    """Resolve the choices into a :class:`RunPlan` (one clear MdprError for each bad input).

    A new run: the dataset must be registered; the recipe defaults by dataset kind; the run directory
    defaults to ``runs/<dataset>-<recipe>-<timestamp>`` and must not already hold a run. Resuming: the
    run directory must hold ``last.pt``; its ``config.yaml`` is the base, ``dataset``, ``epochs``,
    the periods and overrides apply on top (they change the run from there on).

    A new run's backbone initialisation is resolved here (``init``: a named initialisation, a file or "none";
    default: the recipe's ``model.init``), so that a missing file stops the run before anything starts; the
    resolved file is recorded as ``model.pretrained`` and named in the notes.
    """
    from mdpr.config import load_config, load_run_config
    from mdpr.data import load_dataset

    notes: List[str] = []
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / LAST).is_file():
            raise MdprError(
                f"Cannot resume: {run_dir} holds no checkpoint ({LAST}); give the directory of an earlier run, "
                f"or start a new one with output DIR."
            )
        if recipe:
            raise MdprError("The recipe cannot change a resumed run; use overrides key=value for individual settings.")
        check_output_folder(run_dir, "the run directory")
        config_path = run_dir / CONFIG
        if config_path.is_file():
            saved = load_run_config(config_path)
        else:
            ckpt = read_torch_file(run_dir / LAST, what="Checkpoint")
            saved = load_run_config(ckpt.get("config") or {})
        cfg = load_run_config(saved.to_dict(), overrides)
        if dataset:
            cfg.dataset = dataset
        _apply_schedule_options(cfg, epochs, eval_period, checkpoint_period)
        notes += resume_changes(saved, cfg, run_dir)
        load_dataset(cfg.dataset)  # fails early, naming the registered datasets
    else:
        if not dataset:
            raise MdprError("Name the dataset to train on with dataset NAME (see `mdpr prepare --help`).")
        manifest = load_dataset(dataset)
        if not recipe:
            recipe = DEFAULT_RECIPES.get(manifest.dataset)
            if recipe is None:
                recipe = FALLBACK_RECIPE
                notes.append(
                    f"No recipe is specific to '{manifest.dataset}' datasets; using the paper's {FALLBACK_RECIPE} "
                    f"recipe (choose another with recipe NAME)."
                )
        cfg = load_config(recipe, overrides)
        cfg.dataset = dataset
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(output) if output else Path(runs_root) / f"{Path(dataset).stem}-{cfg.recipe}-{stamp}"
        if (run_dir / LAST).exists():
            raise MdprError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another "
                            "output DIR.")
        check_output_folder(run_dir, "the run directory")
        from mdpr.model.zoo import resolve_init

        choice = resolve_init(init, cfg.model, note=notes.append, verify=check_init)
        choice.apply(cfg.model)
        notes.append(choice.line)
        if choice.warning:
            notes.append(choice.warning)
    _apply_schedule_options(cfg, epochs, eval_period, checkpoint_period)
    return RunPlan(cfg, run_dir, resume is not None, notes)


def _apply_schedule_options(cfg: Config, epochs: Optional[int], eval_period: Optional[int],
                            checkpoint_period: Optional[int]) -> None:
    if epochs is not None:
        if epochs < 1:
            raise MdprError(f"The number of epochs (epochs) must be at least 1, got {epochs}.", keys=["epochs"])
        cfg.solver.max_epochs = epochs
    if eval_period is not None:
        cfg.train.eval_period = eval_period
    if checkpoint_period is not None:
        cfg.train.checkpoint_period = checkpoint_period
    cfg.validate()


#: Settings a resumed run may change. Their meaning: the run continues from its checkpoint as if it had been
#: planned with the new values (the learning rate at every later step follows the schedule of the new
#: solver.base_lr / solver.max_epochs / solver.eta_min_lr); the change is recorded in config.yaml, in log.txt
#: and as a ``resume`` record in metrics.jsonl. Everything else (architecture, input, data, batch composition,
#: optimizer and the rest of the schedule) is fixed by the checkpoint.
RESUMABLE_KEYS = (
    "solver.base_lr", "solver.max_epochs", "solver.eta_min_lr", "solver.grad_clip",
    "train.eval_period", "train.checkpoint_period", "train.log_period", "train.eval_flip",
    "dataloader.num_workers", "dataloader.test_batch_size",
)


def _flat(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def resume_changes(saved: Config, cfg: Config, run_dir: Path) -> List[str]:
    """The settings ``cfg`` changes against the run's ``saved`` config, as notes; one sentence naming the key
    when a setting outside :data:`RESUMABLE_KEYS` changes."""
    before, after = _flat(saved.to_dict()), _flat(cfg.to_dict())
    changed = [k for k in after if before.get(k) != after[k]]
    for key in changed:
        if key not in RESUMABLE_KEYS:
            shown = "epochs" if key == "solver.max_epochs" else key
            raise MdprError(
                f"{shown} cannot change when resuming {run_dir} (the run has {before.get(key)!r}, asked "
                f"{after[key]!r}); a resumed run may change only {', '.join(RESUMABLE_KEYS)}; start a new run "
                "(output DIR) for other settings.", keys=["output DIR"])
    return [f"resuming with {key} = {after[key]!r} (the run had {before.get(key)!r}); the schedule follows the new "
            "value from the checkpoint on" for key in changed]


def evaluate_during_training(model: Any, cfg: Config, manifest: Any,
                             progress: Callable[[str, int, int], None]) -> Dict[str, Any]:
    """Training's periodic evaluation: the one evaluation pipeline on the model in memory, embedded as
    ``mdpr evaluate --weights model.pt`` embeds the saved model (test batch size, flip setting)."""
    from mdpr.inference import FeatureExtractor
    from mdpr.workflows.evaluate import evaluate_extractor

    if not manifest.query or not manifest.gallery:
        raise MdprError(f"Dataset '{manifest.name}' has no query/gallery split to evaluate on; set "
                        "train.eval_period=-1.")
    extractor = FeatureExtractor.from_model(model, cfg, device=None, num_workers=cfg.dataloader.num_workers)
    result = evaluate_extractor(
        extractor, manifest, progress=lambda stage, done, total: progress(stage.split(":")[-1], done, total))
    metrics = result.to_dict()
    del metrics["cmc"], metrics["protocol"]  # per-epoch records keep the scalars
    return metrics


def training_hooks() -> List[HookBase]:
    """The hooks of ``mdpr train``: metrics files, TensorBoard, evaluation, checkpoints."""
    return default_hooks(evaluate_during_training)


def _train_process(ctx: Any, request: TrainRequest, progress: Optional[ProgressFn]) -> Optional[Dict[str, Any]]:
    """One process of a run (module-level: spawned workers unpickle it)."""
    return run_training(ctx, request, progress, training_hooks())


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run; ``run_dir`` is the directory ``--resume`` continues."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


@dataclass
class TrainOptions:
    """Everything ``mdpr train`` accepts (see :func:`plan_run` for the planning rules)."""

    dataset: Optional[str] = None
    recipe: Optional[str] = None
    overrides: List[str] = field(default_factory=list)
    output: Optional[Path] = None
    resume: Optional[Path] = None
    gpus: Optional[int] = None
    procs: Optional[int] = None
    epochs: Optional[int] = None
    eval_period: Optional[int] = None
    checkpoint_period: Optional[int] = None
    device: str = "auto"
    init: Optional[str] = None  #: backbone initialisation: a named one (imagenet, lup_moco_r101), a file or "none"
    workers: Optional[int] = None  #: data-loader workers (= ``dataloader.num_workers``)
    threads: Optional[int] = None  #: torch CPU threads of a one-process run
    weights: Optional[Path] = None  #: initialise from an mdpr / official MDPR checkpoint (= ``model.pretrained``)


@dataclass
class TrainPlanReport:
    """``mdpr train --dry-run``: everything resolved, nothing trained (keys documented in docs/training.md)."""

    values: Dict[str, Any]

    def to_json(self) -> Dict[str, Any]:
        return dict(self.values)


def describe_plan(plan: RunPlan, processes: int, device: str) -> TrainPlanReport:
    """The numbers of a planned run: batch layout, iterations, warmup and learning rates (no devices needed)."""
    from mdpr.data import load_dataset
    from mdpr.data.sampler import layout_for
    from mdpr.engine.solver import LRSchedule

    cfg = plan.config
    manifest = load_dataset(cfg.dataset)
    layout = layout_for(cfg, processes)
    per_epoch = layout.updates_per_epoch(len(manifest.train), cfg.dataloader.steps_per_epoch)
    epochs = cfg.solver.max_epochs
    total = per_epoch * epochs
    schedule = LRSchedule(cfg.solver, per_epoch)
    warmup = min(int(cfg.solver.warmup_iters), total)

    def lr_at(iteration: int) -> float:
        return schedule.lr(cfg.solver.base_lr, iteration, iteration // per_epoch)

    stats = manifest.stats()
    return TrainPlanReport({
        "dataset": cfg.dataset, "dataset_kind": manifest.dataset,
        "train_images": stats.get("train_images"), "train_identities": stats.get("train_ids"),
        "recipe": cfg.recipe, "run_dir": str(plan.run_dir), "resume": plan.resume,
        "init": cfg.model.pretrained or "none", "init_name": cfg.model.init,
        "device": device,
        **layout.as_dict(), "num_instances": layout.num_instances,
        "iterations_per_epoch": per_epoch, "epochs": epochs, "total_iterations": total,
        "warmup_iterations": warmup, "warmup_share": round(warmup / total, 4) if total else 0.0,
        "lr_first": lr_at(0), "lr_warmup_end": lr_at(min(warmup, total - 1)), "lr_last": lr_at(total - 1),
        "notes": list(plan.notes),
    })


def plan_only(options: TrainOptions) -> TrainPlanReport:
    """``--dry-run``: resolve and describe the run without training and without needing its devices."""
    if options.gpus is not None and options.procs is not None:
        raise MdprError("Use either gpus N (one process per GPU) or procs N (CPU processes), not both.",
                        keys=["gpus N", "procs N"])
    processes = options.gpus or options.procs or 1
    if processes < 1:
        raise MdprError(f"The number of processes must be at least 1, got {processes}.")
    device = "cuda" if options.gpus else ("cpu" if options.procs else options.device)
    overrides = list(options.overrides)
    if options.weights is not None:
        overrides.append(f"model.pretrained={options.weights}")
    plan = plan_run(options.dataset, options.recipe, overrides, options.output, options.resume, options.epochs,
                    options.eval_period, options.checkpoint_period, init=options.init)
    return describe_plan(plan, processes, device)


@dataclass
class TrainResult:
    """What a finished run left behind (``summary`` is ``summary.json``)."""

    run_dir: Path
    summary: Dict[str, Any]
    notes: List[str]


def train_run(options: TrainOptions, progress: Optional[ProgressFn] = None,
              note: Optional[Callable[[str], None]] = None) -> Optional[TrainResult]:
    """Plan, launch and run a training; returns the result on the main process (None on other torchrun ranks).

    ``progress`` receives the trainer's event dicts (``event``: start, step, epoch, eval_start, eval_progress,
    eval, checkpoint, warning, done) on the main process; ``note`` one-line remarks about the plan.
    """
    from mdpr.engine.distributed import plan_launch, share_from_main

    launch = plan_launch(options.gpus, options.procs, options.device)
    from mdpr.data.records import mdpr_home

    check_output_folder(mdpr_home(), "MDPR_HOME")  # the run is recorded there when it ends
    overrides = list(options.overrides)
    if options.workers is not None:
        overrides.append(f"dataloader.num_workers={options.workers}")
    if options.weights is not None:
        if not Path(options.weights).is_file():
            raise MdprError(f"The weights file {options.weights} does not exist; give a checkpoint file (mdpr, official MDPR "
                            "or a backbone).")
        overrides.append(f"model.pretrained={options.weights}")
    held: List[ExclusiveLock] = []

    def plan_and_lock() -> RunPlan:
        planned = plan_run(options.dataset, options.recipe, overrides, options.output, options.resume,
                           options.epochs, options.eval_period, options.checkpoint_period, init=options.init)
        held.append(lock_run_dir(planned))
        return planned

    plan: RunPlan = share_from_main(launch, plan_and_lock)
    try:
        # only when asked: an automatic choice could differ between a run and its resumption (bit-exact resume)
        if launch.mode == "single" and options.threads is not None:
            from mdpr.runtime import cpu_threads

            with cpu_threads(options.threads):
                return _train_planned(launch, plan, progress, note)
        return _train_planned(launch, plan, progress, note)
    finally:
        for lock in held:
            lock.release()


def lock_run_dir(plan: RunPlan) -> ExclusiveLock:
    """Take the run directory's lock (only the main process holds it): one training per run directory.

    A second ``mdpr train`` into the same directory (a new run or a resume) is refused while the first runs;
    the OS releases the lock when its holder dies, so a killed run is resumable at once.
    """
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    lock = ExclusiveLock(plan.run_dir / RUN_LOCK)
    if not lock.acquire():
        raise MdprError(f"Another training is writing into {plan.run_dir} right now; wait for it to end, or choose "
                        "another output DIR.", keys=["output DIR"])
    if not plan.resume and (plan.run_dir / LAST).exists():  # a run that ended between planning and locking
        lock.release()
        raise MdprError(f"{plan.run_dir} already holds a run; continue it with --resume {plan.run_dir} or choose "
                        "another output DIR.", keys=["output DIR"])
    return lock


def _train_planned(launch: Any, plan: RunPlan, progress: Optional[ProgressFn],
                   note: Optional[Callable[[str], None]]) -> Optional[TrainResult]:
    from mdpr.engine.distributed import run_planned

    if launch.is_main and note is not None:
        for line in plan.notes:
            note(line)
    request = TrainRequest(config=plan.config.to_dict(), run_dir=str(plan.run_dir), resume=plan.resume,
                           device=launch.device)
    try:
        summary = run_planned(launch, _train_process, (request, progress))
    except KeyboardInterrupt:
        raise TrainInterrupted(plan.run_dir) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # "run the same command again" would start a new run when no output folder was named: say how to continue
        where = f" {exc.filename}" if exc.filename is not None else ""
        raise MdprError(f"Cannot write{where}: {describe_os_error(exc)}; free some space, then continue the run "
                        f"with --resume {plan.run_dir} (the last checkpoint is kept).") from None
    if not launch.is_main:
        return None
    if summary is None:  # spawned workers: rank 0 wrote the summary
        summary = json.loads((plan.run_dir / SUMMARY).read_text())
    from mdpr.workflows.history import record_run

    record_run(summary, note)
    return TrainResult(plan.run_dir, summary, plan.notes)
