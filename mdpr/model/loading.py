"""Reading weights files (every supported format) and loading them into models, with a report of what did not fit.

Formats read (all through :func:`mdpr.fileio.read_torch_file`, i.e. ``torch.load(..., weights_only=True)``):

* **mdpr** checkpoints: ``{"format": "mdpr", "format_version": 1, "mdpr_version", "model": state_dict,
  "config": Config.to_dict(), "classes": [...], ...training state}`` (our key names);
* **official MDPR / fast-reid** checkpoints: ``{"model": state_dict, ...}`` with the official key names
  (``generate.backbone.0.weight`` ...), optionally ``module.``-prefixed (DistributedDataParallel); the
  architecture (depth, IBN, embedding dim, parts, attention maps, switches, classes) is inferred from the keys;
* **backbone initialisations** (``ModelConfig.pretrained``): torchvision ImageNet ResNets, IBN-Net releases
  (``resnet50_ibn_a``), LUPerson MoCo checkpoints (``{"state_dict": {"module.encoder_q.*"}}``) and fast-reid
  baseline models (``backbone.*``); classifier / projection keys (``fc.*``, ``heads.*``) are ignored
  (see :mod:`mdpr.model.init` for how they initialise a model).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from mdpr.config import Config, ModelConfig
from mdpr.errors import MdprError
from mdpr.fileio import read_torch_file
from mdpr.model.backbone import BackboneFamily, BackboneParts, backbone_families, get_backbone_family
from mdpr.model.formats import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PathLike,
    StateDict,
    indexed_count,
    is_mdpr_state_dict,
    is_official_state_dict,
    ours_to_official,
    translate_official_state_dict,
)
from mdpr.model.network import MDPR

# ----------------------------------------------------------------------------------------------------------------------
# Architecture inference
# ----------------------------------------------------------------------------------------------------------------------


def _under(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _recognise(parts_of: Callable[[BackboneFamily], BackboneParts],
               where: str) -> Optional[Tuple[BackboneFamily, Dict[str, Any]]]:
    """The first registered family whose ``infer`` recognises its ``parts_of(family)``, with the settings it read."""
    for name in backbone_families():
        family = get_backbone_family(name)
        if family.infer is not None:
            settings = family.infer(parts_of(family), where)
            if settings is not None:
                return family, settings
    return None


def recognise_backbone_file(state_dict: Mapping[str, torch.Tensor],
                            where: str = "The file") -> Optional[Tuple[BackboneFamily, Dict[str, Any]]]:
    """Which registered family (and settings) a whole-backbone state dict belongs to, or None."""
    return _recognise(lambda family: family.split_file(state_dict)[0], where)


def infer_model_config(state_dict: Mapping[str, torch.Tensor], where: str = "The checkpoint") -> ModelConfig:
    """Rebuild the :class:`ModelConfig` of an MDPR state dict (official or our key names) from its keys and shapes.

    The backbone family and its settings come from the first registered family that recognises the stem and the
    stages. Not recoverable from weights, so left at the official defaults: ``classifier`` ("circle"), ``cls_scale``
    (64), ``cls_margin`` (0.35) and ``last_stride`` (1).
    """
    sd: Mapping[str, torch.Tensor] = state_dict
    if is_official_state_dict(state_dict):
        sd = translate_official_state_dict(state_dict)[0]
    hard = any(k.startswith("hard_branch.") for k in sd)
    soft = any(k.startswith("soft_branch.") for k in sd)
    if not (hard or soft):
        raise MdprError(f"{where} has MDPR keys but neither branch (hard_branch / soft_branch; officially "
                        f"generate.backbone_part / generate.backbone_attn).")
    branch = "hard_branch." if hard else "soft_branch."
    parts = (_under(sd, "stem."), _under(sd, f"{branch}layer3."), _under(sd, f"{branch}layer4."))
    found = _recognise(lambda family: parts, where)
    if found is None:
        raise MdprError(f"{where} holds a backbone that none of the registered backbone families "
                        f"({', '.join(backbone_families())}) recognises; register its family with "
                        f"mdpr.model.register_backbone_family (with infer=) or load an mdpr checkpoint, which "
                        f"records model.backbone.")
    family, settings = found
    cfg = dataclasses.replace(ModelConfig(backbone=family.name), **settings,
                              branches="both" if hard and soft else ("hard" if hard else "soft"))
    embedding_key = f"{branch}global_embedding.conv.weight" if hard else f"{branch}layer4_embedding.conv.weight"
    if embedding_key not in sd:
        raise MdprError(f"{where} lacks {embedding_key} (officially {ours_to_official(embedding_key)}), so its "
                        f"embedding dimension cannot be inferred.")
    cfg.embedding_dim = int(sd[embedding_key].shape[0])
    if hard:
        cfg.num_parts = indexed_count(sd, "hard_branch.part_embeddings.")
    if soft:
        cfg.num_attention = int(sd["soft_branch.layer4_attention.conv1x1.weight"].shape[0]) - 1
        cfg.attention_guidance = "soft_branch.attention_guide.conv.weight" in sd
    else:
        cfg.attention_guidance = False
    cfg.fusion = any(k.startswith("fusion.") for k in sd)
    cfg.distillation = any(k.startswith("predictors.") for k in sd)
    classifier_key = f"{branch}global_head.classifier.weight" if hard else f"{branch}layer4_head.classifier.weight"
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
    translated to our names; ``config`` inferred), "backbone" (a whole backbone that a registered family recognises,
    e.g. plain ResNet keys ``conv1.*``, ``layer1.*`` ...; ``family`` and ``family_settings`` say which) or "unknown"
    (tensors no family recognises: usable only as the initialisation of a family without ``infer``).
    """

    kind: str
    state_dict: StateDict
    config: Optional[Config] = None
    classes: Optional[List[Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)  #: keys dropped while normalising (heads of backbone files ...)
    family: Optional[str] = None  #: backbone files: the family that recognised the keys
    family_settings: Dict[str, Any] = field(default_factory=dict)  #: ... and its settings (``{"depth": 50, ...}``)


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
        config = Config(model=infer_model_config(translated, str(path)))
        if len(pixel) == 2:  # older fast-reid models stored the normalisation as persistent buffers
            config.input.pixel_mean = _rgb(pixel["pixel_mean"])
            config.input.pixel_std = _rgb(pixel["pixel_std"])
        checkpoint = Checkpoint("official", translated, config, None, extra)
        # keys without a counterpart stay visible as "unexpected" when loading
        checkpoint.state_dict.update((f"<official>{k}", state[k]) for k in unknown)
        return checkpoint
    if is_mdpr_state_dict(state):
        return Checkpoint("mdpr", state, Config(model=infer_model_config(state, str(path))), None, extra)

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
    checkpoint = Checkpoint("backbone", state, None, None, extra, ignored)
    found = recognise_backbone_file(state, str(path))
    if found is None:
        checkpoint.kind = "unknown"
    else:
        checkpoint.family, checkpoint.family_settings = found[0].name, found[1]
    return checkpoint


def describe_backbone_file(checkpoint: Checkpoint) -> str:
    """``"ResNet-50-IBN-a backbone"`` for a recognised backbone file, ``"backbone"`` otherwise."""
    if checkpoint.family is None:
        return "backbone"
    family = get_backbone_family(checkpoint.family)
    return f"{family.title(family_config(family, checkpoint.family_settings))} backbone"


def family_config(family: BackboneFamily, settings: Mapping[str, Any], base: Optional[ModelConfig] = None) -> ModelConfig:
    """``base`` (default: the defaults) with ``model.backbone`` set to ``family`` and its ``settings`` applied."""
    return dataclasses.replace(base or ModelConfig(), backbone=family.name, **settings)


def _rgb(values: torch.Tensor) -> Tuple[float, float, float]:
    flat = [float(v) for v in values.flatten()]
    return flat[0], flat[1], flat[2]


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
        raise MdprError(f"{where} does not match the model: {report.summary()}; pass the checkpoint of this "
                        "architecture (its model.* settings), or load it with strict=False (Python) to use the "
                        "matching weights only.")
    model.load_state_dict(usable, strict=False)
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
        held = describe_backbone_file(checkpoint)
        raise MdprError(f"{path} holds only a {held}, not an MDPR model; use it to initialise training "
                        f"(model.pretrained={path}) instead of loading it as a model.")
    config = checkpoint.config
    if checkpoint.kind == "unknown" or config is None:
        raise MdprError(f"{path} is neither an MDPR checkpoint nor a backbone that a registered family recognises "
                        f"(keys like {_short_list(list(checkpoint.state_dict), 3)}); pass an mdpr, fast-reid/MDPR, "
                        f"torchvision, IBN-Net or LUPerson checkpoint.")
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

