"""Backbone initialisation: a plain backbone file (stem + both branches) or a full MDPR checkpoint into a new model."""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Sequence, Tuple

import torch

from mdpr.errors import MdprError
from mdpr.model.formats import PathLike, StateDict
from mdpr.model.loading import Checkpoint, LoadReport, _resnet_layout, load_weights, read_checkpoint
from mdpr.model.network import MDPR


def _backbone_targets(model: MDPR) -> List[Tuple[str, str]]:
    """(backbone prefix, model prefix) pairs: stem from conv1..layer2, layer3/layer4 into every branch."""
    pairs = [("conv1.", "stem.conv1."), ("bn1.", "stem.bn1."), ("layer1.", "stem.layer1."), ("layer2.", "stem.layer2.")]
    for branch in ("hard_branch", "soft_branch"):
        if getattr(model, branch) is not None:
            pairs += [("layer3.", f"{branch}.layer3."), ("layer4.", f"{branch}.layer4.")]
    return pairs


def _split_ibn_norms(backbone: StateDict, model_keys: Sequence[str]) -> Tuple[StateDict, List[str]]:
    """Map plain ``bn1`` entries onto IBN-a modules (first half -> InstanceNorm affine, rest -> BatchNorm).

    A plain ResNet (torchvision, LUPerson) has no IBN parameters; splitting its BatchNorm this way keeps the learnt
    scale/shift instead of leaving the IBN layers at their initial values (what fast-reid does).
    """
    converted: List[str] = []
    out = OrderedDict(backbone)
    ibn_prefixes = sorted({k[: -len("IN.weight")] for k in model_keys if k.endswith(".bn1.IN.weight")})
    for prefix in ibn_prefixes:
        if f"{prefix}weight" not in out or f"{prefix}IN.weight" in out:
            continue
        weight = out.pop(f"{prefix}weight")
        half = weight.shape[0] // 2
        bias = out.pop(f"{prefix}bias")
        out[f"{prefix}IN.weight"], out[f"{prefix}BN.weight"] = weight[:half].clone(), weight[half:].clone()
        out[f"{prefix}IN.bias"], out[f"{prefix}BN.bias"] = bias[:half].clone(), bias[half:].clone()
        for stat in ("running_mean", "running_var"):
            if f"{prefix}{stat}" in out:
                out[f"{prefix}BN.{stat}"] = out.pop(f"{prefix}{stat}")[half:].clone()
        if f"{prefix}num_batches_tracked" in out:
            out[f"{prefix}BN.num_batches_tracked"] = out.pop(f"{prefix}num_batches_tracked")
        converted.append(prefix.rstrip("."))
    return out, converted


def load_backbone(model: MDPR, checkpoint: Checkpoint, strict: bool = True, where: str = "The backbone file") -> LoadReport:
    """Initialise the stem and both branches' layer3/layer4 from a plain ResNet state dict."""
    backbone_keys = [k for k in model.state_dict() if k.startswith("stem.") or ".layer3." in k or ".layer4." in k]
    # the model's backbone keys in plain-ResNet naming (layer3/4 from the first branch present)
    first_pairs: Dict[str, str] = {}
    for src, dst in _backbone_targets(model):
        first_pairs.setdefault(src, dst)
    plain_keys = [src + k[len(dst):] for src, dst in first_pairs.items() for k in backbone_keys if k.startswith(dst)]
    state, _ = _split_ibn_norms(checkpoint.state_dict, plain_keys)
    own = model.state_dict()
    report = LoadReport(ignored=list(checkpoint.ignored))
    mapped: StateDict = OrderedDict()
    for key, value in state.items():
        targets = [dst + key[len(src):] for src, dst in _backbone_targets(model) if key.startswith(src)]
        if not targets or any(t not in own for t in targets):
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(own[targets[0]].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[targets[0]].shape)))
            continue
        for target in targets:
            mapped[target] = value
    report.missing = [k for k in backbone_keys if k not in mapped and not k.endswith("num_batches_tracked")]
    if strict and not report.ok:
        raise MdprError(f"{where} does not fit a ResNet-{model.config.depth}{'-IBN-a' if model.config.ibn else ''} "
                        f"backbone ({_describe_backbone(checkpoint.state_dict)}): {report.summary()}; set model.depth / "
                        f"model.ibn to match the file.")
    model.load_state_dict(mapped, strict=False)
    return report


def _describe_backbone(state_dict: Mapping[str, torch.Tensor]) -> str:
    try:
        depth, ibn = _resnet_layout(state_dict, ["layer1.", "layer2.", "layer3.", "layer4."], "The file")
    except MdprError:
        return "an unrecognised ResNet layout"
    return f"the file holds a ResNet-{depth}{'-IBN-a' if ibn else ''}"


def init_from_pretrained(model: MDPR, path: PathLike, strict: bool = True) -> LoadReport:
    """Initialise ``model`` from ``path``: a backbone file (stem + both branches) or a full MDPR checkpoint
    (everything but classifiers whose class count differs, for fine-tuning on another dataset)."""
    checkpoint = read_checkpoint(path)
    if checkpoint.kind == "backbone":
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

