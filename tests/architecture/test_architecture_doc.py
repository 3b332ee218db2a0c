"""docs/architecture.md stays true: every path it names exists, every unit of the layer map is described."""

from __future__ import annotations

import re
from pathlib import Path

from layermap import LAYERS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def test_every_path_named_in_the_architecture_doc_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:mdpr|tests|docs|benchmarks)/[\w./-]*)`", text))
    assert len(paths) > 30
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_unit_of_the_layer_map_is_described() -> None:
    text = DOC.read_text(encoding="utf-8")
    for units in LAYERS:
        for unit in units:
            assert f"`mdpr/{unit}/`" in text or f"`mdpr/{unit}.py`" in text, unit
