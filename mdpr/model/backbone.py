"""The backbone seam: what MDPR takes from a backbone, and the registry of backbone families.

MDPR needs three pieces from a backbone (:class:`Backbone`): a **stem** shared by both branches and a **pair of
stages** that each branch gets its own copy of (MDPR calls them ``layer3`` and ``layer4`` whatever the family), with
the stages' output channel counts. Both stages must produce maps of the same height and width: the Soft Content
Branch fuses its layer3 and layer4 maps.

A family is registered once under a name, which is what ``model.backbone`` selects::

    from mdpr.model import Backbone, register_backbone_family

    def build_tiny(cfg: ModelConfig) -> Backbone:
        return Backbone(stem=..., stages=(stage3, stage4), channels=(128, 256))

    register_backbone_family("tiny", build_tiny)

ResNet(-IBN-a) 18..152 (:mod:`mdpr.model.resnet`) is the built-in ``resnet`` family. Weight loading
(:mod:`mdpr.model.init`) and architecture inference (:mod:`mdpr.model.loading`) go through the family: its
``file_prefixes`` say where the stem's and the stages' keys sit in a whole-backbone weights file (for ResNet the
torchvision names: the stem's own keys ``conv1.*`` ... ``layer2.*`` and the stages under ``layer3.`` / ``layer4.``),
its optional ``infer`` reads the family's settings back from keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from mdpr.config import ModelConfig
from mdpr.errors import MdprError

#: the state dicts of a backbone's three parts, keyed as inside each part: (stem, layer3 stage, layer4 stage)
BackboneParts = Tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass
class Backbone:
    """What one family builds for one :class:`ModelConfig`.

    ``stem``: normalised images (N, 3, H, W) -> the shared map. ``stages``: the (layer3, layer4) modules, deep-copied
    into each branch; layer3 maps the stem's output to ``channels[0]`` channels, layer4 maps that to ``channels[1]``
    channels at the same resolution.
    """

    stem: nn.Module
    stages: Tuple[nn.Module, nn.Module]
    channels: Tuple[int, int]


@dataclass(frozen=True)
class BackboneFamily:
    """A registered backbone family (see :func:`register_backbone_family` for the fields)."""

    name: str
    build: Callable[[ModelConfig], Backbone]
    file_prefixes: Tuple[str, str, str] = ("stem.", "layer3.", "layer4.")
    config_keys: Tuple[str, ...] = ()
    infer: Optional[Callable[[BackboneParts, str], Optional[Dict[str, Any]]]] = None
    describe: Optional[Callable[[ModelConfig], str]] = None
    validate: Optional[Callable[[ModelConfig], None]] = None

    def title(self, cfg: ModelConfig) -> str:
        """Human name of the backbone ``cfg`` selects (``"ResNet-50-IBN-a"``; the family name by default)."""
        return self.describe(cfg) if self.describe is not None else self.name

    def settings(self, cfg: ModelConfig) -> str:
        """``model.backbone=resnet, model.depth=50, model.ibn=true``: the config keys that select it."""
        items = [("backbone", cfg.backbone)] + [(k, getattr(cfg, k)) for k in self.config_keys]
        return ", ".join(f"model.{k}={_yaml_value(v)}" for k, v in items)

    def split_file(self, state_dict: Mapping[str, torch.Tensor]) -> Tuple[BackboneParts, List[str]]:
        """A whole-backbone state dict -> its (stem, layer3, layer4) parts and the keys that belong to none.

        The longest matching prefix wins, so a stem prefix "" (ResNet) takes only what the stages do not.
        """
        parts: Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, torch.Tensor]] = ({}, {}, {})
        rest: List[str] = []
        order = sorted(range(3), key=lambda i: -len(self.file_prefixes[i]))
        for key, value in state_dict.items():
            for i in order:
                if key.startswith(self.file_prefixes[i]):
                    parts[i][key[len(self.file_prefixes[i]):]] = value
                    break
            else:
                rest.append(key)
        return parts, rest


def _yaml_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


_FAMILIES: Dict[str, BackboneFamily] = {}


def register_backbone_family(
    name: str,
    factory: Callable[[ModelConfig], Backbone],
    *,
    file_prefixes: Tuple[str, str, str] = ("stem.", "layer3.", "layer4."),
    config_keys: Tuple[str, ...] = (),
    infer: Optional[Callable[[BackboneParts, str], Optional[Dict[str, Any]]]] = None,
    describe: Optional[Callable[[ModelConfig], str]] = None,
    validate: Optional[Callable[[ModelConfig], None]] = None,
    replace: bool = False,
) -> BackboneFamily:
    """Make ``model.backbone=NAME`` build its backbone with ``factory(model_config)``.

    ``file_prefixes``: where the stem's, layer3's and layer4's keys sit in a whole-backbone weights file
    (``model.pretrained``). ``config_keys``: the ``ModelConfig`` fields the family reads (named in messages).
    ``infer(parts, where)``: those fields' values read from the parts' state dicts, or None if the keys are not this
    family's (lets official and bare checkpoints load without a config, and names what a mismatching file holds); it
    may raise :class:`MdprError` for keys of this family in a layout it cannot build, starting the sentence with
    ``where`` (the file's name).
    ``describe(cfg)``: a human name for messages. ``validate(cfg)``: raise :class:`MdprError` for settings the family
    cannot build. A name is registered once unless ``replace``.
    """
    if not replace and name in _FAMILIES:
        raise ValueError(f"backbone family {name!r} is already registered (pass replace=True to override it)")
    prefixes = (file_prefixes[0], file_prefixes[1], file_prefixes[2])
    family = BackboneFamily(name, factory, prefixes, tuple(config_keys), infer, describe, validate)
    _FAMILIES[name] = family
    return family


def unregister_backbone_family(name: str) -> None:
    """Remove a registered family (tests that register a temporary one)."""
    _FAMILIES.pop(name, None)


def backbone_families() -> List[str]:
    """Names of the registered families, in registration order (the built-in ``resnet`` first)."""
    return list(_FAMILIES)


def get_backbone_family(name: str) -> BackboneFamily:
    """The family registered as ``name`` (one :class:`MdprError` naming the registered ones otherwise)."""
    family = _FAMILIES.get(name)
    if family is None:
        raise MdprError(f"Unknown model.backbone '{name}'; use one of {', '.join(_FAMILIES) or '(none)'}, or register "
                        f"your own family with mdpr.model.register_backbone_family.")
    return family


def build_backbone(cfg: ModelConfig) -> Backbone:
    """Build the backbone ``cfg.backbone`` names, checking that it honours the :class:`Backbone` contract."""
    family = get_backbone_family(cfg.backbone)
    backbone = family.build(cfg)
    if not isinstance(backbone, Backbone) or len(backbone.stages) != 2 or len(backbone.channels) != 2:
        raise TypeError(f"backbone family {family.name!r} must build a Backbone with two stages and two channel counts")
    return backbone

