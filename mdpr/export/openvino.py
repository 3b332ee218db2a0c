"""OpenVINO IR folders (``*_openvino_model/``) converted from an exported ONNX file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

from mdpr.export.extras import require_openvino
from mdpr.export.metadata import METADATA_KEY, ExportMetadata
from mdpr.fileio import fsync_files, replace_durably

PathLike = Union[str, "os.PathLike[str]"]


def openvino_folder_for(onnx_path: PathLike) -> Path:
    """``dir/model.onnx`` -> ``dir/model_openvino_model`` (the folder name boxmot recognises)."""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}_openvino_model")


def write_openvino(onnx_path: PathLike, folder: PathLike, meta: ExportMetadata) -> Path:
    """Convert ``onnx_path`` to an IR folder ``folder`` holding ``<name>.xml`` / ``.bin`` (fp32 weights, no
    fp16 compression) with ``meta`` in its rt_info; the folder appears complete or not at all."""
    ov = require_openvino("OpenVINO export")
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(meta.to_json(), [METADATA_KEY])
    name = target.name[: -len("_openvino_model")] if target.name.endswith("_openvino_model") else target.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        ov.save_model(model, str(tmp / f"{name}.xml"), compress_to_fp16=False)
        fsync_files(tmp.iterdir())
        replace_durably(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_openvino_rt_info(xml: PathLike) -> Optional[str]:
    """The mdpr metadata JSON stored in an IR's rt_info, or None."""
    ov = require_openvino("Reading an OpenVINO model")
    model = ov.Core().read_model(str(xml))
    if not model.has_rt_info([METADATA_KEY]):
        return None
    return str(model.get_rt_info([METADATA_KEY]).astype(str))
