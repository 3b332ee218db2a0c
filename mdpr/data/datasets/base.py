"""What every dataset parser shares: options, the parse result, finding the dataset folder, relabelling."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from mdpr.data.records import Record
from mdpr.errors import MdprError

#: ``progress(done, total, what)``; parsers call it during long steps (e.g. extracting CUHK03 images).
Progress = Optional[Callable[[int, int, str], None]]


@dataclass
class PrepareOptions:
    """Dataset variants chosen on the command line (each applies to one dataset only)."""

    with_distractors: bool = False  #: market1501: add the 500k distractors (``images/``) to the gallery
    with_val: bool = False  #: msmt17: train on list_train.txt + list_val.txt
    variant: Optional[str] = None  #: cuhk03: "labeled" (default) or "detected"
    protocol: Optional[str] = None  #: cuhk03: "new" (default, 767/700) or "classic" (split 0 of 20)
    challenge: bool = False  #: synergyreid: the unlabelled challenge query/gallery instead of reid_test

    def given(self) -> Dict[str, object]:
        """The options that differ from their defaults (``--with-val`` -> ``{"with_val": True}``)."""
        out: Dict[str, object] = {}
        for key, default in (("with_distractors", False), ("with_val", False), ("challenge", False)):
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        for key in ("variant", "protocol"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class ParsedDataset:
    """A parser's result: records with paths relative to ``root``, plus notes for the user."""

    root: Path
    train: List[Record]
    query: List[Record]
    gallery: List[Record]
    options: Dict[str, object] = field(default_factory=dict)  #: resolved variant (stored in the manifest)
    notes: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetSpec:
    """A supported dataset: its canonical name, aliases, the options it accepts and its parser."""

    name: str
    title: str
    parse: Callable[[Path, PrepareOptions, Progress], ParsedDataset]
    aliases: Tuple[str, ...] = ()
    options: Tuple[str, ...] = ()  #: names of the :class:`PrepareOptions` fields it accepts
    layout: str = ""  #: one line shown in errors and docs
    #: names of the official downloads without suffix (``DukeMTMC-reID`` for ``DukeMTMC-reID.zip``);
    #: ``prepare`` extracts one found in ROOT when the dataset folder is not there
    archives: Tuple[str, ...] = ()


# ------------------------------------------------------------------------------------- folder discovery


def _subdirs(folder: Path) -> List[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(
                (Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)),
                key=lambda p: p.name,
            )
    except OSError:
        return []


def find_dataset_folder(
    root: Path,
    matches: Callable[[Path], bool],
    title: str,
    expected: str,
    preferred_names: Sequence[str] = (),
) -> Path:
    """The folder that holds the dataset: ``root`` itself, a child or a grandchild of it.

    The peers expect e.g. ``ROOT/market1501/Market-1501-v15.09.15/bounding_box_train`` (torchreid) or
    ``ROOT/Market-1501-v15.09.15/bounding_box_train`` (fast-reid); users often pass the dataset folder
    itself. The shallowest match wins; between matches at the same depth a known folder name wins.
    """
    level = [root]
    preferred = {n.lower() for n in preferred_names}
    for _depth in range(3):
        found = [p for p in level if matches(p)]
        if found:
            best = [p for p in found if p.name.lower() in preferred] or found
            if len(best) > 1:
                listed = ", ".join(str(p) for p in best[:4])
                raise MdprError(
                    f"{root} holds more than one {title} layout ({listed}); pass the one you mean as ROOT."
                )
            return best[0]
        level = [child for p in level for child in _subdirs(p)]
    children = _subdirs(root)
    seen = ", ".join(p.name + "/" for p in children[:12]) + (", ..." if len(children) > 12 else "")
    raise MdprError(
        f"{root} does not look like {title}: expected {expected} in it or in a subfolder, "
        f"found {('the folders ' + seen) if children else 'no folders'}."
    )


def list_files(folder: Path, extensions: Iterable[str], case_sensitive: bool = False) -> Tuple[List[str], int]:
    """Names of the files directly in ``folder`` with one of ``extensions`` (sorted), and how many others.

    ``case_sensitive`` reproduces the peers' ``glob("*.jpg")`` exactly (``X.JPG`` is not picked up).
    """
    exts = tuple(extensions) if case_sensitive else tuple(e.lower() for e in extensions)
    names: List[str] = []
    others = 0
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if (entry.name if case_sensitive else entry.name.lower()).endswith(exts):
                names.append(entry.name)
            else:
                others += 1
    names.sort()
    return names, others


# ---------------------------------------------------------------------------------------------- records


def relabel_train(items: Sequence[Tuple[str, int, int]]) -> List[Record]:
    """Train records from ``(path, orig_pid, camid)``: pids relabelled 0..N-1 in ascending numeric order."""
    label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [Record(path, label[pid], camid, "train", pid) for path, pid, camid in items]


def test_records(items: Sequence[Tuple[str, int, int]], split: str, offset: int = 0) -> List[Record]:
    """Query/gallery records from ``(path, orig_pid, camid)``; ``pid = orig_pid + offset``."""
    return [Record(path, pid + offset, camid, split, pid) for path, pid, camid in items]


def require_nonempty(parsed: ParsedDataset, sources: Dict[str, str], hint: str) -> None:
    """An empty split is an error naming where its images were looked for."""
    for split in ("train", "query", "gallery"):
        if not getattr(parsed, split):
            raise MdprError(f"The {split} split is empty: no usable image in {sources[split]} ({hint}).")


def ignored_note(count: int, where: str, why: str) -> List[str]:
    if not count:
        return []
    return [f"ignored {count} file{'s' if count != 1 else ''} in {where} ({why})"]
