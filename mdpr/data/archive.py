"""Safe extraction of a downloaded dataset ``.zip``.

Every entry is checked before anything is written: absolute paths (``/x``, ``C:\\x``, ``\\\\server``)
and ``..`` components are refused, and so is any entry that would land outside the target folder
through a symbolic link already there. Existing files are never overwritten: a file of the same size is
taken as already extracted (so an interrupted extraction resumes), a different one is an error. Each
file is written through :func:`mdpr.fileio.atomic_batch`, so a crash never leaves half a file under its name.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Optional

from mdpr.errors import MdprError
from mdpr.fileio import atomic_batch

_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_reason(name: str) -> Optional[str]:
    """Why the zip entry ``name`` must not be extracted, or None when it is safe."""
    if "\x00" in name:
        return "a NUL character"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        return "an absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "a '..' component"
    return None


def default_extract_dir(zip_path: Path) -> Path:
    """Where ``mdpr prepare`` extracts ``X.zip``: the folder ``X/`` next to it."""
    stem = zip_path.name[: -len(zip_path.suffix)] if zip_path.suffix else zip_path.name + ".extracted"
    return zip_path.parent / stem


def extract_zip(
    zip_path: Path,
    dest: Optional[Path] = None,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> Path:
    """Extract ``zip_path`` into ``dest`` (default :func:`default_extract_dir`) safely; return ``dest``."""
    zip_path = Path(zip_path)
    dest = Path(dest) if dest is not None else default_extract_dir(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise MdprError(f"{zip_path} is not a readable zip archive ({exc}); download it again.") from None
    with archive:
        members = archive.infolist()
        for info in members:
            reason = unsafe_reason(info.filename)
            if reason:
                raise MdprError(
                    f"Refusing to extract {zip_path}: entry {info.filename!r} has {reason}; "
                    "extract it by hand after checking its contents."
                )
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MdprError(f"Cannot create {dest} to extract {zip_path.name} ({exc.strerror}).") from None
        base = dest.resolve()
        files = [m for m in members if not m.is_dir()]
        conflicts: List[str] = []
        done = 0
        sizes: Dict[Path, int] = {}  # members written by this call
        with atomic_batch() as batch:
            for info in members:
                target = dest.joinpath(*[p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")])
                if not _inside(target.resolve(), base):
                    raise MdprError(
                        f"Refusing to extract {zip_path}: entry {info.filename!r} would be written outside {dest}."
                    )
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                done += 1
                existing = _existing_size(target, sizes)
                if existing is not None:
                    if existing != info.file_size:
                        conflicts.append(str(target))
                    continue
                with open(batch.path(target), "wb") as out, archive.open(info) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                sizes[target] = info.file_size
                batch.commit_if_full()
                if progress:
                    progress(done, len(files), f"extracting {zip_path.name}")
        if conflicts:
            raise MdprError(
                f"{len(conflicts)} file(s) in {dest} differ from {zip_path.name} and were not overwritten "
                f"(first: {conflicts[0]}); move them away or extract elsewhere."
            )
    return dest


def _existing_size(target: Path, written: Dict[Path, int]) -> Optional[int]:
    """Size of what is already at ``target`` (-1 for a non-file), None when free; ``written``: this run's members,
    which are not renamed into place before their batch is committed (a zip may repeat an entry)."""
    if target in written:
        return written[target]
    if not target.exists():
        return None
    return target.stat().st_size if target.is_file() else -1


def _inside(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
        return True
    except ValueError:
        return False
