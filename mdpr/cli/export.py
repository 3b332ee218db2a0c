"""``mdpr export``: the eval model as ONNX / OpenVINO / TorchScript, or for boxmot, checked against PyTorch."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from mdpr.cli.app import DEVICE_HELP, THREADS_HELP, command, console, err_console, print_json
from mdpr.cli.progress import StageProgress
from mdpr.errors import MdprError


class Format(str, Enum):
    onnx = "onnx"
    openvino = "openvino"
    torchscript = "torchscript"


class InputConvention(str, Enum):
    raw255 = "raw255"
    imagenet = "imagenet"


class Target(str, Enum):
    boxmot = "boxmot"


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"


#: Library argument names -> this command's flags, for error messages.
_FLAGS = {"(weights)": "(--weights)", "batch_sizes": "--batch-sizes", "(format)": "(--format)",
          "(target)": "(--target)", "input_convention": "--input", "(dataset)": "(--dataset)",
          "(calibrate)": "(--calibrate)", "max_map_drop": "--max-map-drop", "calibration_images": "--calibration-images",
          "(method)": "(--calibration-method)", "pass force": "pass --force", "or force": "or --force",
          "add int8": "add --int8", "calibrate and dataset apply": "--calibrate and --dataset apply"}

LABELS = {"onnx": "ONNX", "openvino": "OpenVINO", "torchscript": "TorchScript"}
BACKEND_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino", "torchscript": "torchscript"}


@command(
    "export",
    flags=_FLAGS,
    help="Export a checkpoint's eval model (ONNX, OpenVINO, TorchScript, or for the boxmot tracker) and check it "
         "against PyTorch.",
    epilog=(
        "Examples:\n\n"
        "  mdpr export --weights runs/demo/model.pt --format onnx --output mdpr.onnx\n\n"
        "  mdpr export --weights model.pt --target boxmot --output mdpr_reid.onnx\n\n"
        "  mdpr export --weights model.pt --format openvino --output mdpr_openvino_model\n\n"
        "  mdpr export --weights DukeMTMC-reID.pth --onnx duke.onnx --batch-sizes 1,8,64\n\n"
        "Needs the optional extras: pip install \"mdpr[onnx]\" (and \"mdpr[openvino]\" for OpenVINO)."
    ),
)
def export(
    weights: Path = typer.Option(..., "--weights", "-w", help="Checkpoint (mdpr or official MDPR / fast-reid)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Where to write: a .onnx / .torchscript file or a *_openvino_model folder."),
    format: Optional[Format] = typer.Option(None, "--format", "-f", help="onnx (default), openvino or torchscript."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", hidden=True, help="Old name: same as --format onnx --output PATH."),
    input_convention: Optional[InputConvention] = typer.Option(
        None, "--input", help="Pixels the graph expects: raw255 (RGB 0..255, default) or imagenet (RGB 0..1, "
                              "ImageNet mean/std)."),
    target: Optional[Target] = typer.Option(
        None, "--target", help="boxmot: ONNX with boxmot's names and input, PATH.metadata.json, and an "
                               "_openvino_model folder when OpenVINO is installed."),
    batch_sizes: str = typer.Option("1,7,32", "--batch-sizes", help="Comma-separated batch sizes for the parity check."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    int8: bool = typer.Option(False, "--int8", help="Quantise to INT8 (onnxruntime static quantisation, QDQ)."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="INT8: folder of person crops for the ranges."),
    calibration_images: int = typer.Option(256, "--calibration-images", help="INT8: crops used from --calibrate."),
    calibration_method: CalibrationMethod = typer.Option(CalibrationMethod.minmax, "--calibration-method",
                                                         help="INT8: minmax, percentile or entropy ranges."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d",
                                          help="INT8: labelled dataset on which mAP and Rank-1 are compared."),
    max_map_drop: float = typer.Option(1.0, "--max-map-drop", help="INT8: mAP points the model may lose."),
    force: bool = typer.Option(False, "--force", help="INT8: write the model even if it loses more (or unmeasured)."),
    device: str = typer.Option("auto", "--device", help="INT8: where the fp32 reference is evaluated: " + DEVICE_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help=THREADS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, max=64, show_default=False,
                                          help="INT8: parallel image decoders of the evaluation, here processes (0: "
                                               "decode in the main process)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Export the eval model and compare the exported file with PyTorch on several batch sizes."""
    from mdpr.workflows.export import ExportRequest, run_export

    fmt = format.value if format is not None else None
    if onnx is not None:
        if output is not None and output != onnx:
            raise MdprError("--onnx PATH is short for --format onnx --output PATH; pass only one of --onnx and --output.")
        if fmt not in (None, "onnx"):
            raise MdprError(f"--onnx writes an ONNX file; it cannot be combined with --format {fmt}.")
        output, fmt = onnx, "onnx"
    if output is None:
        raise MdprError("Say where to write the model with --output PATH (or --onnx PATH).")
    request = ExportRequest(
        weights=weights, output=output, format=fmt,
        input_convention=input_convention.value if input_convention is not None else None,
        target=target.value if target is not None else None, batch_sizes=_parse_sizes(batch_sizes), opset=opset,
        int8=int8, calibrate=calibrate, calibration_images=calibration_images,
        calibration_method=calibration_method.value, dataset=dataset, max_map_drop=max_map_drop, force=force,
        device=device, threads=threads, workers=workers,
    )
    notes: List[str] = []
    with StageProgress(err_console) as progress:
        result = run_export(request, progress=progress, note=notes.append)
    if as_json:
        print_json(result.to_dict())
    else:
        _render(result.report)
        if result.int8 is not None:
            _render_int8(result.int8)
    for text in notes:
        err_console.print(text, highlight=False)
    if not result.passed:
        bad = [p for p in result.report.parity if not p.passed]
        raise MdprError(
            f"The exported model {result.report.path} differs from PyTorch beyond the limits ({bad[0].limits}) with "
            f"{bad[0].backend}; do not use it, and report the problem with the printed differences."
        )


def _render(report: Any) -> None:
    for parity in report.parity:
        label = LABELS[BACKEND_FORMAT[parity.backend]]
        table = Table(title=f"{label} parity ({parity.backend}, {parity.input_convention} input): {report.path}")
        table.add_column("batch size", justify="right")
        table.add_column(f"max |{label.lower()} - torch|", justify="right")
        table.add_column("relative", justify="right")
        table.add_column("min cosine", justify="right")
        for b in parity.batches:
            table.add_row(str(b.batch), f"{b.max_abs_diff:.3g}", f"{b.max_rel_diff:.3g}", f"{b.min_cosine:.7f}")
        console.print(table)
    h, w = report.input_size
    meta = report.metadata
    pixels = "RGB 0..255" if report.input_convention == "raw255" else "RGB 0..1, ImageNet mean/std"
    console.print(f"input: {meta.input_name} float32 (N, 3, {h}, {w}), {pixels}; output: {meta.output_name} "
                  f"(N, {report.feature_dim}); min cosine {report.min_cosine:.7f}, "
                  f"max |diff| {report.max_abs_diff_overall:.3g}", highlight=False)
    for path in report.written[1:]:
        console.print(f"also wrote {path}", highlight=False)


def _render_int8(summary: Any) -> None:
    line = (f"INT8: calibrated on {summary.calibration_images} crops ({summary.calibration_method}); "
            f"min cosine to fp32 {summary.min_cosine_to_fp32:.5f}")
    console.print(line, highlight=False)
    if summary.fp32 is None:
        console.print("accuracy not measured (no --dataset); written because of --force", highlight=False)
        return
    table = Table(title=f"INT8 accuracy on {summary.dataset} ({summary.backend})")
    for column in ("", "mAP", "Rank-1"):
        table.add_column(column, justify="right")
    table.add_row("fp32 (PyTorch)", f"{100 * summary.fp32.mAP:.2f}", f"{100 * summary.fp32.rank1:.2f}")
    table.add_row("INT8", f"{100 * summary.int8.mAP:.2f}", f"{100 * summary.int8.rank1:.2f}")
    table.add_row("change (points)", f"{-summary.map_drop:+.2f}", f"{-summary.rank1_drop:+.2f}")
    console.print(table)


def _parse_sizes(text: str) -> List[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise MdprError(f"--batch-sizes '{text}' must be positive integers separated by commas, e.g. 1,7,32.")
    return sizes
