"""``mdpr demo``: the whole pipeline on built-in synthetic data, as the commands a user would type.

Every step is a real ``mdpr`` command run in this process, printed before it runs, so the closing summary
can list the exact commands that reproduce each step by hand.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.rule import Rule
from rich.table import Table

from mdpr.cli.app import DEVICE_HELP, THREADS_HELP, command, console, print_json

EXAMPLES = (
    "Examples:\n\n"
    "  mdpr demo\n\n"
    "  mdpr demo --output /tmp/mdpr-demo --device cuda\n\n"
    "  mdpr demo --output /tmp/tiny --ids 12 --images-per-id 6 --epochs 1 --set input.size_train=[64,32] "
    "--set input.size_test=[64,32]\n\n"
    "Re-running with the same --output reuses the data and continues an interrupted training run."
)


@command("demo", resumable=True, flags={"out": "--output", "ids": "--ids"}, help="Run the whole pipeline on built-in synthetic data: prepare, train, evaluate, extract, query.",
         epilog=EXAMPLES)
def demo(
    output: Path = typer.Option(Path("mdpr-demo"), "--output", "-o", help="Folder for every artefact of the demo."),
    out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Old name of --output."),
    ids: int = typer.Option(100, "--ids", help="Identities in the synthetic dataset (half train, half test)."),
    images_per_id: int = typer.Option(16, "--images-per-id", help="Images per identity."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: the demo-cpu recipe's)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    name: str = typer.Option("demo", "--name", help="Name the demo dataset is registered under."),
    overrides: List[str] = typer.Option([], "--set", help="Override a demo-cpu recipe field, e.g. --set solver.base_lr=5e-4."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help="In every step: " + THREADS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, max=64, show_default=False,
                                          help="Parallel image decoders in every step (0: decode in the main process; "
                                               "default: each step's own)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (metrics, artefacts, commands) on "
                                                        "stdout; the steps' own output goes to stderr."),
) -> None:
    """Prepare the demo data, train the demo-cpu recipe, evaluate, index the gallery and query one probe."""
    from mdpr.workflows.demo import DemoRequest, run_demo

    request = DemoRequest(out=out or output, ids=ids, images_per_id=images_per_id, epochs=epochs, device=device,
                          name=name, overrides=list(overrides), threads=threads, workers=workers)
    if json_out:
        with contextlib.redirect_stdout(sys.stderr):
            result = run_demo(request, _run_step)
        print_json({"metrics": result.metrics, "artefacts": {what: str(where) for what, where in result.artefacts},
                    "commands": [["mdpr", *args] for args in result.commands], "seconds": round(result.seconds, 1)})
        return
    result = run_demo(request, _run_step)
    _print_summary(result)


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


def _print_summary(result: Any) -> None:
    console.print(Rule("[bold]Demo finished"))
    metrics = result.metrics
    if metrics:
        console.print(f"Rank-1 [bold]{metrics['rank1']:.3f}[/]   mAP [bold]{metrics['mAP']:.3f}[/]   "
                      f"mINP {metrics['mINP']:.3f}   ({metrics['num_valid_queries']} queries)", highlight=False)
    table = Table(title=f"Artefacts (in {result.seconds / 60:.1f} minutes)")
    table.add_column("what")
    table.add_column("where")
    for what, where in result.artefacts:
        table.add_row(what, str(where))
    console.print(table)
    console.print("Each step by hand:")
    for args in result.commands:
        console.print(f"  mdpr {shlex.join(args)}", highlight=False, soft_wrap=True)
