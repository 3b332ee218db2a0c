"""Writing an ONNX graph of the eval model (dynamic batch) with mdpr's metadata inside."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, Union

import torch
from torch import nn

from mdpr.export.extras import require_onnx
from mdpr.export.metadata import METADATA_KEY, ExportMetadata
from mdpr.fileio import atomic_path

PathLike = Union[str, "os.PathLike[str]"]

#: opset of every export: onnxruntime >= 1.16 and boxmot's onnxruntime (>= 1.18) run it, OpenVINO reads it
DEFAULT_OPSET = 17


def write_onnx(module: nn.Module, output: PathLike, meta: ExportMetadata, seed: int = 0) -> Path:
    """Export ``module`` (eval mode, input (N, 3, H, W) float32) to ``output`` with a dynamic batch named ``batch``.

    The file is written to a temporary path and renamed into place only when complete.
    """
    onnx = require_onnx()
    out = Path(output)
    height, width = meta.input_size
    gen = torch.Generator().manual_seed(seed)
    example = torch.rand(2, 3, int(height), int(width), generator=gen)
    if meta.input_convention == "raw255":
        example = example * 255
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            # the TorchScript-based exporter is deprecated upstream but needs no extra package (onnxscript)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                input_names=[meta.input_name],
                output_names=[meta.output_name],
                dynamic_axes={meta.input_name: {0: "batch"}, meta.output_name: {0: "batch"}},
                opset_version=int(meta.opset or DEFAULT_OPSET),
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        set_metadata_props(model, {METADATA_KEY: meta.to_json()})
        onnx.save(model, str(tmp))
    return out


def set_metadata_props(model: object, props: Dict[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of a loaded ``onnx.ModelProto``."""
    entries = model.metadata_props  # type: ignore[attr-defined]
    keep = [(p.key, p.value) for p in entries if p.key not in props]
    del entries[:]
    for key, value in keep + sorted(props.items()):
        entry = entries.add()
        entry.key, entry.value = key, value


def read_onnx_metadata_props(path: PathLike) -> Dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (with onnx, else through onnxruntime)."""
    try:
        import onnx
    except ImportError:
        from mdpr.export.extras import require_onnxruntime

        ort = require_onnxruntime("Reading an ONNX model")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for a file that is not ONNX
        from mdpr.errors import MdprError

        raise MdprError(f"{path} is not a readable ONNX file ({type(exc).__name__}); export it again.") from None
    return {p.key: p.value for p in model.metadata_props}
