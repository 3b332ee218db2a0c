"""Safe extraction of a downloaded dataset ``.zip``.

Every entry is checked before anything is written: absolute paths (``/x``, ``C:\\x``, ``\\\\server``)
and ``..`` components are refused, and so is any entry that would land outside the target folder
through a symbolic link already there. Existing files are never overwritten: a file of the same size is
taken as already extracted (so an interrupted extraction resumes), a different one is an error. Each
file is written to a temporary name and renamed, so a crash never leaves half a file under its name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, List, Optional

from mdpr.errors import MdprError

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
            if target.exists():
                if not target.is_file() or target.stat().st_size != info.file_size:
                    conflicts.append(str(target))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, archive.open(info) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            if progress:
                progress(done, len(files), f"extracting {zip_path.name}")
        if conflicts:
            raise MdprError(
                f"{len(conflicts)} file(s) in {dest} differ from {zip_path.name} and were not overwritten "
                f"(first: {conflicts[0]}); move them away or extract elsewhere."
            )
    return dest


def _inside(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
        return True
    except ValueError:
        return False
