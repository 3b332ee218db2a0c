"""``mdpr export``: the eval model as ONNX, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from mdpr.cli.app import command, console, print_json
from mdpr.errors import MdprError


@command(
    "export",
    help="Export a checkpoint's eval model to ONNX (dynamic batch) and check it against PyTorch.",
    epilog=(
        "Examples:\n\n"
        "  mdpr export --weights runs/demo/last.pt --onnx mdpr.onnx\n\n"
        "  mdpr export --weights DukeMTMC-reID.pth --onnx duke.onnx --batch-sizes 1,8,64\n\n"
        "Needs the optional extra: pip install \"mdpr[onnx]\"."
    ),
)
def export(
    weights: Path = typer.Option(..., "--weights", "-w", help="Checkpoint (mdpr or official MDPR / fast-reid)."),
    onnx: Path = typer.Option(..., "--onnx", help="Where to write the ONNX model."),
    batch_sizes: str = typer.Option("1,7,32", "--batch-sizes", help="Comma-separated batch sizes for the parity check."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Export the eval model to ONNX and compare ONNX Runtime with PyTorch on several batch sizes."""
    from mdpr.export import PARITY_RTOL, export_onnx

    sizes = _parse_sizes(batch_sizes)
    if not weights.is_file():
        raise MdprError(f"Checkpoint {weights} does not exist; pass the path of a .pt/.pth file with --weights.")
    if onnx.exists() and onnx.is_dir():
        raise MdprError(f"--onnx {onnx} is a folder; pass a file name such as {onnx / 'mdpr.onnx'}.")
    with console.status("Exporting and checking..."):
        report = export_onnx(weights, onnx, batch_sizes=sizes, opset=opset)
    if as_json:
        print_json({
            "onnx": str(report.path), "input_size": list(report.input_size), "feature_dim": report.feature_dim,
            "opset": report.opset, "passed": report.passed,
            "max_abs_diff": {str(k): v for k, v in report.max_abs_diff.items()},
            "max_rel_diff": {str(k): v for k, v in report.max_rel_diff.items()},
        })
    else:
        table = Table(title=f"ONNX parity: {report.path}")
        table.add_column("batch size", justify="right")
        table.add_column("max |onnx - torch|", justify="right")
        table.add_column("relative", justify="right")
        for n in report.max_abs_diff:
            table.add_row(str(n), f"{report.max_abs_diff[n]:.3g}", f"{report.max_rel_diff[n]:.3g}")
        console.print(table)
        h, w = report.input_size
        console.print(f"input: images float32 (N, 3, {h}, {w}), RGB 0..255; output: features (N, {report.feature_dim})")
    if not report.passed:
        raise MdprError(
            f"The exported model {report.path} differs from PyTorch by more than {PARITY_RTOL:g} (relative); "
            "do not use it, and report the problem with the printed differences."
        )


def _parse_sizes(text: str) -> List[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise MdprError(f"--batch-sizes '{text}' must be positive integers separated by commas, e.g. 1,7,32.")
    return sizes
