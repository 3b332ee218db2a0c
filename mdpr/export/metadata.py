"""What an exported model records about itself, and boxmot's sidecar.

Every file mdpr exports carries one JSON object (:class:`ExportMetadata`) inside the file itself: ONNX
``metadata_props`` key ``mdpr``, OpenVINO ``rt_info`` key ``mdpr``, TorchScript extra file ``mdpr.json``. It
names the weights (fingerprint), the pixel convention of the input, the sizes and the precision, and the
checkpoint's config, so that mdpr can run the file with the checkpoint's preprocessing and refuse a file that
does not match a store.

``--target boxmot`` also writes ``PATH.metadata.json`` with the keys boxmot's own ReID exporter writes beside an
ONNX file (``schema_version``, ``model_name``, ``img_size`` as [height, width], ``preprocess``, ``format``,
``input_name``, ``output_names``, ``input_shape``, ``precision``, ``dynamic_batch``, ``opset``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from mdpr.errors import MdprError
from mdpr.export.conventions import IMAGENET_MEAN, IMAGENET_STD, check_convention

PathLike = Union[str, "os.PathLike[str]"]

#: key of the JSON object in ONNX metadata_props / OpenVINO rt_info; TorchScript extra file ``mdpr.json``
METADATA_KEY = "mdpr"
TORCHSCRIPT_EXTRA_FILE = "mdpr.json"
SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "int8")
FORMATS = ("onnx", "openvino", "torchscript")


@dataclass
class ExportMetadata:
    """The description every exported file carries (see the module docstring)."""

    format: str
    input_convention: str
    input_name: str
    output_name: str
    input_size: Tuple[int, int]  #: (height, width)
    feature_dim: int
    fingerprint: str  #: :func:`mdpr.model.state_dict_fingerprint` of the weights
    model_config: Dict[str, Any] = field(default_factory=dict)  #: ``Config.to_dict()`` of the checkpoint
    precision: str = "fp32"
    opset: Optional[int] = None
    target: Optional[str] = None  #: "boxmot" for a tracker export
    mdpr_version: str = ""
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["input_size"] = [int(v) for v in self.input_size]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> ExportMetadata:
        try:
            data = json.loads(text)
            data["input_size"] = tuple(int(v) for v in data["input_size"])
            meta = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise MdprError(f"{where} has unreadable mdpr metadata ({exc}); export it again with `mdpr export`.") from None
        if meta.schema > SCHEMA_VERSION:
            raise MdprError(f"{where} was exported by a newer mdpr (metadata schema {meta.schema}); upgrade mdpr.")
        check_convention(meta.input_convention)
        return meta

    @property
    def preprocessing(self) -> Dict[str, Any]:
        """What is done to a crop before the graph sees it (the extractor's ``preprocessing`` plus the convention)."""
        inp = self.model_config.get("input", {})
        out: Dict[str, Any] = {
            "size": [int(self.input_size[0]), int(self.input_size[1])],
            "interpolation": inp.get("interpolation", "bicubic"),
            "pixel_mean": [float(v) for v in inp.get("pixel_mean", [])],
            "pixel_std": [float(v) for v in inp.get("pixel_std", [])],
            "channel_order": "RGB",
            "pixel_range": [0, 255],
        }
        if self.input_convention == "imagenet":
            out.update(pixel_range=[0, 1], input_mean=list(IMAGENET_MEAN), input_std=list(IMAGENET_STD))
        return out


# ------------------------------------------------------------------------------------------------ boxmot


def boxmot_sidecar_path(path: PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.metadata.json`` (boxmot's artifact metadata path for a file)."""
    p = Path(path)
    return p.with_name(p.name + ".metadata.json")


def boxmot_sidecar(meta: ExportMetadata, model_name: str = "mdpr") -> Dict[str, Any]:
    """The sidecar object in boxmot's schema for an ONNX export of ``meta``.

    ``preprocess`` is boxmot's name for a plain resize of the BGR crop with OpenCV's linear interpolation.
    ``model_name`` must not contain a name boxmot maps to other statistics or sizes (``clip``, ``lmbn``, ``hacnn``).
    """
    h, w = (int(v) for v in meta.input_size)
    return {
        "schema_version": 1,
        "format": meta.format,
        "model_name": model_name,
        "img_size": [h, w],
        "preprocess": "resize",
        "input_name": meta.input_name,
        "output_names": [meta.output_name],
        "input_shape": [None, 3, h, w],
        "output_shape": [None, int(meta.feature_dim)],
        "precision": "float32" if meta.precision == "fp32" else meta.precision,
        "dynamic_batch": True,
        "batch_contract": {"dynamic": True},
        "opset": meta.opset,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "producer": f"mdpr {meta.mdpr_version}".strip(),
        "fingerprint": meta.fingerprint,
    }


# ------------------------------------------------------------------------------------------------ reading


def detect_format(path: PathLike) -> str:
    """``onnx`` / ``openvino`` / ``torchscript`` from a path (an ``*_openvino_model`` folder or ``.xml`` is OpenVINO)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir() or name.endswith("_openvino_model") or p.suffix.lower() in (".xml", ".bin"):
        return "openvino"
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if p.suffix.lower() in (".torchscript", ".ts"):
        return "torchscript"
    raise MdprError(
        f"Cannot tell the format of {p}; exported models end in .onnx or .torchscript, or are *_openvino_model folders."
    )


def openvino_xml(path: PathLike) -> Path:
    """The ``.xml`` of an OpenVINO model given as the ``.xml``, the ``.bin`` or the folder holding them."""
    p = Path(path)
    if p.is_dir():
        xmls = sorted(p.glob("*.xml"))
        if not xmls:
            raise MdprError(f"The OpenVINO model folder {p} holds no .xml file; export it again with `mdpr export`.")
        return xmls[0]
    return p.with_suffix(".xml")


def read_export_metadata(path: PathLike) -> ExportMetadata:
    """The :class:`ExportMetadata` inside an exported file (ONNX, OpenVINO folder/.xml, TorchScript)."""
    p = Path(path)
    if not p.exists():
        raise MdprError(f"Exported model {p} does not exist; write it with `mdpr export`.")
    fmt = detect_format(p)
    text: Optional[str] = None
    if fmt == "onnx":
        from mdpr.export.onnx import read_onnx_metadata_props

        text = read_onnx_metadata_props(p).get(METADATA_KEY)
    elif fmt == "openvino":
        from mdpr.export.openvino import read_openvino_rt_info

        text = read_openvino_rt_info(openvino_xml(p))
    else:
        from mdpr.export.torchscript import read_torchscript_extra

        text = read_torchscript_extra(p)
    if not text:
        raise MdprError(
            f"{p} carries no mdpr metadata (it was not written by `mdpr export`); export the checkpoint with "
            "`mdpr export` so that mdpr knows its preprocessing and weights."
        )
    return ExportMetadata.from_json(text, str(p))
