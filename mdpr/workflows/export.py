"""``mdpr export``: a checkpoint's eval model as ONNX / OpenVINO / TorchScript (or for boxmot), parity-checked;
optionally quantised to INT8 with its accuracy cost measured on a labelled dataset."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mdpr.errors import MdprError
from mdpr.evaluation.pipeline import EvaluationResult, Note, Progress
from mdpr.export import ExportReport, export_model
from mdpr.fileio import replace_durably
from mdpr.runtime import cpu_threads

__all__ = ["ExportRequest", "ExportResult", "Int8Summary", "run_export"]


@dataclass
class ExportRequest:
    weights: Path
    output: Path
    format: Optional[str] = None  #: onnx (default), openvino, torchscript
    input_convention: Optional[str] = None  #: raw255 (default), imagenet (the boxmot target's)
    target: Optional[str] = None  #: "boxmot"
    batch_sizes: Sequence[int] = (1, 7, 32)
    opset: int = 17
    int8: bool = False
    calibrate: Optional[Path] = None  #: folder of person crops for the INT8 ranges
    calibration_images: int = 256
    calibration_method: str = "minmax"
    dataset: Optional[str] = None  #: labelled dataset on which the INT8 accuracy cost is measured
    max_map_drop: float = 1.0  #: mAP points the INT8 model may lose
    force: bool = False  #: write the INT8 model even when it loses more (or was not measured)
    device: str = "auto"  #: where the fp32 reference is evaluated
    threads: Optional[int] = None  #: CPU threads for the model (parity checks, INT8 evaluation)
    workers: Optional[int] = None  #: parallel image decoders of the INT8 evaluation


@dataclass
class Int8Summary:
    """The INT8 model's cost: metrics of PyTorch fp32 and of the INT8 file on the same dataset."""

    calibration_images: int
    calibration_method: str
    backend: str  #: the runtime that ran the INT8 file for the metrics
    min_cosine_to_fp32: float  #: smallest cosine of INT8 vs PyTorch fp32 features on the parity images
    dataset: Optional[str] = None
    fp32: Optional[EvaluationResult] = None
    int8: Optional[EvaluationResult] = None
    max_map_drop: float = 1.0
    forced: bool = False

    @property
    def map_drop(self) -> Optional[float]:
        """mAP points lost (positive: INT8 is worse)."""
        return None if self.fp32 is None or self.int8 is None else 100.0 * (self.fp32.mAP - self.int8.mAP)

    @property
    def rank1_drop(self) -> Optional[float]:
        return None if self.fp32 is None or self.int8 is None else 100.0 * (self.fp32.rank1 - self.int8.rank1)

    def to_dict(self) -> Dict[str, Any]:
        def metrics(r: Optional[EvaluationResult]) -> Optional[Dict[str, float]]:
            return None if r is None else {"mAP": r.mAP, "rank1": r.rank1}

        return {
            "calibration_images": self.calibration_images, "calibration_method": self.calibration_method,
            "backend": self.backend, "min_cosine_to_fp32": self.min_cosine_to_fp32, "dataset": self.dataset,
            "fp32": metrics(self.fp32), "int8": metrics(self.int8), "map_drop_points": self.map_drop,
            "rank1_drop_points": self.rank1_drop, "max_map_drop_points": self.max_map_drop, "forced": self.forced,
        }


@dataclass
class ExportResult:
    report: ExportReport
    int8: Optional[Int8Summary] = None
    notes: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.report.passed

    def to_dict(self) -> Dict[str, Any]:
        out = self.report.to_dict()
        if self.report.format == "onnx":
            out["onnx"] = str(self.report.path)  # the key of the first ONNX export's --json
        if self.int8 is not None:
            out["int8"] = self.int8.to_dict()
        return out


def run_export(request: ExportRequest, progress: Optional[Progress] = None, note: Optional[Note] = None) -> ExportResult:
    """Export what ``request`` names and check it; a failed parity check is reported in the result (``passed``).

    With ``int8``: the fp32 graph is quantised with ranges from ``calibrate``; PyTorch fp32 and the INT8 file
    are evaluated on ``dataset`` and the model is written only when it loses at most ``max_map_drop`` mAP
    points (or ``force``). Every input is checked before the slow work starts.
    """
    weights = Path(request.weights).expanduser()
    if not weights.is_file():
        raise MdprError(f"Checkpoint {weights} does not exist; pass the path of a .pt/.pth file (weights).")
    with cpu_threads(request.threads):
        return _run_export(request, weights, progress, note)


def _run_export(request: ExportRequest, weights: Path, progress: Optional[Progress],
                note: Optional[Note]) -> ExportResult:
    if request.int8:
        return _run_int8(request, weights, progress, note)
    if request.calibrate is not None or request.dataset is not None:
        raise MdprError("calibrate and dataset apply to INT8 exports; add int8, or leave them out.")
    report = export_model(
        weights, request.output, format=request.format, input_convention=request.input_convention,
        target=request.target, batch_sizes=request.batch_sizes, opset=request.opset, progress=progress,
    )
    for text in report.notes:
        if note is not None:
            note(text)
    return ExportResult(report, None, list(report.notes))


def _run_int8(request: ExportRequest, weights: Path, progress: Optional[Progress], note: Optional[Note]) -> ExportResult:
    from mdpr.export.exporter import add_boxmot_companions, check_output_name, load_checkpoint, resolve_target, stages
    from mdpr.export.metadata import ExportMetadata
    from mdpr.export.parity import check_parity
    from mdpr.export.quantize import calibration_batch, quantize_onnx
    from mdpr.export.runtime import open_runner

    fmt, convention = resolve_target(request.format, request.input_convention, request.target)
    if fmt == "torchscript":
        raise MdprError("INT8 exports are ONNX or OpenVINO models, not format torchscript.")
    out = Path(request.output).expanduser()
    check_output_name(out, fmt)
    if request.calibrate is None:
        raise MdprError("An INT8 export needs calibration crops (calibrate): a folder of person images like the ones "
                        "the model will embed.")
    if request.dataset is None and not request.force:
        raise MdprError("An INT8 export needs a labelled dataset (dataset) to measure its accuracy cost, or force to "
                        "write it unmeasured.")
    manifest = None
    if request.dataset is not None:
        from mdpr.data.records import load_dataset

        manifest = load_dataset(request.dataset)
    model, config = load_checkpoint(weights)
    model = model.eval().float()
    calibration = calibration_batch(request.calibrate, config.input, request.calibration_images)
    stage = stages(progress)
    backend = "openvino" if fmt == "openvino" else "onnxruntime"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mdpr-int8-", dir=out.parent))
    try:
        fp32 = export_model(None, tmp / "fp32.onnx", format="onnx", input_convention=convention, target=request.target,
                            batch_sizes=request.batch_sizes, opset=request.opset, model=model, config=config,
                            progress=progress, companions=False)
        if not fp32.passed:
            return ExportResult(fp32)
        stage("quantize")
        int8_meta = quantize_onnx(tmp / "fp32.onnx", tmp / "int8.onnx", fp32.metadata, calibration,
                                  request.calibration_method)
        stage(f"parity:{backend}")
        int8_check = check_parity(model, open_runner(tmp / "int8.onnx", backend, metadata=int8_meta),
                                  request.batch_sizes)
        summary = Int8Summary(len(calibration), request.calibration_method, backend, int8_check.min_cosine,
                              manifest.name if manifest is not None else None,
                              max_map_drop=float(request.max_map_drop), forced=request.force)
        if manifest is not None:
            _measure(summary, weights, tmp / "int8.onnx", backend, manifest, request, progress)
            drop = summary.map_drop
            assert drop is not None and summary.fp32 is not None and summary.int8 is not None
            if drop > request.max_map_drop and not request.force:
                raise MdprError(
                    f"The INT8 model loses {drop:.2f} mAP points on '{summary.dataset}' ({100 * summary.fp32.mAP:.2f} "
                    f"-> {100 * summary.int8.mAP:.2f}), more than the {request.max_map_drop:g} allowed (max_map_drop), "
                    f"so {out} was not written; calibrate on more crops of the target scene, or pass force to write it "
                    "anyway."
                )
        report = ExportReport(out, fmt, convention, fp32.input_size, fp32.feature_dim, fp32.opset, "int8",
                              request.target, int8_meta, parity=[fp32.parity[0], int8_check])
        if fmt == "onnx":
            replace_durably(tmp / "int8.onnx", out)
            report.written.append(out)
            if request.target == "boxmot":
                add_boxmot_companions(out, int8_meta, model, request.batch_sizes, 0, report, stage)
        else:
            from mdpr.export.openvino import write_openvino

            stage("openvino")
            ov_meta = ExportMetadata(**{**vars(int8_meta), "format": "openvino"})
            write_openvino(tmp / "int8.onnx", out, ov_meta)
            report.metadata = ov_meta
            report.written.append(out)
            report.parity[1] = check_parity(model, open_runner(out, "openvino", metadata=ov_meta), request.batch_sizes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for text in report.notes:
        if note is not None:
            note(text)
    return ExportResult(report, summary, list(report.notes))


def _measure(summary: Int8Summary, weights: Path, int8_file: Path, backend: str, manifest: Any,
             request: ExportRequest, progress: Optional[Progress]) -> None:
    """Metrics of PyTorch fp32 and of the INT8 file on ``manifest``, through the one evaluation pipeline."""
    from mdpr.inference import FeatureExtractor
    from mdpr.workflows.evaluate import evaluate_extractor

    def staged(name: str) -> Optional[Progress]:
        if progress is None:
            return None
        return lambda stage, done, total: progress(f"{name}:{stage}", done, total)

    fp32 = FeatureExtractor(weights, device=request.device, num_workers=request.workers, threads=request.threads)
    summary.fp32 = evaluate_extractor(fp32, manifest, progress=staged("fp32"))
    int8 = FeatureExtractor(int8_file, backend=backend, num_workers=request.workers, threads=request.threads)
    summary.int8 = evaluate_extractor(int8, manifest, progress=staged("int8"))
