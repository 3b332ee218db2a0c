"""A custom dataset: identity folders, or a CSV file.

Folder form::

    ROOT/train/<identity>/<image>      # any image type (.jpg .jpeg .png .bmp .webp)
    ROOT/query/<identity>/<image>
    ROOT/gallery/<identity>/<image>    # identity 0 = distractor (kept), -1 = junk (dropped)

Identities are the folder names; when every name is an integer it is the pid, otherwise the names
(over all splits, so that the same name is the same person) are numbered 1..K in sorted order.
A camera may be given in the file name as ``c<N>`` or ``cam<N>`` at the start or after ``_``, ``-`` or
``.`` (``0001_c2_0042.jpg``, ``cam3-17.png``), numbered from 1 as in Market-1501 (``c1`` -> camera 0)
unless some name uses ``c0``, in which case the numbers are taken as 0-based. Without cameras in the
names, train and query images get camera 0 and gallery images camera 1 (so that no true match is
removed by the same-camera rule of the evaluation).

CSV form: ROOT is a ``.csv`` file (or a folder holding ``dataset.csv``) with a header and the columns
``path,pid,split`` and optionally ``camid`` (0-based); paths are relative to the CSV's folder.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from mdpr.data.datasets.base import (
    DatasetSpec,
    ParsedDataset,
    PrepareOptions,
    Progress,
    find_dataset_folder,
    list_files,
    relabel_train,
    require_nonempty,
    test_records,
)
from mdpr.data.images import IMAGE_EXTENSIONS
from mdpr.data.records import SPLITS
from mdpr.errors import MdprError

CSV_NAME = "dataset.csv"
_CAMERA = re.compile(r"(?:^|[_.\-])c(?:am)?(\d+)", re.IGNORECASE)
_INT = re.compile(r"^-?\d+$")
DEFAULT_CAMERA = {"train": 0, "query": 0, "gallery": 1}


def camera_number(name: str) -> Optional[int]:
    m = _CAMERA.search(Path(name).stem)
    return int(m.group(1)) if m else None


def _subdirs(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _parse_folders(folder: Path) -> ParsedDataset:
    found: Dict[str, List[Tuple[str, str, Optional[int]]]] = {}  # split -> (path, identity, camera number)
    ignored = 0
    for split in SPLITS:
        rows = []
        for ident_dir in _subdirs(folder / split):
            names, others = list_files(ident_dir, IMAGE_EXTENSIONS)
            ignored += others
            rows += [(f"{split}/{ident_dir.name}/{n}", ident_dir.name, camera_number(n)) for n in names]
        found[split] = rows
    identities = sorted({ident for rows in found.values() for _, ident, _ in rows})
    if all(_INT.match(i) for i in identities):
        pid_of = {i: int(i) for i in identities}
    else:
        pid_of = {i: k for k, i in enumerate(identities, start=1)}
    cams = [c for rows in found.values() for _, _, c in rows]
    with_cam = sum(c is not None for c in cams)
    # mixing would make the per-split default cameras collide with real ones
    if 0 < with_cam < len(cams):
        example = next(p for rows in found.values() for p, _, c in rows if c is None)
        raise MdprError(
            f"Some file names under {folder} carry a camera (c<N>) and others do not, e.g. {example}; "
            "name every image with its camera or none."
        )
    one_based = with_cam > 0 and min(c for c in cams if c is not None) >= 1
    items: Dict[str, List[Tuple[str, int, int]]] = {}
    junk = 0
    for split, rows in found.items():
        out = []
        for path, ident, cam in rows:
            pid = pid_of[ident]
            if pid == -1:
                junk += 1
                continue
            camid = DEFAULT_CAMERA[split] if cam is None else cam - 1 if one_based else cam
            out.append((path, pid, camid))
        items[split] = out
    notes = [f"ignored {ignored} non-image files"] if ignored else []
    if junk:
        notes.append(f"dropped {junk} junk images (identity -1)")
    if not with_cam:
        notes.append("no camera ids in the file names: train/query use camera 0, gallery camera 1")
    return ParsedDataset(
        root=folder,
        train=relabel_train(items["train"]),
        query=test_records(items["query"], "query"),
        gallery=test_records(items["gallery"], "gallery"),
        options={"form": "folders"},
        notes=notes,
    )


def _parse_csv(path: Path) -> ParsedDataset:
    items: Dict[str, List[Tuple[str, int, int]]] = {s: [] for s in SPLITS}
    try:
        # utf-8-sig: spreadsheet programs start their CSV files with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            if not {"path", "pid", "split"} <= set(columns):
                raise MdprError(
                    f"{path} must have a header with the columns path,pid,split (and optionally camid); "
                    f"found {','.join(columns) or 'no header'}."
                )
            reader.fieldnames = columns
            root = Path(os.path.normpath(path.parent.absolute()))
            for lineno, row in enumerate(reader, start=2):
                if not any((v or "").strip() for k, v in row.items() if isinstance(v, str)) and None not in row:
                    continue  # a blank line
                missing = [c for c in ("path", "pid", "split") if row.get(c) is None]
                if missing or None in row:
                    fields = len(columns) - len(missing) if missing else len(columns) + len(row[None])
                    raise MdprError(f"Line {lineno} of {path} has {fields} field(s) but the header has {len(columns)} "
                                    f"({','.join(columns)}); fix the row.")
                try:
                    split = row["split"].strip().lower()
                    pid = int(row["pid"])
                    cam = row.get("camid")
                    camid = int(cam) if cam not in (None, "") else DEFAULT_CAMERA.get(split, 0)
                except (ValueError, AttributeError):
                    raise MdprError(f"Line {lineno} of {path}: pid and camid must be integers.") from None
                if split not in items:
                    raise MdprError(f"Line {lineno} of {path}: split must be train, query or gallery, not {split!r}.")
                rel = row["path"].strip().replace("\\", "/")
                image = Path(os.path.normpath(root / rel))  # lexically: links inside the folder stay allowed
                if not image.is_relative_to(root):
                    raise MdprError(f"Line {lineno} of {path}: image {rel} is outside the dataset folder {root}; give "
                                    "paths inside it (relative to the CSV file).")
                rel = image.relative_to(root).as_posix()
                if not (path.parent / rel).is_file():
                    raise MdprError(f"Line {lineno} of {path}: image {path.parent / rel} does not exist.")
                if pid != -1:
                    items[split].append((rel, pid, camid))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MdprError(f"{path} cannot be read as CSV ({exc}).") from None
    return ParsedDataset(
        root=path.parent,
        train=relabel_train(items["train"]),
        query=test_records(items["query"], "query"),
        gallery=test_records(items["gallery"], "gallery"),
        options={"form": "csv", "csv": path.name},
    )


def parse_folder_dataset(root: Path, opts: PrepareOptions, progress: Progress = None) -> ParsedDataset:
    if root.is_file() and root.suffix.lower() == ".csv":
        parsed = _parse_csv(root)
        source = str(root)
    elif (root / CSV_NAME).is_file():
        parsed = _parse_csv(root / CSV_NAME)
        source = str(root / CSV_NAME)
    else:
        folder = find_dataset_folder(
            root,
            lambda p: all((p / s).is_dir() for s in SPLITS),
            "a folder dataset",
            f"the folders train/, query/, gallery/ (each with one folder per identity) or a {CSV_NAME}",
        )
        parsed = _parse_folders(folder)
        source = ""
    sources = {s: source or str(parsed.root / s) for s in SPLITS}
    require_nonempty(parsed, sources, "expected <split>/<identity>/<image> or CSV rows for every split")
    return parsed


FOLDER = DatasetSpec(
    name="folder",
    title="a folder dataset",
    parse=parse_folder_dataset,
    aliases=("custom",),
    layout="{train,query,gallery}/<identity>/<image>, or a CSV with path,pid,split[,camid]",
)
