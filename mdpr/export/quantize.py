"""INT8 post-training static quantisation of an exported fp32 ONNX file, calibrated on person crops.

onnxruntime's static quantiser writes a QDQ graph (per-channel int8 weights, uint8 activations with ranges
measured on the calibration crops). The same file runs in INT8 on onnxruntime and on OpenVINO, which reads QDQ
ONNX and executes the quantised layers in INT8 (docs/benchmarks.md compares the two); OpenVINO's own
post-training quantiser would need the NNCF package and writes only OpenVINO IR.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np

from mdpr.config import InputConfig
from mdpr.errors import MdprError
from mdpr.export.conventions import from_raw255
from mdpr.export.extras import require_onnx, require_onnxruntime
from mdpr.export.metadata import METADATA_KEY, ExportMetadata
from mdpr.export.onnx import set_metadata_props
from mdpr.fileio import atomic_path

PathLike = Union[str, "os.PathLike[str]"]

#: calibration crops used at most (evenly spaced over the sorted folder)
DEFAULT_CALIBRATION_IMAGES = 256
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: the layers quantised: where the arithmetic is (the BatchNorm necks and pooling stay fp32)
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantiser logs per-tensor remarks on the root logger; keep them off the user's screen."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def calibration_batch(folder: PathLike, input_cfg: InputConfig, limit: int = DEFAULT_CALIBRATION_IMAGES) -> np.ndarray:
    """Up to ``limit`` crops of ``folder`` (recursive), preprocessed as the checkpoint's test transform:
    float32 (N, 3, H, W) RGB 0..255. One sentence for a missing folder or one without readable images."""
    from mdpr.data.images import IMAGE_EXTENSIONS, ImageReadError, find_images, load_rgb
    from mdpr.data.transforms import build_test_transform

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MdprError(f"Calibration folder {root} does not exist or is not a folder (calibrate); pass a folder of "
                        "person crops like the ones the model will embed.")
    paths = find_images(root)
    if not paths:
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise MdprError(f"Calibration folder {root} holds no images ({exts}) (calibrate); pass a folder of person "
                        "crops like the ones the model will embed.")
    if int(limit) < 1:
        raise MdprError(f"The number of calibration images (calibration_images) must be at least 1, not {limit}.")
    if len(paths) > limit:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, int(limit))]
    transform = build_test_transform(input_cfg)
    crops = []
    for path in paths:
        try:
            crops.append(transform(load_rgb(path)).numpy())
        except (ImageReadError, OSError, ValueError):
            continue
    if not crops:
        raise MdprError(f"None of the {len(paths)} images in calibration folder {root} could be read (calibrate).")
    return np.stack(crops).astype(np.float32)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed crops, in batches."""

    def __init__(self, name: str, batches: List[np.ndarray]) -> None:
        self.name = name
        self._items: Iterator[np.ndarray] = iter(batches)
        self._batches = batches

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        batch = next(self._items, None)
        return None if batch is None else {self.name: batch}

    def rewind(self) -> None:
        self._items = iter(self._batches)


def quantize_onnx(fp32_onnx: PathLike, output: PathLike, meta: ExportMetadata, calibration: np.ndarray,
                  method: str = "minmax", batch_size: int = 16) -> ExportMetadata:
    """Write the INT8 (QDQ) version of ``fp32_onnx`` to ``output``, calibrated on ``calibration`` (raw255 crops,
    fed to the graph in its own input convention); returns the metadata it carries (precision ``int8``)."""
    onnx = require_onnx()
    require_onnxruntime("INT8 quantisation")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise MdprError(f"Unknown calibration method '{method}' (method); use one of {', '.join(CALIBRATION_METHODS)}.")
    x = from_raw255(calibration, meta.input_convention)
    batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    calibrate: Any = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                      "entropy": CalibrationMethod.Entropy}[method]
    int8_meta = ExportMetadata(**{**vars(meta), "precision": "int8", "format": "onnx"})
    out = Path(output)
    with tempfile.TemporaryDirectory(prefix=".mdpr-int8-", dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference and graph folding (BatchNorm into Conv) first, as onnxruntime recommends
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        with _quiet_root_logger():
            quantize_static(
                str(prepared), str(quantized), _Reader(meta.input_name, batches),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True, calibrate_method=calibrate, op_types_to_quantize=list(QUANTIZED_OPS),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        model = onnx.load(str(quantized))
        set_metadata_props(model, {METADATA_KEY: int8_meta.to_json()})
        with atomic_path(out) as dst:
            onnx.save(model, str(dst))
    return int8_meta
