"""The MDPR model: building, loading and saving, and the backbone-family registry.

``build_model(cfg)`` -> a fresh :class:`MDPR` (optionally initialised from ``cfg.model.pretrained``);
``load_model(path)`` -> ``(model in eval mode, Config)`` from an mdpr or official MDPR checkpoint;
``save_checkpoint(path, model, config, classes)`` writes an mdpr checkpoint;
``register_backbone_family(name, factory)`` makes ``model.backbone=name`` build its :class:`Backbone`.
"""

from __future__ import annotations

from typing import Optional, Union

from mdpr.config import Config, InputConfig, ModelConfig
from mdpr.model import resnet as _resnet  # noqa: F401  (registers the built-in "resnet" family)
from mdpr.model.backbone import (
    Backbone,
    BackboneFamily,
    backbone_families,
    get_backbone_family,
    register_backbone_family,
    unregister_backbone_family,
)
from mdpr.model.heads import EmbeddingHead, HeadOutput
from mdpr.model.loading import LoadReport, load_model
from mdpr.model.network import MDPR, MDPROutputs, resolve_model_config
from mdpr.model.saving import save_checkpoint, state_dict_fingerprint

__all__ = [
    "MDPR",
    "MDPROutputs",
    "Backbone",
    "BackboneFamily",
    "EmbeddingHead",
    "HeadOutput",
    "LoadReport",
    "backbone_families",
    "build_model",
    "get_backbone_family",
    "load_model",
    "register_backbone_family",
    "resolve_model_config",
    "save_checkpoint",
    "state_dict_fingerprint",
    "unregister_backbone_family",
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
