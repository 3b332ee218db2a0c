"""ONNX export of the eval model, with a parity check against PyTorch on several batch sizes.

Peers' users report exported ReID models that give wrong embeddings once the batch size differs from the
one used while tracing (a batch dimension baked into a reshape). The export here marks the batch dimension
dynamic and then *checks* it: the ONNX Runtime output is compared with PyTorch's for every requested
batch size, and the export fails when they disagree.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Sequence, Union

import numpy as np
import torch

from mdpr.errors import MdprError

#: max |onnx - torch| / max |torch| allowed by the parity check (fp32; observed ~1e-6)
PARITY_RTOL = 1e-4


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    input_size: tuple  # (height, width)
    feature_dim: int
    opset: int
    max_abs_diff: Dict[int, float] = field(default_factory=dict)  # batch size -> max |onnx - torch|
    max_rel_diff: Dict[int, float] = field(default_factory=dict)  # ... divided by max |torch|

    @property
    def passed(self) -> bool:
        return all(v <= PARITY_RTOL for v in self.max_rel_diff.values())


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise MdprError(
            "ONNX export needs the optional packages onnx and onnxruntime; install them with: pip install \"mdpr[onnx]\"."
        ) from None
    return onnxruntime


def export_onnx(
    weights: Union[str, Path],
    output: Union[str, Path],
    batch_sizes: Sequence[int] = (1, 7, 32),
    opset: int = 17,
    seed: int = 0,
) -> ExportReport:
    """Export the eval model of checkpoint ``weights`` to ``output`` (dynamic batch) and check parity.

    The ONNX graph takes ``images``: float32 (N, 3, H, W), RGB on the 0..255 scale, resized to the checkpoint's
    test size (the same preprocessing as :class:`mdpr.FeatureExtractor`) and returns ``features`` (N, D).
    """
    ort = _require_onnx()
    from mdpr.model import load_model

    model, config = load_model(weights)
    model = model.eval().float()
    height, width = (int(s) for s in config.input.size_test)
    output = Path(output)
    if output.parent and not output.parent.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    example = torch.rand(2, 3, height, width, generator=gen) * 255
    tmp = output.with_name(output.name + ".tmp")
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated upstream but needs no extra dependency (onnxscript)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    tmp.replace(output)

    report = ExportReport(output, (height, width), model.feature_dim, opset)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for n in batch_sizes:
        images = torch.rand(int(n), 3, height, width, generator=gen) * 255
        with torch.inference_mode():
            ref = model(images).numpy()
        got = session.run(["features"], {"images": images.numpy()})[0]
        if got.shape != ref.shape:
            raise MdprError(
                f"The exported model {output} returned shape {got.shape} for batch size {n}, expected {ref.shape}."
            )
        diff = float(np.abs(got - ref).max())
        report.max_abs_diff[int(n)] = diff
        report.max_rel_diff[int(n)] = diff / max(float(np.abs(ref).max()), 1e-12)
    return report
