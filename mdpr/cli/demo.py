"""``mdpr demo``: the whole pipeline on built-in synthetic data, as the commands a user would type.

Every step is a real ``mdpr`` command run in this process, printed before it runs, so the closing summary
can list the exact commands that reproduce each step by hand.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Dict, List, Optional

import typer
from rich.rule import Rule
from rich.table import Table

from mdpr.cli.app import command, console
from mdpr.errors import MdprError

EXAMPLES = (
    "Examples:\n\n"
    "  mdpr demo\n\n"
    "  mdpr demo --out /tmp/mdpr-demo --device cuda\n\n"
    "  mdpr demo --out /tmp/tiny --ids 12 --images-per-id 6 --epochs 1 --set input.size_train=[64,32] "
    "--set input.size_test=[64,32]\n\n"
    "Re-running with the same --out reuses the data and continues an interrupted training run."
)


@command("demo", help="Run the whole pipeline on built-in synthetic data: prepare, train, evaluate, extract, query.",
         epilog=EXAMPLES)
def demo(
    out: Path = typer.Option(Path("mdpr-demo"), "--out", "-o", help="Folder for every artefact of the demo."),
    ids: int = typer.Option(100, "--ids", help="Identities in the synthetic dataset (half train, half test)."),
    images_per_id: int = typer.Option(16, "--images-per-id", help="Images per identity."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: the demo-cpu recipe's)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when present), cpu, cuda or cuda:N."),
    name: str = typer.Option("demo", "--name", help="Name the demo dataset is registered under."),
    overrides: List[str] = typer.Option([], "--set", help="Override a demo-cpu recipe field, e.g. --set solver.base_lr=5e-4."),
) -> None:
    """Prepare the demo data, train the demo-cpu recipe, evaluate, index the gallery and query one probe."""
    if out.exists() and not out.is_dir():
        raise MdprError(f"--out {out} is a file; pass a folder for the demo's artefacts.")
    started = time.perf_counter()
    data, run = out / "data", out / "run"
    weights = run / "model.pt"
    store, picture, metrics_file = out / "gallery.h5", out / "ranked.png", out / "metrics.json"

    prepare = ["prepare", "demo", str(data), "--name", name, "--ids", str(ids), "--images-per-id", str(images_per_id)]
    train = ["train", "--dataset", name, "--recipe", "demo-cpu", "--output", str(run), "--device", device]
    for item in overrides:
        train += ["--set", item]
    if epochs is not None:
        train += ["--epochs", str(epochs)]
    resuming = (run / "last.pt").is_file()
    if resuming:  # an interrupted (or finished) earlier demo: continue it rather than start over
        train_now = ["train", "--resume", str(run), "--device", device]
        if epochs is not None:
            train_now += ["--epochs", str(epochs)]
    else:
        train_now = train
        for stale in (store, picture, metrics_file):  # artefacts of an earlier model would not match the new one
            stale.unlink(missing_ok=True)
    evaluate = ["evaluate", "--dataset", name, "--weights", str(weights), "--device", device,
                "--save-metrics", str(metrics_file)]
    extract = ["extract", "--dataset", name, "--split", "gallery", "--weights", str(weights), "--output", str(store),
               "--device", device]

    _run_step(1, "Prepare the synthetic dataset", prepare)
    probe = _first_query_image(name)
    query = ["query", str(probe), "--gallery", str(store), "--weights", str(weights), "--top-k", "5",
             "--save", str(picture), "--device", device]
    _run_step(2, "Train (demo-cpu recipe)", train_now)
    _run_step(3, "Evaluate on query/gallery", evaluate)
    _run_step(4, "Index the gallery into an HDF5 feature store", extract)
    _run_step(5, "Query one probe", query)
    steps = [prepare, train, evaluate, extract, query]

    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    _print_summary(out, data, run, store, picture, metrics_file, metrics, steps, time.perf_counter() - started)


def _run_step(index: int, title: str, args: List[str]) -> None:
    from mdpr.cli.app import app

    console.print(Rule(f"[bold]Step {index}: {title}"))
    console.print(f"[dim]$ mdpr {shlex.join(args)}[/]", highlight=False)
    cli = typer.main.get_command(app)
    try:
        code = cli.main(args=args, prog_name="mdpr", standalone_mode=False)
    except typer.Exit as exc:  # click's Exit: raised by a failing step (its error is already printed)
        code = exc.exit_code
    if code:
        raise typer.Exit(code)


def _first_query_image(name: str) -> Path:
    from mdpr.data import load_dataset

    manifest = load_dataset(name)
    if not manifest.query:
        raise MdprError(f"The demo dataset '{name}' has no query images; re-run with more --ids.")
    return manifest.image_path(manifest.query[0])


def _print_summary(out: Path, data: Path, run: Path, store: Path, picture: Path, metrics_file: Path,
                   metrics: Dict, steps: List[List[str]], seconds: float) -> None:
    console.print(Rule("[bold]Demo finished"))
    if metrics:
        console.print(f"Rank-1 [bold]{metrics['rank1']:.3f}[/]   mAP [bold]{metrics['mAP']:.3f}[/]   "
                      f"mINP {metrics['mINP']:.3f}   ({metrics['num_valid_queries']} queries)", highlight=False)
    table = Table(title=f"Artefacts (in {seconds / 60:.1f} minutes)")
    table.add_column("what")
    table.add_column("where")
    for what, where in [("synthetic dataset (Market-1501 layout)", data),
                        ("training run: config, metrics.jsonl, training.png, checkpoints", run),
                        ("trained model", run / "model.pt"), ("evaluation metrics (JSON)", metrics_file),
                        ("gallery feature store (HDF5)", store), ("ranked list of the probe", picture)]:
        table.add_row(what, str(where))
    console.print(table)
    console.print("Each step by hand:")
    for args in steps:
        console.print(f"  mdpr {shlex.join(args)}", highlight=False, soft_wrap=True)
