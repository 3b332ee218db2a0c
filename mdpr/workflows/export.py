"""``mdpr export``: a checkpoint's eval model as ONNX / OpenVINO / TorchScript (or for boxmot), parity-checked;
optionally quantised to INT8 with its accuracy cost measured on a labelled dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mdpr.errors import MdprError
from mdpr.evaluation.pipeline import Note, Progress
from mdpr.export import ExportReport, export_model

__all__ = ["ExportRequest", "ExportResult", "run_export"]


@dataclass
class ExportRequest:
    weights: Path
    output: Path
    format: Optional[str] = None  #: onnx (default), openvino, torchscript
    input_convention: Optional[str] = None  #: raw255 (default), imagenet (the boxmot target's)
    target: Optional[str] = None  #: "boxmot"
    batch_sizes: Sequence[int] = (1, 7, 32)
    opset: int = 17


@dataclass
class ExportResult:
    report: ExportReport
    notes: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.report.passed

    def to_dict(self) -> Dict[str, Any]:
        out = self.report.to_dict()
        if self.report.format == "onnx":
            out["onnx"] = str(self.report.path)  # the key of the first ONNX export's --json
        return out


def run_export(request: ExportRequest, progress: Optional[Progress] = None, note: Optional[Note] = None) -> ExportResult:
    """Export what ``request`` names and check it; a failed parity check is reported in the result (``passed``)."""
    weights = Path(request.weights).expanduser()
    if not weights.is_file():
        raise MdprError(f"Checkpoint {weights} does not exist; pass the path of a .pt/.pth file (weights).")
    report = export_model(
        weights, request.output, format=request.format, input_convention=request.input_convention,
        target=request.target, batch_sizes=request.batch_sizes, opset=request.opset, progress=progress,
    )
    for text in report.notes:
        if note is not None:
            note(text)
    return ExportResult(report, list(report.notes))
