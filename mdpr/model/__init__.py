"""The MDPR model: building, loading and saving.

``build_model(cfg)`` -> a fresh :class:`MDPR` (optionally initialised from ``cfg.model.pretrained``);
``load_model(path)`` -> ``(model in eval mode, Config)`` from an mdpr or official MDPR checkpoint;
``save_checkpoint(path, model, config, classes)`` writes an mdpr checkpoint.
"""

from __future__ import annotations

from typing import Optional, Union

from mdpr.config import Config, InputConfig, ModelConfig
from mdpr.model.heads import EmbeddingHead, HeadOutput
from mdpr.model.loading import LoadReport, load_model
from mdpr.model.network import MDPR, MDPROutputs, resolve_model_config
from mdpr.model.saving import save_checkpoint, state_dict_fingerprint

__all__ = [
    "MDPR",
    "MDPROutputs",
    "EmbeddingHead",
    "HeadOutput",
    "LoadReport",
    "build_model",
    "load_model",
    "save_checkpoint",
    "state_dict_fingerprint",
    "resolve_model_config",
]


def build_model(cfg: Union[Config, ModelConfig], input_cfg: Optional[InputConfig] = None,
                pretrained_strict: bool = True) -> MDPR:
    """A new MDPR model for ``cfg`` (a :class:`Config` or its ``model`` section), in training mode.

    ``input_cfg`` sets the pixel normalisation (defaults to ``cfg.input`` for a full Config, else the official
    ImageNet statistics). When ``model.pretrained`` names a file it initialises the backbone (torchvision, IBN-Net,
    LUPerson, fast-reid) or, for a full MDPR checkpoint, all weights except mismatching classifiers.
    """
    from mdpr.model.init import init_from_pretrained

    if isinstance(cfg, Config):
        model_cfg, input_cfg = cfg.model, input_cfg or cfg.input
    else:
        model_cfg = cfg
    model = MDPR(model_cfg, input_cfg)
    if model_cfg.pretrained:
        model.pretrained_report = init_from_pretrained(model, model_cfg.pretrained, strict=pretrained_strict)
    return model
