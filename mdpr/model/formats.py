"""Checkpoint formats: the mdpr format's name and version, the official <-> mdpr key tables, format detection.

The official names map to ours through :data:`KEY_TABLE` (module prefixes) and :data:`INNER_NAMES` (names inside
a module); :func:`official_to_ours` and :func:`ours_to_official` apply it in either direction.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

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


def indexed_count(state_dict: Mapping[str, Any], prefix: str) -> int:
    """How many numbered children ``prefix0.``, ``prefix1.`` ... the keys hold (the highest index + 1)."""
    indices = {int(m.group(1)) for k in state_dict for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(indices) + 1 if indices else 0
