"""Run configuration: plain dataclasses, YAML recipes and ``key=value`` overrides.

A recipe (``mdpr/recipes/<name>.yaml``) is a partial nested mapping of these dataclasses.
``load_config("dukemtmc", ["solver.base_lr=1e-4"])`` returns a fully resolved :class:`Config`;
``config.to_dict()`` is what every run directory and checkpoint stores, and
``Config.from_dict`` reads it back (unknown keys are an error, so typos never pass silently).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, get_args, get_origin, get_type_hints

import yaml

from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_text

RECIPES_DIR = Path(__file__).parent / "recipes"

#: fast-reid's pixel statistics on the 0..255 scale (ImageNet mean/std x 255).
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


@dataclass
class ModelConfig:
    """Architecture of an MDPR model (everything needed to rebuild it from a state dict)."""

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
class InputConfig:
    """Preprocessing and train-time augmentation. Pixel values stay on the 0..255 scale (as fast-reid);
    the model subtracts ``pixel_mean`` and divides by ``pixel_std`` itself."""

    size_train: Tuple[int, int] = (384, 192)  #: (height, width)
    size_test: Tuple[int, int] = (384, 192)
    interpolation: str = "bicubic"
    pixel_mean: Tuple[float, float, float] = IMAGENET_MEAN_255
    pixel_std: Tuple[float, float, float] = IMAGENET_STD_255
    flip_prob: float = 0.5
    padding: int = 10  #: pad then random crop back to size_train; 0 disables
    random_erasing_prob: float = 0.5
    random_patch_prob: float = 0.5
    autoaug_prob: float = 0.0


@dataclass
class DataLoaderConfig:
    batch_size: int = 64  #: images per optimisation step, over all processes
    num_instances: int = 16  #: images per identity in a PK batch
    num_workers: int = 4
    test_batch_size: int = 128
    steps_per_epoch: int = 0  #: optimisation steps per epoch; 0 = len(train) // batch_size (fast-reid)


@dataclass
class LossConfig:
    ce_epsilon: float = 0.1  #: label smoothing
    triplet_margin: float = 0.05
    triplet_hard_mining: bool = True
    triplet_norm_feat: bool = False
    diversity_scale: float = 0.001  #: weight of the attention-mass regulariser (ATTN_DIVERSITY.SCALE)
    diversity: bool = True  #: ATTN_DIVERSITY_LOSS_ENABLE


@dataclass
class SolverConfig:
    optimizer: str = "Adam"
    base_lr: float = 3.5e-4
    weight_decay: float = 5e-4
    weight_decay_norm: float = 5e-4
    bias_lr_factor: float = 1.0
    momentum: float = 0.9
    max_epochs: int = 60
    warmup_iters: int = 2000
    warmup_factor: float = 0.1
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
class TrainConfig:
    seed: int = 0
    eval_period: int = 10  #: epochs between evaluations; 0 = only at the end, -1 = never
    checkpoint_period: int = 10
    log_period: int = 20  #: iterations between log lines / metrics.jsonl records
    sync_bn: bool = False
    eval_flip: bool = False


@dataclass
class Config:
    """Everything that defines a run."""

    recipe: str = ""
    dataset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    dataloader: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        """A plain, YAML/JSON-able nested dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown keys are an error."""
        return _build(cls, data, "config")

    def save_yaml(self, path: Union[str, Path]) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise MdprError(f"Config section '{where}' must be a mapping, got {value!r}.")
        return _build(tp, value, where)
    if origin in (tuple, Tuple, list, List, Sequence):
        if not isinstance(value, (list, tuple)):
            raise MdprError(f"Config value '{where}' must be a list, got {value!r}.")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin in (tuple, Tuple) else items
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise MdprError(f"Config value '{where}' must be {getattr(tp, '__name__', tp)}, got {value!r}.") from None
    return value


def _build(cls: Any, data: Mapping[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MdprError(
            f"Unknown config key(s) {', '.join(where + '.' + k for k in unknown)}; "
            f"valid keys in '{where}' are: {', '.join(sorted(names))}."
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def available_recipes() -> List[str]:
    """Names of the built-in recipes (``mdpr/recipes/*.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_recipe(name_or_path: str) -> Dict[str, Any]:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise MdprError(
            f"Unknown recipe '{name_or_path}'; use one of {', '.join(available_recipes())} or a path to a YAML file."
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MdprError(f"Recipe {path} is not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise MdprError(f"Recipe {path} must be a YAML mapping of config sections.")
    base = data.pop("_base_", None)
    if base:
        merged = _read_recipe(str(base) if Path(str(base)).is_absolute() else str(base))
        return _deep_merge(merged, data)
    return data


def _deep_merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["solver.base_lr=1e-4", "input.size_train=[256,128]"]`` -> nested dict (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MdprError(f"Override '{item}' is not of the form section.key=value (e.g. solver.base_lr=1e-4).")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise MdprError(f"Override '{item}' conflicts with another override of '{p}'.")
        node[parts[-1]] = value
    return out


def load_config(recipe: Optional[str] = None, overrides: Sequence[str] = (), **sections: Any) -> Config:
    """Resolve a recipe (name or YAML path) plus ``key=value`` overrides into a :class:`Config`."""
    data: Dict[str, Any] = _read_recipe(recipe) if recipe else {}
    data = _deep_merge(data, parse_overrides(overrides))
    if sections:
        data = _deep_merge(data, sections)
    cfg = Config.from_dict(data)
    if recipe and not cfg.recipe:
        cfg.recipe = Path(recipe).stem
    return cfg


def load_run_config(source: Union[str, Path, Mapping[str, Any]], overrides: Sequence[str] = ()) -> Config:
    """A run's resolved config (its ``config.yaml`` or a checkpoint's stored dict) with ``overrides`` applied."""
    if isinstance(source, Mapping):
        base = dict(source)
    else:
        try:
            base = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise MdprError(f"The run's config {source} cannot be read ({str(exc).splitlines()[0][:120]}); restore it "
                            "from the run's last.pt or start a new run.") from None
        if not isinstance(base, dict):
            raise MdprError(f"The run's config {source} is not a mapping of settings; restore it or start a new run.")
    return Config.from_dict(_deep_merge(base, parse_overrides(overrides)))
