"""Running an exported file: ONNX Runtime, OpenVINO or TorchScript behind one small interface.

A runner takes float32 (N, 3, H, W) images in the file's own input convention and returns float32 (N, D)
features. Used by the parity check, by INT8 calibration checks and by :class:`mdpr.FeatureExtractor`'s
``onnxruntime`` / ``openvino`` backends.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import numpy as np

from mdpr.errors import MdprError
from mdpr.export.extras import require_onnxruntime, require_openvino
from mdpr.export.metadata import ExportMetadata, detect_format, openvino_xml, read_export_metadata
from mdpr.runtime import choose_cpu_threads, signal_stack_kept

PathLike = Union[str, "os.PathLike[str]"]

#: backends that run an exported file, and the formats each reads
FILE_BACKENDS = {"onnxruntime": ("onnx",), "openvino": ("onnx", "openvino"), "torchscript": ("torchscript",)}


class Runner(ABC):
    """An exported model ready to run (see the module docstring)."""

    backend: str = ""

    def __init__(self, path: Path, metadata: ExportMetadata, threads: int) -> None:
        self.path = path
        self.metadata = metadata
        self.threads = threads

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 in the file's input convention -> (N, D) float32."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        h, w = self.metadata.input_size
        if x.ndim != 4 or x.shape[1:] != (3, int(h), int(w)):
            raise MdprError(f"{self.path} takes images shaped (N, 3, {h}, {w}), got {tuple(x.shape)}.")
        if x.shape[0] == 0:
            return np.zeros((0, self.metadata.feature_dim), dtype=np.float32)
        return np.asarray(self._run(x), dtype=np.float32)

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray:
        """Features of a checked, non-empty batch (each runtime's own call)."""


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: Path, metadata: ExportMetadata, threads: int) -> None:
        super().__init__(path, metadata, threads)
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise MdprError(f"onnxruntime cannot load {path} ({str(exc).splitlines()[0][:200]}); export it again.") from None
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: x})[0]


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: Path, metadata: ExportMetadata, threads: int) -> None:
        super().__init__(path, metadata, threads)
        ov = require_openvino()
        source = path if path.suffix.lower() == ".onnx" else openvino_xml(path)
        config = {
            # Without this hint OpenVINO runs fp32 graphs in bfloat16 on CPUs that have it (AMX, AVX512-BF16),
            # which costs the feature two to three significant digits. INT8 layers stay INT8.
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
        }
        try:
            with signal_stack_kept():  # OpenVINO swaps the thread's signal stack (see signal_stack_kept)
                self.compiled = ov.Core().compile_model(str(source), "CPU", config)
        except Exception as exc:  # openvino raises RuntimeError subclasses with long messages
            raise MdprError(f"OpenVINO cannot load {path} ({str(exc).splitlines()[0][:200]}); export it again.") from None
        self.request = self.compiled.create_infer_request()
        self._output = self.compiled.output(0)

    def _run(self, x: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: x})
        return np.array(result[self._output], dtype=np.float32, copy=True)  # the request reuses its buffer


class TorchScriptRunner(Runner):
    backend = "torchscript"

    def __init__(self, path: Path, metadata: ExportMetadata, threads: int) -> None:
        super().__init__(path, metadata, threads)
        from mdpr.export.torchscript import load_torchscript

        self.module = load_torchscript(path)

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).float().numpy()


_RUNNERS: Dict[str, Callable[..., Runner]] = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner, "torchscript": TorchScriptRunner}


def default_backend(path: PathLike) -> str:
    """The backend that runs a file of this format by default."""
    return {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torchscript"}[detect_format(path)]


def open_runner(path: PathLike, backend: Optional[str] = None, threads: Optional[int] = None,
                metadata: Optional[ExportMetadata] = None) -> Runner:
    """A :class:`Runner` for the exported file ``path`` (``backend`` None: the format's own runtime).

    ``threads`` None follows :func:`mdpr.runtime.choose_cpu_threads` (one per core, one on a busy machine).
    """
    p = Path(path).expanduser()
    name = backend or default_backend(p)
    if name not in FILE_BACKENDS:
        raise MdprError(f"Unknown backend '{name}' (backend); use one of {', '.join(FILE_BACKENDS)}.")
    fmt = detect_format(p)
    if fmt not in FILE_BACKENDS[name]:
        raise MdprError(f"The {name} backend cannot run {p} (a {fmt} model); use backend {default_backend(p)}.")
    meta = metadata or read_export_metadata(p)
    n, _ = choose_cpu_threads(threads)
    return _RUNNERS[name](p, meta, int(n))

