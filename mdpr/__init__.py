"""mdpr: person re-identification with MDPR (Mutual Distillation Learning for Person Re-Identification).

The Python API is the same set of workflows the ``mdpr`` command line calls (see docs/python-api.md)::

    import mdpr
    mdpr.prepare(mdpr.PrepareRequest("demo", "mdpr-demo/data"))
    result = mdpr.train_run(mdpr.TrainOptions(dataset="demo", recipe="demo-cpu", output="runs/demo"))
    metrics = mdpr.run_evaluate(mdpr.EvaluateRequest(dataset="demo", weights="runs/demo/model.pt"))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module; imported on first use so that `import mdpr` (and `mdpr --help`) does not pay for torch
_EXPORTS = {
    "MdprError": "mdpr.errors",
    "Config": "mdpr.config",
    "load_config": "mdpr.config",
    "FeatureExtractor": "mdpr.inference",
    "FeatureStore": "mdpr.store",
    "PrepareRequest": "mdpr.workflows.prepare",
    "prepare": "mdpr.workflows.prepare",
    "TrainOptions": "mdpr.workflows.train",
    "train_run": "mdpr.workflows.train",
    "EvaluateRequest": "mdpr.workflows.evaluate",
    "Protocol": "mdpr.workflows.evaluate",
    "run_evaluate": "mdpr.workflows.evaluate",
    "ExtractRequest": "mdpr.workflows.extract",
    "run_extract": "mdpr.workflows.extract",
    "QueryRequest": "mdpr.workflows.query",
    "run_query": "mdpr.workflows.query",
    "visualize_attention": "mdpr.workflows.visualize",
    "DemoRequest": "mdpr.workflows.demo",
    "run_demo": "mdpr.workflows.demo",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mdpr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(__all__)
