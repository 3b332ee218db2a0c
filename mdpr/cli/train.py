"""``mdpr train``: train MDPR on a prepared dataset (CPU, one GPU, N GPUs, torchrun; exact resume)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.markup import escape

from mdpr.cli.app import DEVICE_HELP, command, console, err_console, in_flag_terms, print_json

EXAMPLES = """
[bold]Examples[/]

  mdpr prepare demo mdpr-demo/data
  mdpr train --dataset demo --recipe demo-cpu --output runs/demo

  mdpr train --dataset dukemtmc --gpus 2 --set model.pretrained=weights/lup_moco_r101.pth
  mdpr train --dataset demo --recipe demo-cpu --epochs 2 --set model.fusion=false --set solver.base_lr=1e-3
  mdpr train --resume runs/demo
  torchrun --nnodes 2 --nproc-per-node 4 ... -m mdpr train --dataset market1501 --output /shared/runs/m
"""


class TrainReporter:
    """Renders the trainer's progress events with rich (picklable: spawned workers get a copy)."""

    def __init__(self, stderr: bool = False, refresh_s: float = 0.5) -> None:
        self.stderr = stderr
        self.refresh_s = refresh_s
        self._console: Any = None
        self._live: Any = None
        self._last = 0.0
        self._log_period = 20

    def __getstate__(self) -> Dict[str, Any]:
        return {"stderr": self.stderr, "refresh_s": self.refresh_s}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        TrainReporter.__init__(self, **state)

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = err_console if self.stderr else Console()
        return self._console

    def __call__(self, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_start(self, e: Dict[str, Any]) -> None:
        verb = "Resuming" if e["resumed"] else "Training"
        procs = f" x {e['world_size']} processes" if e["world_size"] > 1 else ""
        amp = ", AMP" if e["amp"] else ""
        self.console.print(
            f"[bold]{verb}[/] recipe [cyan]{e['recipe']}[/] on [cyan]{e['dataset']}[/] "
            f"({e['num_train_images']} images, {e['num_classes']} identities) on {e['device']}{procs}{amp}: "
            f"epochs {e['start_epoch'] + 1}..{e['epochs']}, {e['steps_per_epoch']} steps of {e['batch_size']} "
            f"images per epoch; run directory {e['run_dir']}",
            highlight=False,
        )
        self._log_period = max(1, e["steps_per_epoch"] // 4)
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(console=self.console, refresh_per_second=4, transient=True)
            self._live.start()

    def _render(self, e: Dict[str, Any]) -> str:
        return (f"[bold]epoch {e['epoch']}/{e['epochs']}[/] step {e['step']}/{e['steps_per_epoch']}  "
                f"loss [bold]{e['loss']:.4f}[/]  lr {e['lr']:.3g}  {e['images_per_s']:.1f} img/s  "
                f"ETA {_hms(e['eta_s'])}")

    def _on_step(self, e: Dict[str, Any]) -> None:
        now = time.monotonic()
        if self._live is not None:
            if now - self._last >= self.refresh_s or e["step"] == e["steps_per_epoch"]:
                self._live.update(self._render(e))
                self._last = now
        elif e["step"] % self._log_period == 0 or e["step"] == e["steps_per_epoch"]:
            # one short line; the 19 loss terms are in metrics.jsonl and log.txt
            self.console.print(
                f"epoch {e['epoch']}/{e['epochs']} step {e['step']}/{e['steps_per_epoch']} "
                f"loss {e['loss']:.4f} lr {e['lr']:.3g} {e['images_per_s']:.1f} img/s ETA {_hms(e['eta_s'])}",
                highlight=False,
                soft_wrap=True,
            )

    def _on_epoch(self, e: Dict[str, Any]) -> None:
        self.console.print(
            f"epoch {e['epoch']}: mean loss {e['loss']:.4f} in {e['seconds']:.1f} s"
            + (f", {e['replaced_images']} unreadable image(s) replaced" if e.get("replaced_images") else ""),
            highlight=False,
        )

    def _on_eval_start(self, e: Dict[str, Any]) -> None:
        if self._live is not None:
            self._live.update(f"evaluating after epoch {e['epoch']} ...")

    def _on_eval_progress(self, e: Dict[str, Any]) -> None:
        if self._live is not None:
            self._live.update(f"evaluating after epoch {e['epoch']}: {e['split']} {e['done']}/{e['total']} images")

    def _on_eval(self, e: Dict[str, Any]) -> None:
        self.console.print(
            f"[green]evaluation[/] after epoch {e['epoch']}: mAP {e['mAP']:.4f}  Rank-1 {e['rank1']:.4f}  "
            f"Rank-5 {e['rank5']:.4f}  mINP {e['mINP']:.4f}  ({e['num_queries']} queries, {e['seconds']:.1f} s)",
            highlight=False,
        )

    def _on_warning(self, e: Dict[str, Any]) -> None:
        self.console.print(f"[yellow]warning:[/] {e['message']}", highlight=False)

    def _on_done(self, e: Dict[str, Any]) -> None:
        self.stop()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _summary_table(summary: Dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"mdpr train: {summary.get('recipe')} on {summary.get('dataset')}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    fm = summary.get("final_metrics") or {}
    rows = [
        ("epochs / iterations", f"{summary.get('epochs')} / {summary.get('iterations')}"),
        ("training time", f"{summary.get('seconds', 0):.1f} s ({summary.get('images_per_s', 0):.1f} images/s)"),
        ("final loss (epoch mean)", f"{summary.get('final_losses', {}).get('loss', float('nan')):.4f}"),
        ("final learning rate", f"{summary.get('final_lr') or 0:.3g}"),
    ]
    if fm:
        rows += [
            ("mAP", f"{fm['mAP']:.4f}"),
            ("Rank-1 / 5 / 10", f"{fm['rank1']:.4f} / {fm['rank5']:.4f} / {fm['rank10']:.4f}"),
            ("mINP", f"{fm['mINP']:.4f}"),
        ]
    if summary.get("replaced_images"):
        rows.append(("unreadable images replaced", str(summary["replaced_images"])))
    rows += [
        ("checkpoint (resumable)", summary.get("checkpoint", "")),
        ("model for evaluate/extract", summary.get("model", "")),
        ("plot", summary.get("plot", "")),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


#: Library argument names -> this command's flags, for error messages.
_FLAGS = {"gpus N": "--gpus N", "procs N": "--procs N", "gpus": "--gpus", "procs": "--procs",
          "overrides key=value": "--set key=value",
          "output DIR": "--output DIR", "recipe NAME": "--recipe NAME", "dataset NAME": "--dataset NAME",
          "model.init": "--init"}


def _print_plan(plan: Dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"mdpr train --dry-run: {plan['recipe']} on {plan['dataset']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("dataset", f"{plan['dataset']} ({plan['train_images']} images, {plan['train_identities']} identities)"),
        ("backbone initialisation", str(plan["init"])),
        ("processes x accumulation steps", f"{plan['processes']} x {plan['accumulation_steps']} on {plan['device']}"),
        ("global batch", f"{plan['global_batch']} images"),
        ("per process step", f"{plan['images_per_process_step']} images = {plan['identities_per_process_step']} "
                             f"identities x {plan['num_instances']}"),
        ("iterations", f"{plan['iterations_per_epoch']} per epoch x {plan['epochs']} epochs = "
                       f"{plan['total_iterations']}"),
        ("warmup", f"{plan['warmup_iterations']} iterations ({100 * plan['warmup_share']:.0f}% of training)"),
        ("learning rate", f"{plan['lr_first']:.3g} first, {plan['lr_warmup_end']:.3g} at warmup end, "
                          f"{plan['lr_last']:.3g} last"),
        ("run directory", plan["run_dir"]),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for note in plan["notes"]:
        console.print(f"[yellow]note:[/] {escape(in_flag_terms(note, _FLAGS))}", highlight=False)


@command("train", flags=_FLAGS, help="Train an MDPR model on a prepared dataset (CPU, GPUs or torchrun; resumable).", epilog=EXAMPLES)
def train(
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", help="Registered dataset name (see mdpr prepare) or a manifest file."
    ),
    recipe: Optional[str] = typer.Option(
        None,
        "--recipe",
        "-r",
        help="market1501, dukemtmc, synergyreid, demo-cpu or a YAML file; default: the dataset's own recipe.",
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Run directory (default runs/<dataset>-<recipe>-<timestamp>)."
    ),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its last.pt."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Train on N GPUs of this machine (DDP over NCCL when N > 1)."),
    procs: Optional[int] = typer.Option(None, "--procs", help="Train with N CPU processes (DDP over gloo)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Number of epochs (solver.max_epochs)."),
    eval_period: Optional[int] = typer.Option(
        None, "--eval-period", help="Evaluate every N epochs (0: only at the end, -1: never)."
    ),
    checkpoint_period: Optional[int] = typer.Option(
        None, "--checkpoint-period", help="Also keep epoch_NNN.pt (e.g. epoch_010.pt) every N epochs (last.pt is written every epoch)."
    ),
    device: str = typer.Option("auto", "--device", help="One process on: " + DEVICE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, max=64, show_default=False,
                                          help="Parallel image decoders, here processes (0: decode in the main "
                                               "process; = --set dataloader.num_workers=N)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=1024, show_default=False,
                                          help="CPU threads of a one-process run (default: one per core)."),
    init: Optional[str] = typer.Option(
        None, "--init", show_default=False,
        help="Backbone initialisation: imagenet, lup_moco_r101 (the paper's), a weights FILE, or none (from "
             "scratch); default: the recipe's.",
    ),
    weights: Optional[Path] = typer.Option(
        None, "--weights", hidden=True,
        help="Start from a whole mdpr / official MDPR model (classifiers of another size skipped).",
    ),
    overrides: List[str] = typer.Option(
        [], "--set", help="Override any config field, e.g. --set solver.base_lr=1e-4 --set model.fusion=false."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the final summary as one JSON object (progress on stderr)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Resolve everything and print the plan (batch layout, "
                                                          "iterations, learning rates) without training."),
) -> None:
    """Train MDPR with the paper's recipe (or demo-cpu), writing checkpoints, metrics and a plot to a run directory."""
    from mdpr.runtime import prefer_passive_openmp_wait

    prefer_passive_openmp_wait()  # before the workflow imports torch
    from mdpr.workflows.train import TrainInterrupted, TrainOptions, train_run

    reporter = TrainReporter(stderr=json_out)
    out = err_console if json_out else console
    options = TrainOptions(
        dataset=dataset, recipe=recipe, overrides=list(overrides), output=output, resume=resume, gpus=gpus,
        procs=procs, epochs=epochs, eval_period=eval_period, checkpoint_period=checkpoint_period, device=device,
        init=init, weights=weights, workers=workers, threads=threads,
    )
    if dry_run:
        from mdpr.workflows.train import plan_only

        report = plan_only(options)
        if json_out:
            print_json(report.to_json())
        else:
            _print_plan(report.to_json())
        return
    try:
        result = train_run(options, progress=reporter,
                           note=lambda line: out.print(f"[yellow]note:[/] {escape(in_flag_terms(line, _FLAGS))}",
                                                       highlight=False))
    except TrainInterrupted as stop:
        reporter.stop()
        run_dir = stop.run_dir
        if (Path(run_dir) / "last.pt").is_file():
            err_console.print(f"[yellow]Interrupted.[/] Continue the run with: mdpr train --resume "
                              f"{shlex.quote(str(run_dir))}", highlight=False, soft_wrap=True)
        else:
            err_console.print("[yellow]Interrupted[/] before the run wrote its first checkpoint; start it again.",
                              highlight=False)
        raise typer.Exit(130) from None
    finally:
        reporter.stop()
    if result is None:  # another torchrun rank: rank 0 reports
        return
    if json_out:
        print_json(result.summary)
        return
    console.print(_summary_table(result.summary))
    model = shlex.quote(str(result.summary.get("model", "")))
    dataset = shlex.quote(str(result.summary.get("dataset", "")))
    console.print(f"Next: [bold]mdpr evaluate --dataset {dataset} --weights {model}[/], or index crops with "
                  f"[bold]mdpr extract --images DIR/[/] (uses this model).", highlight=False, soft_wrap=True)
