"""Backbone initialisation: a whole-backbone file (stem + both branches) or a full MDPR checkpoint into a new model.

A backbone file is split into the stem and the two stages by the model's family (its ``file_prefixes``, see
:mod:`mdpr.model.backbone`); the stem initialises ``stem.*`` and each stage every branch's copy of it. A plain
BatchNorm entry in the file that meets an :class:`~mdpr.model.layers.IBN` module of the model (a torchvision or
LUPerson ResNet into an IBN-a model) is split: the first half of its scale and shift go to the InstanceNorm, the rest
(with the running statistics) to the BatchNorm. This keeps the learnt values where fast-reid leaves the IBN layers at
their initial values (a documented deviation, see docs/training.md).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch

from mdpr.config import ModelConfig
from mdpr.errors import MdprError
from mdpr.model.backbone import BackboneFamily, get_backbone_family
from mdpr.model.formats import PathLike, StateDict
from mdpr.model.layers import IBN
from mdpr.model.loading import (
    Checkpoint,
    LoadReport,
    family_config,
    load_weights,
    read_checkpoint,
)
from mdpr.model.network import MDPR


def _split_ibn_norms(model: MDPR, parts: List[Dict[str, torch.Tensor]]) -> List[str]:
    """Rewrite, in ``parts``, plain norm entries that meet an IBN module of ``model`` into its IN / BN halves."""
    converted: List[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, IBN):
            continue
        for part, prefix in model.backbone_prefixes():
            if not f"{name}.".startswith(prefix):
                continue
            inner = f"{name[len(prefix):]}."
            state = parts[part]
            if f"{inner}weight" not in state or f"{inner}IN.weight" in state:
                continue
            half = module.instance_channels
            weight, bias = state.pop(f"{inner}weight"), state.pop(f"{inner}bias")
            state[f"{inner}IN.weight"], state[f"{inner}BN.weight"] = weight[:half].clone(), weight[half:].clone()
            state[f"{inner}IN.bias"], state[f"{inner}BN.bias"] = bias[:half].clone(), bias[half:].clone()
            for stat in ("running_mean", "running_var"):
                if f"{inner}{stat}" in state:
                    state[f"{inner}BN.{stat}"] = state.pop(f"{inner}{stat}")[half:].clone()
            if f"{inner}num_batches_tracked" in state:
                state[f"{inner}BN.num_batches_tracked"] = state.pop(f"{inner}num_batches_tracked")
            converted.append(f"{prefix}{inner}".rstrip("."))
    return converted


def _mismatch_sentence(model: MDPR, family: BackboneFamily, checkpoint: Checkpoint, report: LoadReport,
                       one_copy: Sequence[str], where: str) -> str:
    """One sentence: what the file holds (when a family recognises it) against what the model expects."""
    cfg = model.config
    expected = family.title(cfg)
    if checkpoint.family is not None:
        held_family = get_backbone_family(checkpoint.family)
        held_cfg = family_config(held_family, checkpoint.family_settings, cfg)
        held = held_family.title(held_cfg)
        keys = [k for k in ("backbone", *held_family.config_keys) if getattr(held_cfg, k) != getattr(cfg, k)]
        # keep only the changes the file needs (a plain ResNet fits an IBN-a model: its norms are split)
        for key in list(keys):
            candidate = dataclasses.replace(held_cfg, **{key: getattr(cfg, key)})
            if len(keys) > 1 and _fits(candidate, checkpoint):
                keys.remove(key)
                held_cfg = candidate
        changes = [f"model.{k}={_value(getattr(held_cfg, k))}" for k in keys]
        if changes:
            return (f"{where} holds a {held} backbone, but the model ({family.settings(cfg)}) expects a {expected}; "
                    f"set {' '.join(changes)} to use this file, or choose a {expected} file.")
    problems = []
    missing = [k for k in report.missing if k in set(one_copy)]
    if missing:
        problems.append(f"{len(missing)} of its {len(one_copy)} weights are missing from the file (e.g. {missing[0]})")
    if report.unexpected:
        count = len(report.unexpected)
        problems.append(f"{count} key{'s' if count > 1 else ''} of the file have no place in it "
                        f"(e.g. {report.unexpected[0]})")
    if report.mismatched:
        key, held_shape, own_shape = report.mismatched[0]
        problems.append(f"{len(report.mismatched)} have other shapes (e.g. {key} {list(held_shape)} in the file, "
                        f"{list(own_shape)} in the model)")
    return (f"{where} does not fit the model's {expected} backbone ({family.settings(cfg)}): "
            f"{', '.join(problems)}; choose a {expected} file or change those settings to match the file.")


def _value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fits(cfg: ModelConfig, checkpoint: Checkpoint) -> bool:
    """Whether the backbone file fits a model of ``cfg`` (planned on the meta device: nothing is allocated)."""
    try:
        with torch.device("meta"):
            model = MDPR(dataclasses.replace(cfg, pretrained=None))
    except MdprError:
        return False
    return _plan(model, checkpoint)[1].ok


def _plan_backbone(model: MDPR, checkpoint: Checkpoint, where: str) -> Tuple[StateDict, LoadReport, str]:
    """:func:`_plan`, and the sentence that says what does not fit."""
    mapped, report, one_copy = _plan(model, checkpoint)
    family = get_backbone_family(model.config.backbone)
    sentence = "" if report.ok else _mismatch_sentence(model, family, checkpoint, report, one_copy, where)
    return mapped, report, sentence


def _plan(model: MDPR, checkpoint: Checkpoint) -> Tuple[StateDict, LoadReport, List[str]]:
    """Where each tensor of a whole-backbone file goes in ``model``, what does not fit, and the keys of one copy of
    the model's backbone (the stem and one branch's stages)."""
    family = get_backbone_family(model.config.backbone)
    split, rest = family.split_file(checkpoint.state_dict)
    parts = [dict(p) for p in split]
    _split_ibn_norms(model, parts)
    own = model.state_dict()
    prefixes = model.backbone_prefixes()
    report = LoadReport(unexpected=list(rest), ignored=list(checkpoint.ignored))
    mapped: StateDict = OrderedDict()
    for index, state in enumerate(parts):
        targets = [prefix for part, prefix in prefixes if part == index]
        for key, value in state.items():
            file_key = family.file_prefixes[index] + key
            destinations = [prefix + key for prefix in targets]
            if not destinations or any(d not in own for d in destinations):
                report.unexpected.append(file_key)
            elif tuple(value.shape) != tuple(own[destinations[0]].shape):
                report.mismatched.append((file_key, tuple(value.shape), tuple(own[destinations[0]].shape)))
            else:
                mapped.update((d, value) for d in destinations)
    backbone_keys = [k for k in own if any(k.startswith(prefix) for _, prefix in prefixes)]
    report.missing = [k for k in backbone_keys if k not in mapped and not k.endswith("num_batches_tracked")]
    first: Dict[int, str] = {}
    for part, prefix in prefixes:
        first.setdefault(part, prefix)
    one_copy = [k for k in backbone_keys if k.startswith(tuple(first.values())) and not k.endswith("num_batches_tracked")]
    return mapped, report, one_copy


def load_backbone(model: MDPR, checkpoint: Checkpoint, strict: bool = True,
                  where: str = "The backbone file") -> LoadReport:
    """Initialise the stem and every branch's stages from a whole-backbone state dict (``checkpoint.kind``
    "backbone" or "unknown"). Strict: anything that does not fit raises one sentence naming the file and what the
    model expects; otherwise the :class:`LoadReport` lists it."""
    mapped, report, sentence = _plan_backbone(model, checkpoint, where)
    if strict and not report.ok:
        raise MdprError(sentence)
    model.load_state_dict(mapped, strict=False)
    return report


def check_init_file(path: PathLike, cfg: ModelConfig) -> None:
    """Raise the one-sentence mismatch of :func:`load_backbone` now if the backbone file ``path`` cannot initialise
    a model of ``cfg`` (checked on the meta device: no weights are allocated). Full MDPR checkpoints pass."""
    checkpoint = read_checkpoint(path)
    if checkpoint.kind not in ("backbone", "unknown"):
        return
    with torch.device("meta"):
        model = MDPR(dataclasses.replace(cfg, pretrained=None))
    _, report, sentence = _plan_backbone(model, checkpoint, f"Initialisation file {path}")
    if not report.ok:
        raise MdprError(sentence)


def init_from_pretrained(model: MDPR, path: PathLike, strict: bool = True) -> LoadReport:
    """Initialise ``model`` from ``path``: a backbone file (stem + both branches) or a full MDPR checkpoint
    (everything but classifiers whose class count differs, for fine-tuning on another dataset)."""
    checkpoint = read_checkpoint(path)
    if checkpoint.kind in ("backbone", "unknown"):
        return load_backbone(model, checkpoint, strict, where=f"Pretrained file {path}")
    own = model.state_dict()
    state = OrderedDict(checkpoint.state_dict)
    dropped = [k for k in state if k.endswith("classifier.weight") and
               (k not in own or tuple(own[k].shape) != tuple(state[k].shape))]
    for key in dropped:
        del state[key]
    report = load_weights(model, state, strict, where=f"Pretrained file {path}",
                          ignore_missing=[k for k in own if k.endswith("classifier.weight")])
    report.ignored += dropped
    return report

