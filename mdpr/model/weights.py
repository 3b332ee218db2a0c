"""Checkpoint formats, the official <-> mdpr key translation, architecture inference, loading and saving.

Formats read (all through ``torch.load(..., weights_only=True)``):

* **mdpr** checkpoints: ``{"format": "mdpr", "format_version": 1, "mdpr_version", "model": state_dict,
  "config": Config.to_dict(), "classes": [...], ...training state}`` (our key names);
* **official MDPR / fast-reid** checkpoints: ``{"model": state_dict, ...}`` with the official key names
  (``generate.backbone.0.weight`` ...), optionally ``module.``-prefixed (DistributedDataParallel); the
  architecture (depth, IBN, embedding dim, parts, attention maps, switches, classes) is inferred from the keys;
* **backbone initialisations** (``ModelConfig.pretrained``): torchvision ImageNet ResNets, IBN-Net releases
  (``resnet50_ibn_a``), LUPerson MoCo checkpoints (``{"state_dict": {"module.encoder_q.*"}}``) and fast-reid
  baseline models (``backbone.*``); classifier / projection keys (``fc.*``, ``heads.*``) are ignored and
  layer3/layer4 are copied into both branches.

The official names map to ours through :data:`KEY_TABLE` (module prefixes) and :data:`INNER_NAMES` (names inside
a module); :func:`official_to_ours` and :func:`ours_to_official` apply it in either direction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from mdpr.config import Config, ModelConfig
from mdpr.errors import MdprError
from mdpr.fileio import atomic_path, read_torch_file
from mdpr.model.backbone import RESNET_STAGES
from mdpr.model.mdpr import MDPR
from mdpr.runtime import unwrap_model

PathLike = Union[str, "os.PathLike[str]"]
StateDict = Dict[str, torch.Tensor]

FORMAT_NAME = "mdpr"
FORMAT_VERSION = 1

# ----------------------------------------------------------------------------------------------------------------------
# Key translation. "{i}" stands for an index that is carried over unchanged.
# ----------------------------------------------------------------------------------------------------------------------

#: (official module prefix, our module prefix, kind of module). The kind selects the renaming inside the module.
KEY_TABLE: Tuple[Tuple[str, str, str], ...] = (
    # shared stem (the official nn.Sequential indices 2 and 3 are the parameter-free ReLU and max-pool)
    ("generate.backbone.0", "stem.conv1", "same"),
    ("generate.backbone.1", "stem.bn1", "same"),
    ("generate.backbone.4", "stem.layer1", "same"),
    ("generate.backbone.5", "stem.layer2", "same"),
    # Hard Content Branch
    ("generate.backbone_part.0", "hard_branch.layer3", "same"),
    ("generate.backbone_part.1", "hard_branch.layer4", "same"),
    ("generate.embedding_hard_global", "hard_branch.global_embedding", "embedding"),
    ("generate.embedding_hard_part.{i}", "hard_branch.part_embeddings.{i}", "embedding"),
    ("hard_global_head", "hard_branch.global_head", "head"),
    ("hard_part_head.{i}", "hard_branch.part_heads.{i}", "head"),
    # Soft Content Branch
    ("generate.backbone_attn.0", "soft_branch.layer3", "same"),
    ("generate.backbone_attn.1", "soft_branch.layer4", "same"),
    ("generate.embedding_attn_feature4", "soft_branch.layer4_embedding", "embedding"),
    ("generate.em3_1024", "soft_branch.layer3_refine", "embedding"),
    ("generate.embedding_attn_feature3", "soft_branch.layer3_embedding", "embedding"),
    ("generate.attention_maker4", "soft_branch.layer4_attention", "attention"),
    ("generate.up_attn_4_3", "soft_branch.attention_guide", "same"),
    ("generate.attention_maker3", "soft_branch.layer3_attention", "attention"),
    ("generate.attn_bap4.pool", "soft_branch.layer4_bap.pool", "same"),
    ("generate.attn_bap4.embedding_layer.{i}", "soft_branch.layer4_bap.part_embeddings.{i}", "embedding"),
    ("generate.attn_bap3.pool", "soft_branch.layer3_bap.pool", "same"),
    ("generate.attn_bap3.embedding_layer.{i}", "soft_branch.layer3_bap.part_embeddings.{i}", "embedding"),
    ("attn_feature4_head", "soft_branch.layer4_head", "head"),
    ("attn_feature3_head", "soft_branch.layer3_head", "head"),
    ("attn_bap_feature4_head", "soft_branch.layer4_bap_head", "head"),
    ("attn_bap_feature3_head", "soft_branch.layer3_bap_head", "head"),
    # fusion and mutual-distillation predictors
    ("fusion.merge", "fusion.merge_parts", "conv_block"),
    ("fusion.output_part", "fusion.hard", "conv_block"),
    ("fusion.output_attn", "fusion.soft", "conv_block"),
    ("fusion.output", "fusion.joint", "conv_block"),
    ("fusion_feat_head", "fusion_head", "head"),
    ("predictor1", "predictors.hard", "predictor"),
    ("predictor2", "predictors.soft", "predictor"),
)

#: (official, ours) names inside a module of each kind; a name ending in "." renames a sub-module prefix,
#: any other an exact parameter name. "same" modules (ResNet stages, ...) keep their inner names.
INNER_NAMES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "same": (),
    "embedding": (("embedding.", "conv."), ("bn.", "bn.")),
    "attention": (("conv.", "conv1x1."), ("conv3.", "conv3x3."), ("bn.", "bn.")),
    "head": (("weight", "classifier.weight"), ("pool_layer.", "pool."), ("bottleneck.0.", "bnneck.")),
    "conv_block": (("0.", "conv1x1."), ("1.", "conv3x3."), ("2.", "bn.")),
    "predictor": (("0.", "fc1."), ("1.", "bn."), ("3.", "fc2.")),
}


def _compile_table(direction: int) -> List[Tuple[re.Pattern, str, Tuple[Tuple[str, str], ...]]]:
    rows = []
    for row in KEY_TABLE:
        source, target, kind = row[direction], row[1 - direction], row[2]
        pattern = re.compile("^" + re.escape(source).replace(r"\{i\}", r"(\d+)") + r"\.")
        inner = tuple((a, b) if direction == 0 else (b, a) for a, b in INNER_NAMES[kind])
        rows.append((pattern, target, inner))
    return rows


_TO_OURS = _compile_table(0)
_TO_OFFICIAL = _compile_table(1)


def _translate(key: str, rows) -> Optional[str]:
    for pattern, target, inner in rows:
        match = pattern.match(key)
        if not match:
            continue
        prefix = target.replace("{i}", match.group(1)) if match.groups() else target
        rest = key[match.end():]
        if not inner:
            return f"{prefix}.{rest}"
        for source_name, target_name in inner:
            if source_name.endswith("."):
                if rest.startswith(source_name):
                    return f"{prefix}.{target_name}{rest[len(source_name):]}"
            elif rest == source_name:
                return f"{prefix}.{target_name}"
        return None
    return None


def official_to_ours(key: str) -> Optional[str]:
    """Official MDPR state-dict key -> ours (``None`` if the key has no counterpart)."""
    return _translate(key, _TO_OURS)


def ours_to_official(key: str) -> Optional[str]:
    """Our state-dict key -> the official MDPR one (``None`` if the key has no counterpart)."""
    return _translate(key, _TO_OFFICIAL)


def is_official_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith("generate.") for k in state_dict)


def is_mdpr_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith("stem.") for k in state_dict) and any(
        k.startswith(("hard_branch.", "soft_branch.")) for k in state_dict)


def translate_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Tuple[StateDict, List[str]]:
    """Rename an official state dict to our names; returns it and the keys that have no counterpart."""
    out: StateDict = OrderedDict()
    unknown: List[str] = []
    for key, value in state_dict.items():
        ours = official_to_ours(key)
        if ours is None:
            unknown.append(key)
        else:
            out[ours] = value
    return out, unknown


def to_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename our state dict to the official names (e.g. to hand a model to fast-reid tooling)."""
    out: StateDict = OrderedDict()
    for key, value in state_dict.items():
        official = ours_to_official(key)
        if official is None:
            raise ValueError(f"state-dict key {key!r} has no official counterpart")
        out[official] = value
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Architecture inference
# ----------------------------------------------------------------------------------------------------------------------


def _block_count(state_dict: Mapping[str, Any], prefix: str) -> int:
    indices = {int(m.group(1)) for k in state_dict for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(indices) + 1 if indices else 0


def _resnet_layout(state_dict: Mapping[str, Any], stage_prefixes: Sequence[str], where: str) -> Tuple[int, bool]:
    """(depth, ibn) of a ResNet whose four stages live under ``stage_prefixes`` (each ending with '.')."""
    blocks = tuple(_block_count(state_dict, p) for p in stage_prefixes)
    kind = "bottleneck" if f"{stage_prefixes[0]}0.conv3.weight" in state_dict else "basic"
    for depth, layout in RESNET_STAGES.items():
        if layout == (kind, blocks):
            return depth, f"{stage_prefixes[0]}0.bn1.IN.weight" in state_dict
    raise MdprError(f"{where} holds a ResNet with {kind} blocks {list(blocks)} per stage, which is none of the "
                    f"supported depths {', '.join(map(str, RESNET_STAGES))}.")


def infer_model_config(state_dict: Mapping[str, torch.Tensor], where: str = "The checkpoint") -> ModelConfig:
    """Rebuild the :class:`ModelConfig` of an official-format MDPR state dict from its keys and shapes.

    Not recoverable from weights, so left at the official defaults: ``classifier`` ("circle"), ``cls_scale``
    (64), ``cls_margin`` (0.35) and ``last_stride`` (1).
    """
    sd = state_dict
    hard = any(k.startswith("generate.backbone_part.") for k in sd)
    soft = any(k.startswith("generate.backbone_attn.") for k in sd)
    if not (hard or soft):
        raise MdprError(f"{where} has MDPR keys but neither branch (generate.backbone_part / generate.backbone_attn).")
    branch = "generate.backbone_part." if hard else "generate.backbone_attn."
    depth, ibn = _resnet_layout(sd, ["generate.backbone.4.", "generate.backbone.5.", f"{branch}0.", f"{branch}1."], where)
    cfg = ModelConfig(depth=depth, ibn=ibn, branches="both" if hard and soft else ("hard" if hard else "soft"))
    embedding_key = ("generate.embedding_hard_global.embedding.weight" if hard
                     else "generate.embedding_attn_feature4.embedding.weight")
    if embedding_key not in sd:
        raise MdprError(f"{where} lacks {embedding_key}, so its embedding dimension cannot be inferred.")
    cfg.embedding_dim = int(sd[embedding_key].shape[0])
    if hard:
        cfg.num_parts = _block_count(sd, "generate.embedding_hard_part.")
    if soft:
        cfg.num_attention = int(sd["generate.attention_maker4.conv.weight"].shape[0]) - 1
        cfg.attention_guidance = "generate.up_attn_4_3.conv.weight" in sd
    else:
        cfg.attention_guidance = False
    cfg.fusion = any(k.startswith("fusion.") for k in sd)
    cfg.distillation = any(k.startswith("predictor1.") for k in sd)
    classifier_key = "hard_global_head.weight" if hard else "attn_feature4_head.weight"
    cfg.num_classes = int(sd[classifier_key].shape[0]) if classifier_key in sd else 0
    return cfg


# ----------------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------------


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items())
    return dict(state_dict) if not isinstance(state_dict, OrderedDict) else state_dict


def _tensor_dict(obj: Any) -> Optional[Dict[str, torch.Tensor]]:
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in obj.items()):
        return OrderedDict(obj)
    return None


@dataclass
class Checkpoint:
    """What a weights file holds, normalised.

    ``kind``: "mdpr" (our checkpoint, ``state_dict`` in our names, ``config`` set), "official" (MDPR state dict,
    translated to our names; ``config`` inferred) or "backbone" (plain ResNet keys ``conv1.*``, ``layer1.*`` ...).
    """

    kind: str
    state_dict: StateDict
    config: Optional[Config] = None
    classes: Optional[List[Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)  #: keys dropped while normalising (heads of backbone files ...)


_BACKBONE_IGNORED_PREFIXES = ("fc.", "head.", "heads.", "classifier.", "pixel_mean", "pixel_std")


def read_checkpoint(path: PathLike, map_location: Any = "cpu") -> Checkpoint:
    """Read any supported weights file (see the module docstring) into a :class:`Checkpoint`."""
    path = Path(path).expanduser()
    obj = read_torch_file(path, map_location)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise MdprError(f"{path} is an mdpr checkpoint of format version {version!r}, newer than this mdpr "
                            f"understands ({FORMAT_VERSION}); upgrade mdpr.")
        state = _tensor_dict(obj.get("model"))
        if state is None:
            raise MdprError(f"{path} is an mdpr checkpoint without model weights; it is damaged.")
        try:
            config = Config.from_dict(obj.get("config") or {})
        except MdprError as exc:
            raise MdprError(f"{path} holds a configuration this mdpr cannot read ({exc})") from None
        reserved = {"format", "format_version", "model", "config", "classes"}
        return Checkpoint("mdpr", _strip_prefix(state, "module."), config, obj.get("classes"),
                          {k: v for k, v in obj.items() if k not in reserved})

    state = None
    extra: Dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for container in ("model", "state_dict"):  # fast-reid / detectron2, then MoCo / LUPerson / most others
            state = _tensor_dict(obj.get(container))
            if state is not None:
                extra = {k: v for k, v in obj.items() if k != container}
                break
        if state is None:
            state = _tensor_dict(obj)  # a bare state dict (torchvision, IBN-Net releases)
    if state is None:
        raise MdprError(f"{path} holds no state dict of tensors (top-level keys: "
                        f"{_short_list(list(obj)) if isinstance(obj, Mapping) else type(obj).__name__}); pass an mdpr, "
                        f"fast-reid/MDPR, torchvision, IBN-Net or LUPerson checkpoint.")
    state = _strip_prefix(state, "module.")

    if is_official_state_dict(state):
        pixel = {k: state.pop(k) for k in ("pixel_mean", "pixel_std") if k in state}
        translated, unknown = translate_official_state_dict(state)
        config = Config(model=infer_model_config(state, str(path)))
        if len(pixel) == 2:  # older fast-reid models stored the normalisation as persistent buffers
            config.input.pixel_mean = tuple(float(v) for v in pixel["pixel_mean"].flatten())
            config.input.pixel_std = tuple(float(v) for v in pixel["pixel_std"].flatten())
        checkpoint = Checkpoint("official", translated, config, None, extra)
        # keys without a counterpart stay visible as "unexpected" when loading
        checkpoint.state_dict.update((f"<official>{k}", state[k]) for k in unknown)
        return checkpoint
    if is_mdpr_state_dict(state):
        translated = to_official_state_dict({k: v for k, v in state.items() if ours_to_official(k) is not None})
        config = Config(model=infer_model_config(translated, str(path)))
        return Checkpoint("mdpr", state, config, None, extra)

    # backbone initialisation files
    ignored: List[str] = []
    if any(k.startswith("encoder_q.") for k in state):  # MoCo (LUPerson): keep the query encoder only
        ignored += [k for k in state if not k.startswith("encoder_q.")]
        state = OrderedDict((k[len("encoder_q."):], v) for k, v in state.items() if k.startswith("encoder_q."))
    elif any(k.startswith("backbone.") for k in state):  # fast-reid baseline model
        ignored += [k for k in state if not k.startswith("backbone.")]
        state = OrderedDict((k[len("backbone."):], v) for k, v in state.items() if k.startswith("backbone."))
    ignored += [k for k in state if k.startswith(_BACKBONE_IGNORED_PREFIXES)]
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith(_BACKBONE_IGNORED_PREFIXES))
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        raise MdprError(f"{path} is neither an MDPR checkpoint nor a ResNet backbone (keys like "
                        f"{_short_list(list(state), 3)}); pass an mdpr, fast-reid/MDPR, torchvision, IBN-Net or "
                        f"LUPerson checkpoint.")
    return Checkpoint("backbone", state, None, None, extra, ignored)


# ----------------------------------------------------------------------------------------------------------------------
# Loading state dicts into models
# ----------------------------------------------------------------------------------------------------------------------


def _short_list(items: Sequence[Any], limit: int = 8) -> str:
    items = [str(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


@dataclass
class LoadReport:
    """What :func:`load_weights` could not load."""

    missing: List[str] = field(default_factory=list)  #: model keys absent from the file (left as initialised)
    unexpected: List[str] = field(default_factory=list)  #: file keys the model has no place for
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  #: (key, file, model)
    ignored: List[str] = field(default_factory=list)  #: keys deliberately dropped (classifier heads of backbones ...)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_short_list(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {_short_list(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} {list(a)} in the file vs {list(b)} in the model" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} shape mismatch(es): {_short_list(shapes, 4)}")
        return "; ".join(parts) if parts else "all keys matched"


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                 where: str = "The checkpoint", ignore_missing: Sequence[str] = ()) -> LoadReport:
    """Copy ``state_dict`` (our key names) into ``model``.

    Strict: any missing, unexpected or shape-mismatched key raises one :class:`MdprError` listing them (nothing is
    loaded). Non-strict: loads what matches and returns the :class:`LoadReport` of the rest. Model keys starting with
    any of ``ignore_missing`` may be absent.
    """
    own = model.state_dict()
    report = LoadReport()
    usable: StateDict = OrderedDict()
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key.replace("<official>", ""))
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state_dict and not k.startswith(tuple(ignore_missing))]
    if strict and not report.ok:
        raise MdprError(f"{where} does not match the model: {report.summary()}; load it with strict=False "
                        f"(CLI: --no-strict) to use the matching weights only.")
    model.load_state_dict(usable, strict=False)
    return report


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


# ----------------------------------------------------------------------------------------------------------------------
# Public API: load_model / save_checkpoint / fingerprint
# ----------------------------------------------------------------------------------------------------------------------


def load_model(path: PathLike, strict: bool = True, map_location: Any = "cpu") -> Tuple[MDPR, Config]:
    """Load an mdpr or official MDPR (fast-reid) checkpoint; returns ``(model in eval mode, Config)``.

    For official checkpoints the architecture is inferred from the keys and the preprocessing is the official one
    (384x192, bicubic, ImageNet mean/std on the 0..255 scale). With ``strict=False`` mismatching keys are skipped;
    what was skipped is in ``model.load_report`` (a :class:`LoadReport`) and reported through :mod:`warnings`.
    """
    checkpoint = read_checkpoint(path, map_location="cpu")
    if checkpoint.kind == "backbone":
        raise MdprError(f"{path} holds only a ResNet backbone, not an MDPR model; use it to initialise training "
                        f"(model.pretrained={path}) instead of loading it as a model.")
    config = checkpoint.config
    config.model.pretrained = None  # the checkpoint's own weights replace any initialisation
    model = MDPR(config.model, config.input)
    report = load_weights(model, checkpoint.state_dict, strict, where=f"Checkpoint {path}")
    if not report.ok:
        warnings.warn(f"Checkpoint {path} loaded partially: {report.summary()}.", stacklevel=2)
    config.model = dataclasses.replace(model.config)
    model.load_report = report
    model.classes = checkpoint.classes
    if map_location is not None and str(map_location) != "cpu":
        model.to(map_location)
    return model.eval(), config


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

