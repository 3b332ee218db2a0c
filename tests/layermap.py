"""The layer map of docs/architecture.md, shared by the architecture tests."""

from __future__ import annotations

from typing import Dict, List, Tuple

LAYERS: List[Tuple[str, ...]] = [
    ("cli",),
    ("workflows",),
    ("engine", "inference", "search", "store", "evaluation", "export", "viz"),
    ("model", "data", "losses"),
    ("config", "runtime", "fileio", "errors"),
]
LAYER_OF: Dict[str, int] = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}

#: The allowed sideways imports, and why.
SIDEWAYS: Dict[Tuple[str, str], str] = {
    ("search", "store"): "search ranks the rows of feature stores",
    ("search", "evaluation"): "re-ranking a shortlist uses the evaluation's k-reciprocal re-ranking",
    ("inference", "export"): "the onnxruntime / openvino backends run exported files (a checkpoint is exported "
                             "into a cache first)",
    ("losses", "model"): "the losses read the model's typed training outputs",
    ("config", "fileio"): "a resolved config is written with the one atomic writer",
    ("config", "errors"): "errors is the foundation of the foundation layer",
    ("fileio", "errors"): "errors is the foundation of the foundation layer",
    ("runtime", "errors"): "errors is the foundation of the foundation layer",
}
