"""Run configuration: plain dataclasses, YAML recipes and ``key=value`` overrides, validated in one step.

A recipe (``mdpr/recipes/<name>.yaml`` or any YAML file) is a partial nested mapping of these
dataclasses. ``load_config("dukemtmc", ["solver.base_lr=1e-4"])`` returns a fully resolved
:class:`Config`; ``config.to_dict()`` is what every run directory and checkpoint stores, and
``Config.from_dict`` reads it back.

**One validation step.** Every section validates itself when it is constructed (``__post_init__``)
and :class:`Config` adds the rules that join fields of several sections, so a config built from a
recipe, from a checkpoint's stored config, from ``--set`` overrides, from ``Config.from_dict`` or
directly in Python is checked (types, ranges, shapes, cross-field rules) before any work starts.
Code that changes fields afterwards calls :meth:`Config.validate`. Each violation is one
:class:`~mdpr.errors.MdprError` sentence naming the key, e.g. ``input.size_train must be two positive
integers [height, width], got [96].``; :func:`field_rules` lists the rule of every key.

**Unknown keys** are an error that suggests the closest known key (``did you mean solver.base_lr?``).

**Coercion rules** (the same for recipes, stored configs, overrides and Python callers):

* YAML is read with the YAML 1.2 core schema: ``true``/``false`` are booleans, ``1e-4`` is a number;
  YAML 1.1's ``yes``/``no``/``on``/``off``, sexagesimal numbers and dates stay strings.
* bool fields: ``true``/``false``, the integers 0/1, or the strings ``"true"``/``"false"``/``"1"``/``"0"``
  (any case); nothing else (``yes`` is refused, not guessed).
* int fields: integers, whole floats (``1e3`` -> 1000), strings of decimal digits (``"3"`` -> 3);
  booleans and fractional numbers are refused.
* float fields: integers, floats and numeric strings (``"3.5e-4"``); NaN and infinities are refused.
* str fields: strings; integers and floats become their text (a dataset called ``2024``).
* optional fields (``model.pretrained``): ``null``, ``~`` or an empty value mean None.
* list-valued fields (``input.size_train``, ``solver.steps``): a YAML list (``[256,128]``); fixed-length
  fields need exactly that many items. They are stored as tuples.

**Inheritance.** A recipe may name ``_base_``: a built-in recipe name (``market1501``) or a YAML path,
resolved relative to the folder of the recipe file that names it (absolute paths as given). The
recipe's own keys override the base's; its name is its own ``recipe:`` key, else its file name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_text

RECIPES_DIR = Path(__file__).parent / "recipes"

#: fast-reid's pixel statistics on the 0..255 scale (ImageNet mean/std x 255).
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)

#: Output stride of the backbone before layer4 (layer4 adds ``model.last_stride``).
BACKBONE_STRIDE = 16

BRANCHES = ("both", "hard", "soft")
CLASSIFIERS = ("circle", "linear")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
OPTIMIZERS = ("Adam", "AdamW", "SGD")
SCHEDULERS = ("cosine", "multistep")


class _Section:
    """Base of the config sections: validate (and normalise) every field when constructed."""

    _name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _normalise(self, self._name)


@dataclass
class ModelConfig(_Section):
    """Architecture of an MDPR model (everything needed to rebuild it from a state dict)."""

    _name: ClassVar[str] = "model"

    backbone: str = "resnet"  #: backbone family (mdpr.model.backbone registry); "resnet": ResNet(-IBN-a) of `depth`
    depth: int = 50  #: ResNet depth: 18, 34, 50, 101 or 152
    ibn: bool = True  #: IBN-a in layer1..layer3 (as fast-reid's WITH_IBN)
    last_stride: int = 1
    embedding_dim: int = 512  #: BACKBONE.EMBEDDING_DIM of the official code
    num_parts: int = 2  #: uniform horizontal stripes of the Hard Content Branch (PART_NUM)
    num_attention: int = 2  #: attention maps of the Soft Content Branch, background excluded (ATTN_NUM)
    num_classes: int = 0  #: training identities (classifier rows); 0 = no classifier (inference only)
    attention_guidance: bool = True  #: layer3 attention guided by layer4's (ATTN_GUIDED)
    fusion: bool = True  #: fusion module and its embedding (FUSION_ENABLE)
    distillation: bool = True  #: mutual distillation predictors (DISTILLATION_ENABLE)
    branches: str = "both"  #: "both", "hard" (Hard Content Branch only) or "soft" (Soft Content Branch only)
    classifier: str = "circle"  #: "circle" (CircleSoftmax) or "linear"
    cls_scale: float = 64.0
    cls_margin: float = 0.35
    pretrained: Optional[str] = None  #: backbone initialisation (torchvision / IBN-Net / LUPerson / fast-reid file)
    #: initialisation of the recipe's reference run: imagenet, lup_moco_r101 (see mdpr.model.zoo), a file, or none
    init: str = "none"


@dataclass
class InputConfig(_Section):
    """Preprocessing and train-time augmentation. Pixel values stay on the 0..255 scale (as fast-reid);
    the model subtracts ``pixel_mean`` and divides by ``pixel_std`` itself."""

    _name: ClassVar[str] = "input"

    size_train: Tuple[int, int] = (384, 192)  #: (height, width)
    size_test: Tuple[int, int] = (384, 192)
    interpolation: str = "bicubic"
    pixel_mean: Tuple[float, float, float] = IMAGENET_MEAN_255
    pixel_std: Tuple[float, float, float] = IMAGENET_STD_255
    flip_prob: float = 0.5
    padding: int = 10  #: pad then random crop back to size_train; 0 disables
    random_erasing_prob: float = 0.5
    random_patch_prob: float = 0.5
    #: RandomPatch's pool: the last this many patches of a data-loader worker (fast-reid: 1000) ...
    random_patch_pool: int = 1000
    #: ... pasted only once the pool holds this many (fast-reid: 100)
    random_patch_min_pool: int = 100
    autoaug_prob: float = 0.0


@dataclass
class DataLoaderConfig(_Section):
    _name: ClassVar[str] = "dataloader"

    batch_size: int = 64  #: images per optimizer update over all processes (fast-reid's IMS_PER_BATCH)
    #: images of one forward/backward pass of one process (BatchNorm statistics and triplet mining);
    #: 0 = batch_size / processes (no accumulation). With N processes each update accumulates
    #: batch_size / (N * process_batch) such steps per process.
    process_batch: int = 0
    num_instances: int = 16  #: images per identity in a PK batch
    num_workers: int = 4
    test_batch_size: int = 128
    steps_per_epoch: int = 0  #: optimizer updates per epoch; 0 = len(train) // batch_size (fast-reid)


@dataclass
class LossConfig(_Section):
    _name: ClassVar[str] = "loss"

    ce_epsilon: float = 0.1  #: label smoothing
    triplet_margin: float = 0.05
    triplet_hard_mining: bool = True
    triplet_norm_feat: bool = False
    diversity_scale: float = 0.001  #: weight of the attention-mass regulariser (ATTN_DIVERSITY.SCALE)
    diversity: bool = True  #: ATTN_DIVERSITY_LOSS_ENABLE


@dataclass
class SolverConfig(_Section):
    _name: ClassVar[str] = "solver"

    optimizer: str = "Adam"
    base_lr: float = 3.5e-4
    weight_decay: float = 5e-4
    weight_decay_norm: float = 5e-4
    bias_lr_factor: float = 1.0
    momentum: float = 0.9
    max_epochs: int = 60
    warmup_iters: int = 2000
    warmup_factor: float = 0.1
    #: fast-reid's DELAY_EPOCHS: the main scheduler starts stepping only after this many epochs
    delay_epochs: int = 0
    scheduler: str = "cosine"  #: "cosine" (CosineAnnealingLR) or "multistep"
    eta_min_lr: float = 1e-7
    steps: Tuple[int, ...] = (40, 90)
    gamma: float = 0.1
    amp: bool = True  #: mixed precision (used on GPU only)
    grad_clip: float = 0.0
    #: split every step's batch into this many identity-aligned chunks, forward/backward them one after
    #: another and average the gradients: what that many DDP processes compute, on one device
    grad_accumulation: int = 1


@dataclass
class TrainConfig(_Section):
    _name: ClassVar[str] = "train"

    seed: int = 0
    eval_period: int = 10  #: epochs between evaluations; 0 = only at the end, -1 = never
    checkpoint_period: int = 10
    log_period: int = 20  #: iterations between log lines / metrics.jsonl records
    sync_bn: bool = False
    eval_flip: bool = False


@dataclass
class Config:
    """Everything that defines a run (validated when built; see the module docstring)."""

    recipe: str = ""
    dataset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    dataloader: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _normalise(self, "")
        _check_cross_field(self)

    def validate(self) -> Config:
        """Check every field and cross-field rule again (after fields were changed in place); returns self."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if isinstance(section, _Section):
                _normalise(section, section._name)
        self.__post_init__()
        return self

    def to_dict(self) -> Dict[str, Any]:
        """A plain, YAML/JSON-able nested dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise MdprError(f"A config must be a mapping of sections (model, input, ...), got {_show(data)}.")
        built: Config = _build(cls, data, "")
        return built

    def save_yaml(self, path: Union[str, Path]) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """What a field must be (``text`` completes "KEY must be ...") and the check of a coerced value."""

    text: str
    check: Callable[[Any], bool] = lambda v: True


def _ints_between(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi


def _probability(v: float) -> bool:
    return 0.0 <= v <= 1.0


def _choice(options: Sequence[str], case: bool = True) -> Rule:
    allowed = set(options) if case else {o.lower() for o in options}
    return Rule(f"one of {', '.join(options)}", lambda v: (v if case else v.lower()) in allowed)


_MAX_SIDE = 8192
_MAX_BATCH = 65536
_BOOL = Rule("true or false")
_PROB = Rule("a probability between 0 and 1", _probability)
_NONNEG = Rule("a number >= 0", lambda v: v >= 0)
_POSITIVE = Rule("a number > 0", lambda v: v > 0)
_SIZE = Rule(f"two positive integers [height, width] up to {_MAX_SIDE}",
             lambda v: all(1 <= s <= _MAX_SIDE for s in v))

_RULES: Dict[str, Rule] = {
    "recipe": Rule("a string"),
    "dataset": Rule("a string (a registered dataset name or a manifest path)"),
    "model.backbone": Rule("a backbone family name (letters, digits, '-', '_'; 'resnet' is built in)",
                           lambda v: re.fullmatch(r"[A-Za-z][\w-]{0,63}", v) is not None),
    "model.depth": Rule("a positive integer (a ResNet depth: 18, 34, 50, 101 or 152)", lambda v: v >= 1),
    "model.ibn": _BOOL,
    "model.last_stride": Rule("1 or 2", lambda v: v in (1, 2)),
    "model.embedding_dim": Rule(f"an integer from 1 to {_MAX_BATCH}", _ints_between(1, _MAX_BATCH)),
    "model.num_parts": Rule("an integer from 1 to 64", _ints_between(1, 64)),
    "model.num_attention": Rule("an integer from 1 to 64", _ints_between(1, 64)),
    "model.num_classes": Rule("an integer >= 0 (0 = no classifier)", lambda v: v >= 0),
    "model.attention_guidance": _BOOL,
    "model.fusion": _BOOL,
    "model.distillation": _BOOL,
    "model.branches": _choice(BRANCHES),
    "model.classifier": _choice(CLASSIFIERS),
    "model.cls_scale": _POSITIVE,
    "model.cls_margin": Rule("a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "model.pretrained": Rule("a file path or null"),
    "model.init": Rule("none, a named initialisation (imagenet, lup_moco_r50, lup_moco_r101, lup_moco_r152) or a file path"),
    "input.size_train": _SIZE,
    "input.size_test": _SIZE,
    "input.interpolation": _choice(INTERPOLATIONS, case=False),
    "input.pixel_mean": Rule("three numbers [R, G, B] on the 0..255 scale", lambda v: all(-255 <= x <= 510 for x in v)),
    "input.pixel_std": Rule("three positive numbers [R, G, B] on the 0..255 scale", lambda v: all(x > 0 for x in v)),
    "input.flip_prob": _PROB,
    "input.padding": Rule(f"an integer number of pixels from 0 to {_MAX_SIDE}", _ints_between(0, _MAX_SIDE)),
    "input.random_erasing_prob": _PROB,
    "input.random_patch_prob": _PROB,
    "input.random_patch_pool": Rule("an integer from 1 to 100000 (patches)", _ints_between(1, 100_000)),
    "input.random_patch_min_pool": Rule("an integer >= 0 (patches)", lambda v: v >= 0),
    "input.autoaug_prob": _PROB,
    "dataloader.batch_size": Rule(f"an integer from 1 to {_MAX_BATCH} (images per optimizer update)",
                                  _ints_between(1, _MAX_BATCH)),
    "dataloader.process_batch": Rule(f"0 (batch_size / processes) or a number of images from 1 to {_MAX_BATCH}",
                                     _ints_between(0, _MAX_BATCH)),
    "dataloader.num_instances": Rule(f"an integer from 1 to {_MAX_BATCH} (images per identity)",
                                     _ints_between(1, _MAX_BATCH)),
    "dataloader.num_workers": Rule("an integer from 0 to 256 (data-loader worker processes)", _ints_between(0, 256)),
    "dataloader.test_batch_size": Rule(f"an integer from 1 to {_MAX_BATCH}", _ints_between(1, _MAX_BATCH)),
    "dataloader.steps_per_epoch": Rule("0 (the training images / batch_size) or a positive number of steps",
                                       _ints_between(0, 10**9)),
    "loss.ce_epsilon": Rule("a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "loss.triplet_margin": _NONNEG,
    "loss.triplet_hard_mining": _BOOL,
    "loss.triplet_norm_feat": _BOOL,
    "loss.diversity_scale": _NONNEG,
    "loss.diversity": _BOOL,
    "solver.optimizer": _choice(OPTIMIZERS, case=False),
    "solver.base_lr": Rule("a learning rate > 0", lambda v: v > 0),
    "solver.weight_decay": _NONNEG,
    "solver.weight_decay_norm": _NONNEG,
    "solver.bias_lr_factor": _POSITIVE,
    "solver.momentum": Rule("a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "solver.max_epochs": Rule("an integer from 1 to 100000 (epochs)", _ints_between(1, 100_000)),
    "solver.warmup_iters": Rule("an integer >= 0 (iterations)", _ints_between(0, 10**9)),
    "solver.warmup_factor": Rule("a number in [0, 1]", _probability),
    "solver.delay_epochs": Rule("an integer >= 0 (epochs)", _ints_between(0, 100_000)),
    "solver.scheduler": _choice(SCHEDULERS),
    "solver.eta_min_lr": _NONNEG,
    "solver.steps": Rule("a list of increasing positive epoch numbers",
                         lambda v: all(s >= 1 for s in v) and all(a < b for a, b in zip(v, v[1:]))),
    "solver.gamma": _POSITIVE,
    "solver.amp": _BOOL,
    "solver.grad_clip": Rule("a number >= 0 (0 = no clipping)", lambda v: v >= 0),
    "solver.grad_accumulation": Rule("an integer from 1 to 1024", _ints_between(1, 1024)),
    "train.seed": Rule("an integer from 0 to 2**63 - 1", _ints_between(0, 2**63 - 1)),
    "train.eval_period": Rule("-1 (never), 0 (after the last epoch) or a positive number of epochs",
                              lambda v: v >= -1),
    "train.checkpoint_period": Rule("0 (last.pt only) or a positive number of epochs", lambda v: v >= 0),
    "train.log_period": Rule("a positive number of iterations", lambda v: v >= 1),
    "train.sync_bn": _BOOL,
    "train.eval_flip": _BOOL,
}


def field_rules() -> Dict[str, str]:
    """Every config key (``section.field``) and what its value must be."""
    return {key: rule.text for key, rule in _RULES.items()}


def config_keys() -> List[str]:
    """Every config key, ``section.field`` (top-level fields without a section)."""
    return list(_RULES)


def _check_cross_field(cfg: Config) -> None:
    """Rules that join several fields (each violation one sentence naming the keys)."""
    d, inp, m, s = cfg.dataloader, cfg.input, cfg.model, cfg.solver
    k = d.num_instances
    if d.batch_size % k:
        raise MdprError(
            f"dataloader.batch_size ({d.batch_size}) must be a multiple of dataloader.num_instances ({k}), so that "
            f"every batch holds whole identities; use for example {_nearest_multiples(d.batch_size, k)}."
        )
    if d.process_batch:
        if d.process_batch % k:
            raise MdprError(
                f"dataloader.process_batch ({d.process_batch}) must be a multiple of dataloader.num_instances ({k}), "
                f"so that every process step holds whole identities; use for example "
                f"{_nearest_multiples(d.process_batch, k)}."
            )
        if d.process_batch > d.batch_size or d.batch_size % d.process_batch:
            raise MdprError(
                f"dataloader.batch_size ({d.batch_size}) must be a whole number of process steps of "
                f"dataloader.process_batch ({d.process_batch}) images; use for example "
                f"{_nearest_multiples(d.batch_size, d.process_batch)} or dataloader.process_batch=0."
            )
        if s.grad_accumulation > 1:
            raise MdprError(
                "solver.grad_accumulation and dataloader.process_batch both split the batch into steps; set "
                "solver.grad_accumulation=1 and let dataloader.process_batch define the steps."
            )
    identities = d.batch_size // k
    if identities % s.grad_accumulation:
        raise MdprError(
            f"solver.grad_accumulation ({s.grad_accumulation}) must divide the {identities} identities of a batch "
            f"(dataloader.batch_size {d.batch_size} / dataloader.num_instances {k}) into equal chunks."
        )
    if inp.random_patch_min_pool > inp.random_patch_pool:
        raise MdprError(
            f"input.random_patch_min_pool ({inp.random_patch_min_pool}) must not exceed input.random_patch_pool "
            f"({inp.random_patch_pool}), or no patch would ever be pasted."
        )
    if s.eta_min_lr > s.base_lr:
        raise MdprError(
            f"solver.eta_min_lr ({s.eta_min_lr:g}) must not exceed solver.base_lr ({s.base_lr:g}); the schedule "
            f"decays from base_lr down to eta_min_lr."
        )
    if s.delay_epochs >= s.max_epochs:
        raise MdprError(
            f"solver.delay_epochs ({s.delay_epochs}) must be less than solver.max_epochs ({s.max_epochs}), or the "
            f"learning-rate schedule never starts."
        )
    stride = BACKBONE_STRIDE * m.last_stride
    for key in ("size_train", "size_test"):
        height = getattr(inp, key)[0]
        if height < stride * m.num_parts:
            raise MdprError(
                f"input.{key} height {height} is too low for model.num_parts={m.num_parts} stripes of the "
                f"{stride}x downsampled feature map; use a height of at least {stride * m.num_parts}."
            )


def _nearest_multiples(value: int, unit: int) -> str:
    below = max(unit, value // unit * unit)
    above = below + unit if below <= value else below
    return f"{below} or {above}" if below != above else str(below)


# --------------------------------------------------------------------------------------------- coercion

T = TypeVar("T")

_INT_TEXT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT_TEXT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}
_HINTS: Dict[type, Dict[str, Any]] = {}


class _Invalid(Exception):
    """A value that does not fit its field (turned into an MdprError naming the key)."""


def _hints(cls: type) -> Dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _show(value: Any, limit: int = 60, depth: int = 0) -> str:
    """A short, readable rendering of a user's value for an error sentence."""
    if depth > 3 and isinstance(value, (list, tuple, Mapping)):
        text = "..."  # deep or self-referencing (YAML anchors) structures
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v, limit, depth + 1) for v in value[:limit]) + "]"
    elif isinstance(value, Mapping):
        items = list(value.items())[:limit]
        text = "{" + ", ".join(f"{k}: {_show(v, limit, depth + 1)}" for k, v in items) + "}"
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise _Invalid


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.match(value.strip()):
        return int(value.strip())
    raise _Invalid


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, (int, float)):
        try:
            out = float(value)
        except OverflowError:
            raise _Invalid from None
    elif isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        out = float(value.strip())
    else:
        raise _Invalid
    if not math.isfinite(out):
        raise _Invalid
    return out


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Invalid


_SCALARS: Dict[Any, Callable[[Any], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to the field type ``tp`` by the rules of the module docstring."""
    origin = get_origin(tp)
    if origin is Union:  # Optional[X]
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], key)
    if isinstance(tp, type) and (issubclass(tp, _Section) or tp is Config):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise MdprError(f"{key} must be a mapping of its keys (e.g. {_example_key(tp)}), got {_show(value)}.")
        return _build(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Invalid
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_SCALARS[args[0]](v) for v in value)
        if len(value) != len(args):
            raise _Invalid
        return tuple(_SCALARS[a](v) for a, v in zip(args, value))
    if tp in _SCALARS:
        return _SCALARS[tp](value)
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in this module


def _example_key(cls: type) -> str:
    name = getattr(cls, "_name", "")
    first = dataclasses.fields(cls)[0].name
    return f"{name}.{first}" if name else first


def _normalise(obj: Any, prefix: str) -> None:
    """Coerce every field of the dataclass instance ``obj`` to its type and check its rule, in place."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        tp = _hints(type(obj))[f.name]
        rule = _RULES.get(key)
        try:
            coerced = _coerce(value, tp, key)
            if rule is not None and not rule.check(coerced):
                raise _Invalid
        except _Invalid:
            assert rule is not None, key
            raise MdprError(f"{key} must be {rule.text}, got {_show(value)}.") from None
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)


def _build(cls: Type[T], data: Mapping[str, Any], where: str) -> T:
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for raw, value in data.items():
        if raw not in names:
            key = f"{where}.{raw}" if where else str(raw)
            inner = [str(k) for k in value] if isinstance(value, Mapping) else []
            raise MdprError(_unknown_key_message(key, where, names, inner))
    return cls(**{str(k): v for k, v in data.items()})


def _unknown_key_message(key: str, where: str, names: Sequence[str], inner: Sequence[str] = ()) -> str:
    known = [k for k in _all_keys() if k.startswith(f"{where}.")] if where else _all_keys()
    close = []
    if inner:  # a mistyped section (`slover.base_lr`): suggest the whole key
        close = difflib.get_close_matches(f"{key}.{inner[0]}", [k for k in known if "." in k], n=1, cutoff=0.6)
        key = f"{key}.{inner[0]}" if close else key
    close = close or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:  # a mistyped section: compare the field part against every section's fields
        field_part = key.rpartition(".")[2]
        close = difflib.get_close_matches(field_part, [k.rpartition(".")[2] for k in _all_keys()], n=1, cutoff=0.8)
        close = [k for k in _all_keys() if close and k.rpartition(".")[2] == close[0]][:1]
    if close:
        return f"Unknown config key {key}; did you mean {close[0]}?"
    scope = f"in {where} are" if where else "are"
    return f"Unknown config key {key}; the keys {scope}: {', '.join(names)}."


def _all_keys() -> List[str]:
    """Every key of every depth: sections and fields (``solver``, ``solver.base_lr``, ``recipe``)."""
    sections = [f.name for f in dataclasses.fields(Config) if isinstance(f.default_factory, type)]
    return sorted(set(_RULES) | set(sections))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------- YAML


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars (see the coercion rules)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                           "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_decimal_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    return int(str(loader.construct_scalar(node)), 10)  # YAML 1.2: 010 is ten, not octal eight


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_decimal_int)


def load_yaml(text: str) -> Any:
    """Parse YAML text with the coercion rules' YAML 1.2 scalars (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def read_config_file(path: Union[str, Path]) -> Dict[str, Any]:
    """The nested mapping stored in a ``config.yaml`` (one MdprError sentence when unreadable)."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise MdprError(f"Cannot read the config file {path} ({exc.__class__.__name__}: {exc}).") from None
    except yaml.YAMLError as exc:
        raise MdprError(f"The config file {path} is not valid YAML ({_yaml_problem(exc)}).") from None
    if not isinstance(data, dict):
        raise MdprError(f"The config file {path} must be a YAML mapping of config sections, got {_show(data)}.")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


# --------------------------------------------------------------------------------------------- recipes


def available_recipes() -> List[str]:
    """Names of the built-in recipes (``mdpr/recipes/*.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def _recipe_path(name: str, relative_to: Optional[Path]) -> Path:
    """The file of a recipe reference: a path (relative to ``relative_to``'s folder when given) or a name."""
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = Path(os.path.normpath(relative_to.parent / path))
        if not path.is_file():
            where = f" (named by _base_ in {relative_to})" if relative_to is not None else ""
            raise MdprError(f"Recipe file {path}{where} does not exist.")
        return path
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        where = f" named by _base_ in {relative_to}" if relative_to is not None else ""
        raise MdprError(
            f"Unknown recipe '{name}'{where}; use one of {', '.join(available_recipes())} or a path to a YAML file."
        )
    return path


def read_recipe(name_or_path: str) -> Dict[str, Any]:
    """A recipe's nested mapping with its ``_base_`` chain resolved (see the module docstring)."""
    return _read_recipe_file(_recipe_path(str(name_or_path), None), ())


def _read_recipe_file(path: Path, chain: Tuple[Path, ...]) -> Dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        raise MdprError(f"Recipe {path} inherits from itself through _base_ ({' -> '.join(map(str, chain))}).")
    data = read_config_file(path)
    base = data.pop("_base_", None)
    data.setdefault("recipe", path.stem)
    if base is None or base == "":
        return data
    if not isinstance(base, str):
        raise MdprError(f"_base_ in recipe {path} must be one recipe name or YAML path, got {_show(base)}.")
    merged = _read_recipe_file(_recipe_path(base, path), (*chain, resolved))
    return deep_merge(merged, data)


def _read_recipe(name_or_path: str) -> Dict[str, Any]:
    return read_recipe(name_or_path)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` with ``update`` applied: nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


_deep_merge = deep_merge  # the name earlier callers import


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["solver.base_lr=1e-4", "input.size_train=[256,128]"]`` -> nested dict (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p.strip() or p != p.strip() for p in parts):
            raise MdprError(
                f"Override {_show(item)} is not of the form section.key=value (e.g. solver.base_lr=1e-4)."
            )
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for depth, p in enumerate(parts[:-1]):
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise MdprError(
                    f"Override {_show(item)} sets a key inside {'.'.join(parts[: depth + 1])}, which another "
                    f"override sets to a value."
                )
            node = child
        if isinstance(node.get(parts[-1]), dict) and parts[-1] in node:
            raise MdprError(f"Override {_show(item)} replaces {key}, whose keys other overrides set.")
        node[parts[-1]] = value
    return out


def load_config(recipe: Optional[str] = None, overrides: Sequence[str] = (), **sections: Any) -> Config:
    """Resolve a recipe (name or YAML path) plus ``key=value`` overrides into a validated :class:`Config`."""
    data: Dict[str, Any] = read_recipe(recipe) if recipe else {}
    data = deep_merge(data, parse_overrides(overrides))
    if sections:
        data = deep_merge(data, sections)
    return Config.from_dict(data)


def load_run_config(source: Union[str, Path, Mapping[str, Any]], overrides: Sequence[str] = ()) -> Config:
    """A run's resolved config (its ``config.yaml`` or a checkpoint's stored dict) with ``overrides`` applied."""
    if isinstance(source, Mapping):
        base = dict(source)
    else:
        path = Path(source)
        try:
            base = load_yaml(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise MdprError(f"The run's config {source} cannot be read ({exc.__class__.__name__}); restore it "
                            "from the run's last.pt or start a new run.") from None
        except yaml.YAMLError as exc:
            raise MdprError(f"The run's config {source} is not valid YAML ({_yaml_problem(exc)}); restore it "
                            "from the run's last.pt or start a new run.") from None
        if not isinstance(base, dict):
            raise MdprError(f"The run's config {source} is not a mapping of settings; restore it or start a new run.")
    return Config.from_dict(deep_merge(base, parse_overrides(overrides)))
