"""DukeMTMC-reID: the Market-1501 layout and naming (``0005_c2_f0046985.jpg``), 8 cameras.

Parsed exactly like Market-1501 (see :mod:`mdpr.data.datasets.market1501`). DukeMTMC-reID has no junk
images; torchreid and fast-reid would keep a pid -1 as an identity, mdpr drops it as for Market.
"""

from __future__ import annotations

from pathlib import Path

from mdpr.data.datasets.base import DatasetSpec, ParsedDataset, PrepareOptions, Progress
from mdpr.data.datasets.market1501 import parse_market_like


def parse_dukemtmc(root: Path, opts: PrepareOptions, progress: Progress = None) -> ParsedDataset:
    preferred = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmc")
    return parse_market_like(root, "DukeMTMC-reID", preferred, opts, False)


DUKEMTMC = DatasetSpec(
    name="dukemtmc",
    title="DukeMTMC-reID",
    parse=parse_dukemtmc,
    aliases=("duke", "dukemtmc-reid"),
    archives=("DukeMTMC-reID", "DukeMTMC"),
    layout="bounding_box_train/, query/, bounding_box_test/ with files like 0005_c2_f0046985.jpg",
)
