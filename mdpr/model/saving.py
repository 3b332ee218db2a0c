"""Writing mdpr checkpoints (atomically) and fingerprinting weights."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from mdpr.config import Config, ModelConfig
from mdpr.fileio import atomic_path
from mdpr.model.formats import FORMAT_NAME, FORMAT_VERSION, PathLike, is_official_state_dict, official_to_ours
from mdpr.model.network import MDPR
from mdpr.runtime import unwrap_model


def save_checkpoint(path: PathLike, model: torch.nn.Module, config: Union[Config, ModelConfig],
                    classes: Optional[Sequence[Any]] = None, **extra: Any) -> Path:
    """Write an mdpr checkpoint atomically (temporary file + ``os.replace``); returns the path.

    ``extra`` entries (optimizer state, epoch, metrics ...) are stored at the top level; they must be plain
    Python / tensor values so that ``torch.load(weights_only=True)`` can read them back.
    """
    from mdpr import __version__

    reserved = {"format", "format_version", "mdpr_version", "model", "config", "classes"}
    clash = reserved & set(extra)
    if clash:
        raise ValueError(f"extra checkpoint entries {sorted(clash)} clash with reserved keys")
    if isinstance(config, ModelConfig):
        config = Config(model=config)
    inner = unwrap_model(model)
    cfg_dict = config.to_dict()
    if isinstance(inner, MDPR):
        model_dict = dataclasses.asdict(inner.config)
        model_dict["pretrained"] = config.model.pretrained
        cfg_dict["model"] = Config(model=ModelConfig(**model_dict)).to_dict()["model"]
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "mdpr_version": __version__,
        "model": OrderedDict((k, v.detach().cpu()) for k, v in inner.state_dict().items()),
        "config": cfg_dict,
        "classes": list(classes) if classes is not None else None,
        **extra,
    }
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def state_dict_fingerprint(state_dict: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """Hex SHA-256 prefix identifying a model's weights.

    Keys are sorted; official names are translated to ours first, so an official checkpoint and its mdpr conversion
    share a fingerprint; floating tensors are hashed as float32 little-endian on the CPU (the device and the storage
    dtype of float32 weights do not matter); ``num_batches_tracked`` counters are skipped (they never change outputs).
    """
    state = dict(state_dict)
    if is_official_state_dict(state):
        state = {official_to_ours(k) or f"<official>{k}": v for k, v in state.items()}
    digest = hashlib.sha256()
    for key in sorted(state):
        if key.endswith("num_batches_tracked"):
            continue
        tensor = state[key].detach().to("cpu")
        tensor = tensor.to(torch.float32) if tensor.is_floating_point() else tensor.to(torch.int64)
        digest.update(key.encode("utf-8"))
        digest.update(str(tuple(tensor.shape)).encode("ascii"))
        array = tensor.contiguous().numpy()
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()[:length]

