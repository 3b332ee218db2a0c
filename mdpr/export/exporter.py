"""Exporting a checkpoint's eval model: ONNX, OpenVINO or TorchScript, for mdpr or for a tracker (boxmot).

Every export writes the file, then runs the parity check (:mod:`mdpr.export.parity`) through the target
runtime and the file's own input convention, and reports the smallest cosine and the largest difference.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from mdpr.config import Config
from mdpr.errors import MdprError
from mdpr.export.conventions import adapt, check_convention
from mdpr.export.extras import openvino_available, require_onnx
from mdpr.export.metadata import (
    FORMATS,
    ExportMetadata,
    boxmot_sidecar,
    boxmot_sidecar_path,
)
from mdpr.export.onnx import DEFAULT_OPSET, write_onnx
from mdpr.export.parity import ParityReport, check_parity
from mdpr.export.runtime import open_runner
from mdpr.fileio import atomic_write_json, check_output_file, check_output_folder

PathLike = Union[str, "os.PathLike[str]"]
#: ``progress(stage, done, total)``; stages: export, parity:<backend>, openvino
Progress = Callable[[str, int, int], None]

TARGETS = ("boxmot",)
#: input / output names: mdpr's own files keep the names of the first ONNX export; boxmot's contract names both
NAMES = {None: ("images", "features"), "boxmot": ("images", "output")}


@dataclass
class ExportReport:
    """What an export wrote and what its parity checks measured."""

    path: Path
    format: str
    input_convention: str
    input_size: Tuple[int, int]
    feature_dim: int
    opset: Optional[int]
    precision: str
    target: Optional[str]
    metadata: ExportMetadata
    parity: List[ParityReport] = field(default_factory=list)  #: one per written model and runtime
    written: List[Path] = field(default_factory=list)  #: every file or folder written
    notes: List[str] = field(default_factory=list)  #: what was skipped and why

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity)

    @property
    def min_cosine(self) -> float:
        return min((p.min_cosine for p in self.parity), default=1.0)

    @property
    def max_abs_diff_overall(self) -> float:
        return max((p.max_abs_diff for p in self.parity), default=0.0)

    # per-batch views of the first check (the shape of the first ONNX export's report)
    @property
    def max_abs_diff(self) -> Dict[int, float]:
        return {b.batch: b.max_abs_diff for b in self.parity[0].batches} if self.parity else {}

    @property
    def max_rel_diff(self) -> Dict[int, float]:
        return {b.batch: b.max_rel_diff for b in self.parity[0].batches} if self.parity else {}

    def to_dict(self) -> Dict[str, Any]:
        return {
            "path": str(self.path), "format": self.format, "target": self.target,
            "input_convention": self.input_convention, "input_size": list(self.input_size),
            "feature_dim": self.feature_dim, "opset": self.opset, "precision": self.precision,
            "passed": self.passed, "min_cosine": self.min_cosine, "largest_abs_diff": self.max_abs_diff_overall,
            "max_abs_diff": {str(k): v for k, v in self.max_abs_diff.items()},
            "max_rel_diff": {str(k): v for k, v in self.max_rel_diff.items()},
            "parity": [p.to_dict() for p in self.parity],
            "written": [str(p) for p in self.written], "notes": list(self.notes),
        }


def resolve_target(fmt: Optional[str], convention: Optional[str], target: Optional[str]) -> Tuple[str, str]:
    """``(format, input convention)`` after the defaults and the rules of ``target``; one sentence for a conflict."""
    if target is not None and target not in TARGETS:
        raise MdprError(f"Unknown export target '{target}' (target); the only target is boxmot.")
    if target == "boxmot":
        if fmt not in (None, "onnx"):
            raise MdprError(f"The boxmot target is an ONNX file (plus an OpenVINO folder beside it), not format '{fmt}'.")
        if convention not in (None, "imagenet"):
            raise MdprError("The boxmot target expects ImageNet-normalised input; leave input_convention unset or imagenet.")
        return "onnx", "imagenet"
    fmt = fmt or "onnx"
    if fmt not in FORMATS:
        raise MdprError(f"Unknown export format '{fmt}' (format); use one of {', '.join(FORMATS)}.")
    return fmt, check_convention(convention or "raw255")


def check_output_name(output: Path, fmt: str) -> None:
    """Output paths whose name tells the format (mdpr and boxmot pick the runtime from it)."""
    if fmt == "onnx" and output.suffix.lower() != ".onnx":
        raise MdprError(f"The ONNX output {output} must end in .onnx (runtimes choose the backend by suffix).")
    if fmt == "torchscript" and output.suffix.lower() not in (".torchscript", ".ts"):
        raise MdprError(f"The TorchScript output {output} must end in .torchscript.")
    if fmt == "openvino" and not output.name.endswith("_openvino_model"):
        raise MdprError(f"The OpenVINO output {output} must be a folder name ending in _openvino_model, "
                        f"e.g. {output.with_name(output.stem + '_openvino_model')}.")
    if fmt != "openvino" and output.is_dir():
        raise MdprError(f"The output {output} is a folder; pass a file name such as {output / ('mdpr.' + fmt)}.")
    if fmt == "openvino":
        check_output_folder(output, "the exported model")
    else:
        check_output_file(output, "the exported model")


def export_model(
    weights: Optional[PathLike],
    output: PathLike,
    *,
    format: Optional[str] = None,
    input_convention: Optional[str] = None,
    target: Optional[str] = None,
    batch_sizes: Sequence[int] = (1, 7, 32),
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    model: Optional[torch.nn.Module] = None,
    config: Optional[Config] = None,
    fingerprint: Optional[str] = None,
    progress: Optional[Progress] = None,
    companions: bool = True,
) -> ExportReport:
    """Export the eval model of ``weights`` (or of ``model`` + ``config``) and check it against PyTorch.

    ``format`` onnx (default) / openvino / torchscript; ``input_convention`` raw255 (default) / imagenet;
    ``target="boxmot"`` means an ONNX file with boxmot's names and ImageNet input, its
    ``PATH.metadata.json`` sidecar, and a ``*_openvino_model`` folder beside it when OpenVINO is installed.
    A failed parity check does not raise: look at :attr:`ExportReport.passed`. ``companions=False`` writes only
    the model file (no boxmot sidecar or OpenVINO folder; the INT8 path adds them to its own file).
    """
    fmt, convention = resolve_target(format, input_convention, target)
    if not batch_sizes or any(int(n) < 1 for n in batch_sizes):
        raise MdprError(f"Parity batch sizes (batch_sizes) must be positive integers, not {list(batch_sizes)}.")
    out = Path(output).expanduser()
    check_output_name(out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("onnx", "openvino"):
        require_onnx()
    if model is None or config is None:
        if weights is None:
            raise MdprError("Pass the checkpoint to export (weights), or both model and config.")
        model, config = load_checkpoint(Path(weights).expanduser())
    model = model.eval().float()
    if fingerprint is None:
        from mdpr.model import state_dict_fingerprint

        fingerprint = state_dict_fingerprint(model.state_dict())
    from mdpr import __version__

    input_name, output_name = NAMES[target]
    meta = ExportMetadata(
        format=fmt, input_convention=convention, input_name=input_name, output_name=output_name,
        input_size=(int(config.input.size_test[0]), int(config.input.size_test[1])),
        feature_dim=_feature_dim(model, config), fingerprint=fingerprint, model_config=config.to_dict(),
        precision="fp32", opset=int(opset) if fmt != "torchscript" else None, target=target, mdpr_version=__version__,
    )
    report = ExportReport(out, fmt, convention, meta.input_size, meta.feature_dim, meta.opset, "fp32", target, meta)
    module = adapt(model, convention)
    stage = stages(progress)

    stage("export")
    if fmt == "onnx":
        write_onnx(module, out, meta, seed)
        report.written.append(out)
        stage("parity:onnxruntime")
        report.parity.append(check_parity(model, open_runner(out, "onnxruntime", metadata=meta), batch_sizes, seed))
        if target == "boxmot" and companions:
            add_boxmot_companions(out, meta, model, batch_sizes, seed, report, stage)
    elif fmt == "openvino":
        from mdpr.export.openvino import write_openvino

        tmp = Path(tempfile.mkdtemp(prefix=".mdpr-export-", dir=out.parent))
        try:
            onnx_meta = ExportMetadata(**{**vars(meta), "format": "onnx"})
            write_onnx(module, tmp / "model.onnx", onnx_meta, seed)
            write_openvino(tmp / "model.onnx", out, meta)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        report.written.append(out)
        stage("parity:openvino")
        report.parity.append(check_parity(model, open_runner(out, "openvino", metadata=meta), batch_sizes, seed))
    else:
        from mdpr.export.torchscript import write_torchscript

        write_torchscript(module, out, meta, seed)
        report.written.append(out)
        stage("parity:torchscript")
        report.parity.append(check_parity(model, open_runner(out, "torchscript", metadata=meta), batch_sizes, seed))
    return report


def add_boxmot_companions(onnx_path: Path, meta: ExportMetadata, model: torch.nn.Module, batch_sizes: Sequence[int],
                          seed: int, report: ExportReport, stage: Callable[[str], None]) -> None:
    """The boxmot sidecar beside ``onnx_path`` and, when OpenVINO is installed, the parity-checked
    ``*_openvino_model`` folder converted from it."""
    sidecar = boxmot_sidecar_path(onnx_path)
    atomic_write_json(sidecar, boxmot_sidecar(meta))
    report.written.append(sidecar)
    if not openvino_available():
        report.notes.append('OpenVINO is not installed, so no _openvino_model folder was written '
                            '(pip install "mdpr[openvino]" to get one).')
        return
    from mdpr.export.openvino import openvino_folder_for, write_openvino

    stage("openvino")
    folder = openvino_folder_for(onnx_path)
    ov_meta = ExportMetadata(**{**vars(meta), "format": "openvino"})
    write_openvino(onnx_path, folder, ov_meta)
    # boxmot's metadata path for a folder artifact is a manifest inside it
    atomic_write_json(folder / "manifest.json", {**boxmot_sidecar(ov_meta), "format": "openvino"})
    report.written.append(folder)
    stage("parity:openvino")
    report.parity.append(check_parity(model, open_runner(folder, "openvino", metadata=ov_meta), batch_sizes, seed))


def _feature_dim(model: torch.nn.Module, config: Config) -> int:
    dim = getattr(model, "feature_dim", None)
    if dim is None:  # a model without the attribute: ask it
        with torch.inference_mode():
            dim = model(torch.zeros(1, 3, *(int(s) for s in config.input.size_test))).shape[1]
    return int(dim)


def stages(progress: Optional[Progress]) -> Callable[[str], None]:
    def stage(name: str) -> None:
        if progress is not None:
            progress(name, 0, 1)

    return stage


def load_checkpoint(path: Path) -> Tuple[torch.nn.Module, Config]:
    if not path.is_file():
        raise MdprError(f"Checkpoint {path} does not exist; pass the path of a .pt/.pth file (weights).")
    from mdpr.model import load_model

    return load_model(path, map_location="cpu")


def export_onnx(weights: PathLike, output: PathLike, batch_sizes: Sequence[int] = (1, 7, 32),
                opset: int = DEFAULT_OPSET, seed: int = 0) -> ExportReport:
    """mdpr's own ONNX export (``images`` 0..255 RGB in, ``features`` out), parity-checked with onnxruntime."""
    return export_model(weights, output, format="onnx", input_convention="raw255", batch_sizes=batch_sizes,
                        opset=opset, seed=seed)
