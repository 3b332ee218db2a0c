"""Market-1501 and DukeMTMC-reID: ``bounding_box_train/``, ``query/``, ``bounding_box_test/``.

File names ``0002_c1s1_000451_03.jpg`` (Market) / ``0005_c2_f0046985.jpg`` (Duke): pid, then ``_c`` and
the 1-based camera. As torchreid: only ``*.jpg`` files directly in the split folders; pid -1 (junk) is
dropped; pid 0 (Market distractors) stays in the gallery; camera ids become 0-based; train pids are
relabelled. Unlike torchreid the pattern is matched against the file name only, and train pids are
relabelled in ascending numeric order (torchreid enumerates a set, fast-reid sorts the strings
``"market1501_<pid>"``, which orders ``10`` before ``2``).
"""

from __future__ import annotations

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
from mdpr.data.images import parse_market_name
from mdpr.errors import MdprError

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
DISTRACTOR_FOLDER = "images"
JUNK_PID = -1


def _has_split_folders(folder: Path) -> bool:
    return all((folder / sub).is_dir() for sub in SPLIT_FOLDERS.values())


def parse_folder(root: Path, sub: str) -> Tuple[List[Tuple[str, int, int]], List[str]]:
    """``(relative path, pid, camid)`` of the Market-named ``.jpg`` files in ``root/sub`` (junk dropped)."""
    names, others = list_files(root / sub, (".jpg",), case_sensitive=True)
    items: List[Tuple[str, int, int]] = []
    unnamed = junk = 0
    for name in names:
        parsed = parse_market_name(name)
        if parsed is None:
            unnamed += 1
            continue
        pid, camid = parsed
        if pid == JUNK_PID:
            junk += 1
            continue
        items.append((f"{sub}/{name}", pid, camid))
    notes = ignored_note(others, f"{sub}/", "not .jpg")
    notes += ignored_note(unnamed, f"{sub}/", "name is not PID_cCAM...")
    if junk:
        notes.append(f"dropped {junk} junk image{'s' if junk != 1 else ''} (pid -1) in {sub}/")
    return items, notes


def parse_market_like(
    root: Path, title: str, preferred: Tuple[str, ...], opts: PrepareOptions, distractors: bool
) -> ParsedDataset:
    expected = ", ".join(f"{f}/" for f in SPLIT_FOLDERS.values())
    folder = find_dataset_folder(root, _has_split_folders, title, f"the folders {expected}", preferred)
    notes: List[str] = []
    splits = {}
    for split, sub in SPLIT_FOLDERS.items():
        items, split_notes = parse_folder(folder, sub)
        splits[split] = items
        notes += split_notes
    if distractors:
        if not (folder / DISTRACTOR_FOLDER).is_dir():
            raise MdprError(
                f"--with-distractors needs the Market-1501 500k distractor folder {folder / DISTRACTOR_FOLDER}; "
                "extract distractors_500k.zip there (its images/ folder next to bounding_box_test/)."
            )
        extra, extra_notes = parse_folder(folder, DISTRACTOR_FOLDER)
        splits["gallery"] = splits["gallery"] + extra
        notes += extra_notes
        notes.append(f"added {len(extra)} distractor images from {DISTRACTOR_FOLDER}/ to the gallery")
    parsed = ParsedDataset(
        root=folder,
        train=relabel_train(splits["train"]),
        query=test_records(splits["query"], "query"),
        gallery=test_records(splits["gallery"], "gallery"),
        options={"with_distractors": True} if distractors else {},
        notes=notes,
    )
    sources = {s: str(folder / sub) for s, sub in SPLIT_FOLDERS.items()}
    require_nonempty(parsed, sources, "expected .jpg files named like 0002_c1s1_000451_03.jpg")
    return parsed


def parse_market1501(root: Path, opts: PrepareOptions, progress: Progress = None) -> ParsedDataset:
    preferred = ("Market-1501-v15.09.15", "Market-1501", "market1501")
    return parse_market_like(root, "Market-1501", preferred, opts, opts.with_distractors)


_LAYOUT = "bounding_box_train/, query/, bounding_box_test/ with files like 0002_c1s1_000451_03.jpg"

MARKET1501 = DatasetSpec(
    name="market1501",
    title="Market-1501",
    parse=parse_market1501,
    aliases=("market", "market-1501"),
    archives=("Market-1501-v15.09.15", "Market-1501", "market1501"),
    options=("with_distractors",),
    layout=_LAYOUT + " (+ images/ for --with-distractors)",
)
