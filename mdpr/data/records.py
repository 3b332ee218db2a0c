"""Dataset records, manifests and the registry of prepared datasets.

``mdpr prepare`` turns a downloaded dataset into a :class:`Manifest`: every image as a :class:`Record`
(path relative to the dataset root, pid, 0-based camera id, split, original pid). The manifest is a JSON
file registered by name under ``$MDPR_HOME/datasets/<name>.json`` (``MDPR_HOME`` defaults to
``~/.mdpr``), so that later commands accept ``--dataset NAME``. :func:`load_dataset` reads it back.

Pid conventions (those of torchreid): in ``train`` ``pid`` is the class index 0..N-1 (original pids
relabelled in ascending numeric order) and ``orig_pid`` the id in the file name; in ``query`` and
``gallery`` ``pid`` is the identity used for evaluation (0 = Market-1501 distractor).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Union

from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_text

SPLITS = ("train", "query", "gallery")
MANIFEST_FORMAT = "mdpr-manifest"
MANIFEST_VERSION = 1

#: Keys of :meth:`Manifest.stats` (and of ``mdpr prepare --json``), in order.
STATS_KEYS = (
    "dataset",
    "train_ids",
    "train_images",
    "query_ids",
    "query_images",
    "gallery_ids",
    "gallery_images",
    "cameras",
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Record(NamedTuple):
    """One image of a dataset."""

    path: str  #: POSIX path relative to the manifest root
    pid: int  #: train: class index 0..N-1; query/gallery: identity (0 = distractor)
    camid: int  #: 0-based camera id
    split: str  #: "train", "query" or "gallery"
    orig_pid: int  #: the identity as the dataset names it


@dataclass
class Manifest:
    """The records of a prepared dataset, with the root folder their paths are relative to."""

    name: str
    dataset: str  #: canonical dataset kind, e.g. "market1501", "demo", "folder"
    root: Path
    train: List[Record] = field(default_factory=list)
    query: List[Record] = field(default_factory=list)
    gallery: List[Record] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)  #: how it was prepared (variant, protocol, ...)
    created: str = ""

    def split(self, name: str) -> List[Record]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def records(self) -> Iterator[Record]:
        """All records: train, then query, then gallery."""
        for s in SPLITS:
            yield from self.split(s)

    def image_path(self, record: Record) -> Path:
        return self.root / record.path

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    def train_classes(self) -> List[int]:
        """``classes[label]`` = original pid of train class ``label``."""
        mapping = {r.pid: r.orig_pid for r in self.train}
        return [mapping[k] for k in sorted(mapping)]

    def split_stats(self) -> Dict[str, Dict[str, int]]:
        """Per split: distinct ids, images and distinct cameras (torchreid's summary table)."""
        out = {}
        for s in SPLITS:
            recs = self.split(s)
            out[s] = {
                "ids": len({r.pid for r in recs}),
                "images": len(recs),
                "cameras": len({r.camid for r in recs}),
            }
        return out

    def stats(self) -> Dict[str, Any]:
        """The ``mdpr prepare --json`` object; ``cameras`` counts distinct camera ids over all splits."""
        per = self.split_stats()
        return {
            "dataset": self.dataset,
            "train_ids": per["train"]["ids"],
            "train_images": per["train"]["images"],
            "query_ids": per["query"]["ids"],
            "query_images": per["query"]["images"],
            "gallery_ids": per["gallery"]["ids"],
            "gallery_images": per["gallery"]["images"],
            "cameras": len({r.camid for r in self.records()}),
        }

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "name": self.name,
            "dataset": self.dataset,
            "root": str(self.root),
            "options": self.options,
            "created": self.created,
            # compact rows: [path, pid, camid, orig_pid] (Market-1501 + 500k distractors is 500k rows)
            "splits": {s: [[r.path, r.pid, r.camid, r.orig_pid] for r in self.split(s)] for s in SPLITS},
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise MdprError(f"{source} is not an mdpr dataset manifest; create one with `mdpr prepare DATASET ROOT`.")
        if int(data.get("version", 0)) > MANIFEST_VERSION:
            raise MdprError(f"{source} was written by a newer mdpr (manifest version {data['version']}); upgrade mdpr.")
        try:
            splits = {
                s: [Record(str(p), int(pid), int(cam), s, int(orig)) for p, pid, cam, orig in data["splits"][s]]
                for s in SPLITS
            }
            return cls(
                name=str(data["name"]),
                dataset=str(data["dataset"]),
                root=Path(data["root"]),
                options=dict(data.get("options") or {}),
                created=str(data.get("created", "")),
                **splits,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MdprError(f"{source} is a damaged mdpr manifest ({exc}); re-run `mdpr prepare` to rewrite it.") from None

    def save(self, path: Union[str, Path]) -> Path:
        """Write the manifest as JSON atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        if not self.created:
            self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(path, json.dumps(self.to_dict(), separators=(",", ":")))
        return path


def read_manifest(path: Union[str, Path]) -> Manifest:
    """Read a manifest JSON file written by :meth:`Manifest.save`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MdprError(f"Manifest {path} does not exist; create it with `mdpr prepare DATASET ROOT`.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MdprError(f"Manifest {path} cannot be read ({exc}); re-run `mdpr prepare` to rewrite it.") from None
    return Manifest.from_dict(data, source=f"Manifest {path}")


# --------------------------------------------------------------------------------------------- registry


def mdpr_home() -> Path:
    """mdpr's home folder: ``$MDPR_HOME`` or ``~/.mdpr``."""
    env = os.environ.get("MDPR_HOME")
    return Path(env).expanduser() if env else Path.home() / ".mdpr"


def registry_dir() -> Path:
    return mdpr_home() / "datasets"


def check_name(name: str) -> str:
    """Validate a registration name (letters, digits, ``.``, ``_``, ``-``; it becomes a file name)."""
    if not _NAME.match(name or ""):
        raise MdprError(
            f"Dataset name '{name}' is not valid; use letters, digits, '.', '_' or '-' (at most 64, e.g. market1501)."
        )
    return name


def registered_path(name: str) -> Path:
    return registry_dir() / f"{check_name(name)}.json"


def register(manifest: Manifest) -> Path:
    """Register ``manifest`` under ``manifest.name``, atomically replacing an earlier registration."""
    return manifest.save(registered_path(manifest.name))


def registered_names() -> List[str]:
    """Names of the registered datasets, sorted."""
    folder = registry_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if _NAME.match(p.stem))


def load_dataset(name_or_manifest_path: Union[str, Path]) -> Manifest:
    """Load a prepared dataset by name or by manifest file path.

    A name is matched against the registered names first (exactly, then ignoring case and separators),
    then as any name ``mdpr prepare`` accepts (``duke``, ``Market-1501``, ``cuhk03-detected``; see
    :func:`mdpr.data.datasets.resolve_name`), which finds the registration ``prepare`` made under the
    canonical name. This is the one place every command resolves ``--dataset``.
    """
    key = str(name_or_manifest_path).strip()
    names = registered_names()
    if _NAME.match(key):  # a registered name wins over a same-named file in the working directory
        found = _registered_match(key, names)
        if found is not None:
            return found
    as_path = Path(key).expanduser()
    if as_path.is_file():
        return read_manifest(as_path)
    raise MdprError(_unknown_dataset(key, names))


def _registered_match(key: str, names: List[str]) -> Optional[Manifest]:
    from mdpr.data.datasets import compact, resolve_name

    if key in names:
        return read_manifest(registered_path(key))
    same = [n for n in names if compact(n) == compact(key)]
    if len(same) == 1:
        return read_manifest(registered_path(same[0]))
    meaning = resolve_name(key)
    if meaning is None:
        return None
    # a registration whose own name means the same dataset and variant ("duke" registered by --name duke)
    alike = [n for n in names if resolve_name(n) == meaning]
    if meaning.canonical in alike:
        alike = [meaning.canonical]
    if len(alike) == 1:
        return read_manifest(registered_path(alike[0]))
    if len(alike) > 1:
        raise MdprError(
            f"Dataset '{key}' matches the registered datasets {', '.join(alike)}; pass one of these names."
        )
    implied = meaning.implied_options()
    if not implied or meaning.canonical not in names:
        return None
    # "cuhk03-detected": the canonical registration, if it was prepared with that variant
    manifest = read_manifest(registered_path(meaning.canonical))
    have = {k: str(manifest.options.get(k, "")) for k in implied}
    if all(have[k].lower() == v.lower() for k, v in implied.items()):
        return manifest
    wanted = ", ".join(f"{k} {v}" for k, v in implied.items())
    got = ", ".join(f"{k} {v or 'unknown'}" for k, v in have.items())
    own = key.lower() if _NAME.match(key) else "NAME"
    raise MdprError(
        f"Dataset '{key}' means {meaning.canonical} with {wanted}, but the registered {meaning.canonical} "
        f"has {got}; prepare that variant under its own name with `mdpr prepare {key} ROOT --name {own}`."
    )


def _unknown_dataset(key: str, names: List[str]) -> str:
    """One sentence for a name that is neither registered nor a manifest file, with the closest name."""
    from mdpr.data.datasets import closest_known, compact, resolve_name, supported_names

    registered = f"Registered datasets: {', '.join(names)}" if names else "No dataset is registered yet"
    where = f"{registered} (in {registry_dir()})"
    meaning = resolve_name(key)
    if meaning is not None:  # a dataset mdpr knows, not prepared yet
        return f"Dataset '{key}' ({meaning.canonical}) is not prepared yet; run `mdpr prepare {key} ROOT` first. {where}."
    # the closest registered name, or the closest known one (through its aliases: "dukee" -> dukemtmc)
    scores = {n: difflib.SequenceMatcher(None, compact(key), compact(n)).ratio() for n in names}
    known = closest_known(key)
    if known in names:
        scores[known] = max(scores[known], 1.0)
    best = max(scores, key=lambda n: scores[n], default=None)
    if best is not None and scores[best] >= 0.6:
        return f"Unknown dataset '{key}'; did you mean {best}? {where}."
    if known is not None:
        return (
            f"Unknown dataset '{key}'; did you mean {known} (not prepared yet: `mdpr prepare {known} ROOT`)? {where}."
        )
    return (
        f"Unknown dataset '{key}': not a registered name nor a manifest file; prepare one with "
        f"`mdpr prepare DATASET ROOT` (DATASET: {', '.join(supported_names())}). {where}."
    )


def build_manifest(
    name: str,
    dataset: str,
    root: Path,
    train: List[Record],
    query: List[Record],
    gallery: List[Record],
    options: Optional[Dict[str, Any]] = None,
) -> Manifest:
    """A manifest with an absolute root."""
    return Manifest(
        name=check_name(name),
        dataset=dataset,
        root=Path(root).resolve(),
        train=train,
        query=query,
        gallery=gallery,
        options=dict(options or {}),
    )
