"""Adapter between the MDPR numerical oracle (``check_oracle.py``) and mdpr.

Usage (from the repository root)::

    PYTHONPATH=tests python tests/data/oracle_r50/check_oracle.py tests/data/oracle_r50 \
        oracle_adapter:features --losses oracle_adapter:losses

Both callables receive the official state dict, write it as an official fast-reid checkpoint, and load it
with :func:`mdpr.model.load_model` (no other hint), exactly as a user loading the authors' release would.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping

import numpy as np
import torch

from mdpr.config import LossConfig
from mdpr.losses import MDPRLoss
from mdpr.model import load_model


def images_to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float 0..255 (fast-reid's ToTensor keeps the 0..255 scale)."""
    return torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()


def load_official(state_dict: Mapping[str, object]):
    """Write ``{"model": state_dict}`` (the fast-reid layout) to a temporary file and load it with mdpr."""
    tensors = OrderedDict((k, v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v).copy()))
                          for k, v in state_dict.items())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "official.pth"
        torch.save({"model": tensors}, path)
        return load_model(path)


def features(state_dict: Mapping[str, object], images_uint8: np.ndarray) -> np.ndarray:
    model, _ = load_official(state_dict)
    with torch.inference_mode():
        return model(images_to_tensor(images_uint8)).numpy()


def losses(state_dict: Mapping[str, object], images_uint8: np.ndarray, targets: np.ndarray) -> Dict[str, float]:
    model, config = load_official(state_dict)
    model.train()
    outputs = model(images_to_tensor(images_uint8))
    loss_dict = MDPRLoss(config.loss if config.loss else LossConfig())(outputs, torch.as_tensor(targets))
    return {name: float(value.detach()) for name, value in loss_dict.items()}
