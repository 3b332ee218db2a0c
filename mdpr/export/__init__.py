"""Deployment: exported models (ONNX, OpenVINO, TorchScript; a boxmot target; INT8) and the runtimes that run them.

``export_model`` writes a file and checks it against PyTorch (:mod:`mdpr.export.parity`); ``open_runner`` runs
an exported file (:mod:`mdpr.export.runtime`); ``read_export_metadata`` tells what a file expects. The
optional runtimes are extras: ``pip install "mdpr[onnx]"`` / ``"mdpr[openvino]"``.
"""

from mdpr.export.conventions import INPUT_CONVENTIONS, from_raw255
from mdpr.export.exporter import TARGETS, ExportReport, export_model, export_onnx
from mdpr.export.metadata import FORMATS, ExportMetadata, boxmot_sidecar_path, read_export_metadata
from mdpr.export.parity import PARITY_MIN_COSINE, PARITY_RTOL, ParityReport, check_parity
from mdpr.export.runtime import FILE_BACKENDS, Runner, open_runner

__all__ = [
    "FILE_BACKENDS",
    "FORMATS",
    "INPUT_CONVENTIONS",
    "PARITY_MIN_COSINE",
    "PARITY_RTOL",
    "TARGETS",
    "ExportMetadata",
    "ExportReport",
    "ParityReport",
    "Runner",
    "boxmot_sidecar_path",
    "check_parity",
    "export_model",
    "export_onnx",
    "from_raw255",
    "open_runner",
    "read_export_metadata",
]
