"""SynergyReID (DeepSportradar basketball player ReID), as the MDPR code and the challenge kit read it.

Layout (``synergyreid_data/`` in the MDPR code, ``data_reid/`` when the challenge zip is extracted)::

    reid_training/<pid>_<sequence>_<frame>.jpeg     # train
    reid_test/query/<pid>_<sequence>_<frame>.jpeg   # labelled test split (default)
    reid_test/gallery/...
    reid_challenge/query/<n>.jpeg                   # unlabelled challenge split (--challenge)
    reid_challenge/gallery/<n>.jpeg

torchreid has no SynergyReID parser; mdpr follows fast-reid's (MDPR's) and the DeepSportradar kit's
conventions: only ``*.jpeg`` files, the pid is the first ``_``-field of the file name, the camera is 0
for train and query and 1 for gallery. The challenge files carry no identity: their ``pid`` is the
number in the file name (each image its own "identity"), usable to rank but not to score.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

from mdpr.data.datasets.base import (
    DatasetSpec,
    ParsedDataset,
    PrepareOptions,
    Progress,
    find_dataset_folder,
    ignored_note,
    list_files,
    relabel_train,
    require_nonempty,
    test_records,
)

_LABELLED = re.compile(r"^(-?\d+)_")
_CHALLENGE = re.compile(r"^(\d+)\.")
EXTENSIONS = (".jpeg",)


def _parse(folder: Path, sub: str, camid: int, pattern: re.Pattern) -> Tuple[List[Tuple[str, int, int]], List[str]]:
    names, others = list_files(folder / sub, EXTENSIONS, case_sensitive=True)
    items, unnamed = [], 0
    for name in names:
        m = pattern.match(name)
        if not m:
            unnamed += 1
            continue
        items.append((f"{sub}/{name}", int(m.group(1)), camid))
    notes = ignored_note(others, f"{sub}/", "not .jpeg") + ignored_note(unnamed, f"{sub}/", "unexpected name")
    return items, notes


def parse_synergyreid(root: Path, opts: PrepareOptions, progress: Progress = None) -> ParsedDataset:
    test_dir = "reid_challenge" if opts.challenge else "reid_test"
    needed = ("reid_training", f"{test_dir}/query", f"{test_dir}/gallery")
    folder = find_dataset_folder(
        root,
        lambda p: all((p / sub).is_dir() for sub in needed),
        "SynergyReID" + (" (challenge split)" if opts.challenge else ""),
        "the folders " + ", ".join(f"{s}/" for s in needed),
        ("synergyreid_data", "data_reid", "synergyreid"),
    )
    test_pattern = _CHALLENGE if opts.challenge else _LABELLED
    train, notes = _parse(folder, "reid_training", 0, _LABELLED)
    query, q_notes = _parse(folder, f"{test_dir}/query", 0, test_pattern)
    gallery, g_notes = _parse(folder, f"{test_dir}/gallery", 1, test_pattern)
    parsed = ParsedDataset(
        root=folder,
        train=relabel_train(train),
        query=test_records(query, "query"),
        gallery=test_records(gallery, "gallery"),
        options={"challenge": True} if opts.challenge else {},
        notes=notes + q_notes + g_notes,
    )
    if opts.challenge:
        parsed.notes.append("challenge split: query/gallery pids are file numbers, not identities (no scores)")
    example = "<n>.jpeg" if opts.challenge else "<pid>_<sequence>_<frame>.jpeg"
    sources = {"train": str(folder / needed[0]), "query": str(folder / needed[1]), "gallery": str(folder / needed[2])}
    require_nonempty(parsed, sources, f"expected .jpeg files named like {example}")
    return parsed


SYNERGYREID = DatasetSpec(
    name="synergyreid",
    title="SynergyReID",
    parse=parse_synergyreid,
    aliases=("synergy", "synergy-reid", "deepsportradar"),
    archives=("synergyreid_data", "synergyreid", "data_reid"),
    options=("challenge",),
    layout="reid_training/, reid_test/{query,gallery}/ (reid_challenge/{query,gallery}/ for --challenge)",
)
