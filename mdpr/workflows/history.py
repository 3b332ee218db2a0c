"""What the user did last: trained runs and written stores, in ``MDPR_HOME`` next to the dataset registry.

``mdpr train`` records each finished run, ``mdpr extract`` each store it writes; ``mdpr extract`` without
``--weights`` uses the most recent model, ``mdpr query`` without ``--gallery`` the most recent store, and
``mdpr list`` shows them. Each file is a small JSON list, replaced atomically under a lock; a corrupt file is
reported in one sentence and rebuilt from what can still be read (nothing else depends on it).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from mdpr.data.records import mdpr_home, read_manifest, registered_names, registered_path
from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_json, describe_os_error

RUNS = "runs.json"
STORES = "stores.json"
#: Entries kept per file (the oldest are dropped).
MAX_ENTRIES = 200
KINDS = ("datasets", "runs", "stores")

Note = Callable[[str], None]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``path`` between processes (best effort where flock is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows
            pass
        yield
    finally:
        os.close(fd)


def _read(path: Path, note: Optional[Note]) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, list):
        with contextlib.suppress(OSError):
            atomic_write_json(path, [])
        if note is not None:
            note(f"{path} was corrupt and has been rebuilt (its entries are lost; the runs and stores themselves "
                 "are untouched).")
        return []
    return [e for e in data if isinstance(e, dict)]


def _append(name: str, entry: Dict[str, Any], key: str, note: Optional[Note]) -> None:
    path = mdpr_home() / name
    try:
        with _locked(path):
            entries = [e for e in _read(path, note) if e.get(key) != entry[key]]
            entries.append(entry)
            atomic_write_json(path, entries[-MAX_ENTRIES:])
    except OSError as exc:
        # the history is a convenience: a run or a store is never lost because it cannot be recorded
        if note is not None:
            note(f"could not record this in {path} ({describe_os_error(exc)}); later commands will not default to it.")


def record_run(summary: Dict[str, Any], note: Optional[Note] = None) -> None:
    """Remember a finished training run (its ``summary.json`` content)."""
    metrics = summary.get("final_metrics") or {}
    _append(RUNS, {
        "dataset": summary.get("dataset"),
        "recipe": summary.get("recipe"),
        "run_dir": str(Path(summary["run_dir"]).resolve()),
        "model": str(Path(summary["model"]).resolve()),
        "final_metrics": {k: metrics[k] for k in ("mAP", "rank1", "rank5", "mINP") if k in metrics},
        "date": _now(),
    }, "run_dir", note)


def record_store(path: Path, weights: Optional[Path], fingerprint: str, rows: int, source: str,
                 note: Optional[Note] = None) -> None:
    """Remember a store written by ``mdpr extract``."""
    _append(STORES, {
        "path": str(Path(path).resolve()),
        "weights": str(Path(weights).resolve()) if weights is not None else "",
        "fingerprint": fingerprint,
        "rows": int(rows),
        "source": source,
        "date": _now(),
    }, "path", note)


def _latest(name: str, file_key: str) -> Optional[Dict[str, Any]]:
    for entry in reversed(_read(mdpr_home() / name, None)):
        target = entry.get(file_key)
        if isinstance(target, str) and Path(target).is_file():
            return entry
    return None


def latest_model() -> Path:
    """The ``model.pt`` of the most recent training run whose file still exists."""
    entry = _latest(RUNS, "model")
    if entry is None:
        raise MdprError(f"No trained model in MDPR_HOME ({mdpr_home()}) yet: train one with `mdpr train`, or pass "
                        "weights CKPT.", keys=["weights CKPT"])
    return Path(entry["model"])


def latest_store() -> Path:
    """The most recently written feature store that still exists."""
    entry = _latest(STORES, "path")
    if entry is None:
        raise MdprError(f"No feature store in MDPR_HOME ({mdpr_home()}) yet: run `mdpr extract` first, or pass "
                        "gallery STORE.", keys=["gallery STORE"])
    return Path(entry["path"])


def default_store_path(images: Path) -> Path:
    """Where ``mdpr extract --images DIR`` writes without ``--output``: ``MDPR_HOME/stores/<DIR name>.h5``."""
    name = Path(images).expanduser().resolve().name or "images"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return mdpr_home() / "stores" / f"{safe}.h5"


@dataclass
class Listing:
    """``mdpr list KIND``: the entries, each with ``missing`` True when its files were deleted."""

    kind: str
    entries: List[Dict[str, Any]]


def list_entries(kind: str, note: Optional[Note] = None) -> Listing:
    """Registered datasets, recorded runs or recorded stores (newest last)."""
    if kind not in KINDS:
        raise MdprError(f"Unknown list '{kind}'; choose datasets, runs or stores.")
    if kind == "datasets":
        entries = []
        for name in registered_names():
            try:
                manifest = read_manifest(registered_path(name))
            except MdprError as exc:
                entries.append({"name": name, "missing": True, "problem": str(exc)})
                continue
            entries.append({"name": name, "dataset": manifest.dataset, "root": str(manifest.root),
                            "missing": not Path(manifest.root).is_dir(), **manifest.stats()})
        return Listing(kind, entries)
    name, file_key = (RUNS, "model") if kind == "runs" else (STORES, "path")
    entries = _read(mdpr_home() / name, note)
    out = []
    for entry in entries:
        target = entry.get(file_key)
        out.append({**entry, "missing": not (isinstance(target, str) and Path(target).is_file())})
    return Listing(kind, out)
