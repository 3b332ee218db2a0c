"""Safe extraction of a downloaded dataset archive (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``).

Every entry is checked before anything is written: absolute paths (``/x``, ``C:\\x``, ``\\\\server``),
``..`` components, symbolic and hard links, devices, a name that is both a file and a folder (``a`` and
``a/b``) and a file listed twice are refused, and so is any entry that would land outside the target
folder through a symbolic link already there. Existing files are never overwritten: a file of the same
size is taken as already extracted (so an interrupted extraction resumes), a different one is an error.
Each file is written through :func:`mdpr.fileio.atomic_batch`, so a crash never leaves half a file under
its name.

Where it goes: an archive whose entries all sit in one top folder (``DukeMTMC-reID.zip`` holds
``DukeMTMC-reID/...``) is extracted next to itself, so that folder appears beside the archive (never
``DukeMTMC-reID/DukeMTMC-reID``); any other archive goes into a folder named after it. A small marker
file beside the archive (``.NAME.mdpr-extract.json``) records a finished extraction, so a second
``mdpr prepare`` neither reads the archive again nor takes a half-extracted tree for a whole one.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from mdpr.errors import MdprError
from mdpr.fileio import atomic_batch, atomic_write_json, describe_os_error

_DRIVE = re.compile(r"^[A-Za-z]:")
#: what the official downloads are packed as; the longest suffix first
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_MARKER = ".{}.mdpr-extract.json"

#: ``progress(done, total, stage)``
Progress = Optional[Callable[[int, int, str], None]]


def unsafe_reason(name: str) -> Optional[str]:
    """Why the archive entry ``name`` must not be extracted, or None when its name is safe."""
    if "\x00" in name:
        return "a NUL character"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        return "an absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "a '..' component"
    return None


def archive_stem(path: Path) -> Optional[str]:
    """``DukeMTMC-reID.zip`` -> ``DukeMTMC-reID``; None for a name without an archive suffix."""
    lower = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def is_archive(path: Path) -> bool:
    """True for a zip or tar file (by content, not by name)."""
    try:
        return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)
    except OSError:
        return False


def find_archives(folder: Path, stems: Sequence[str]) -> List[Path]:
    """The archives directly in ``folder`` named ``STEM.zip``/``.tar.gz``/``.tgz``/``.tar`` (any case)."""
    wanted = {s.lower() for s in stems}
    try:
        children = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return []
    return [p for p in children if (archive_stem(p) or "").lower() in wanted]


@dataclass(frozen=True)
class _Entry:
    name: str  #: as stored in the archive
    parts: Tuple[str, ...]  #: its path components, normalised
    is_dir: bool
    size: int


class _Reader:
    """The entries of a zip or tar file, and their contents in archive order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: Optional[zipfile.ZipFile] = None
        self._tar: Optional[tarfile.TarFile] = None
        try:
            if zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
            else:
                self._tar = tarfile.open(path, "r:*")
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise MdprError(f"{path} is not a readable .zip or .tar archive ({exc}); download it again.") from None

    def close(self) -> None:
        (self._zip or self._tar).close()  # type: ignore[union-attr]

    def entries(self) -> List[_Entry]:
        """All entries, refusing the whole archive at the first unsafe one."""
        out = []
        try:
            if self._zip is not None:
                for info in self._zip.infolist():
                    mode = info.external_attr >> 16
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else None
                    out.append(self._entry(info.filename, info.is_dir(), info.file_size, kind))
            else:
                assert self._tar is not None
                for member in self._tar.getmembers():
                    kind = None
                    if member.issym():
                        kind = "a symbolic link"
                    elif member.islnk():
                        kind = "a hard link"
                    elif not (member.isfile() or member.isdir()):
                        kind = "a device or FIFO"
                    out.append(self._entry(member.name, member.isdir(), member.size, kind))
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise MdprError(f"{self.path} is damaged ({exc}); download it again.") from None
        return out

    def _entry(self, name: str, is_dir: bool, size: int, kind: Optional[str]) -> _Entry:
        reason = kind or unsafe_reason(name)
        if reason:
            self.refuse(f"entry {name!r} is {reason}" if kind else f"entry {name!r} has {reason}")
        parts = tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
        return _Entry(name, parts, is_dir, size)

    def refuse(self, why: str) -> None:
        raise MdprError(f"Refusing to extract {self.path}: {why}; extract it by hand after checking its contents.")

    def files(self) -> Iterator[Tuple[str, IO[bytes]]]:
        """``(entry name, stream)`` for every file, in archive order (one pass, also for .tar.gz)."""
        if self._zip is not None:
            for info in self._zip.infolist():
                if not info.is_dir():
                    with self._zip.open(info) as src:
                        yield info.filename, src
            return
        assert self._tar is not None
        for member in self._tar:
            if member.isfile():
                stream = self._tar.extractfile(member)
                assert stream is not None
                with stream:
                    yield member.name, stream


def _check_layout(reader: _Reader, entries: List[_Entry]) -> None:
    """Refuse a name that is both a file and a folder (``a`` and ``a/b``), or a file listed twice."""
    files: Dict[Tuple[str, ...], str] = {}
    for e in entries:
        if e.is_dir or not e.parts:
            continue
        if e.parts in files:
            reader.refuse(f"it lists the file {e.name!r} twice")
        files[e.parts] = e.name
    for e in entries:
        if e.is_dir and e.parts in files:
            reader.refuse(f"{files[e.parts]!r} is both a file and a folder in it")
        for depth in range(1, len(e.parts)):
            clash = files.get(e.parts[:depth])
            if clash is not None:
                reader.refuse(f"{clash!r} is a file but entry {e.name!r} uses it as a folder")


def _top_folder(entries: List[_Entry]) -> Optional[str]:
    """The one folder every entry sits in, if there is one."""
    tops = {e.parts[0] for e in entries if e.parts}
    if len(tops) != 1:
        return None
    top = next(iter(tops))
    if any(e.parts == (top,) and not e.is_dir for e in entries):
        return None  # a single file at the top
    return top


def _marker(archive: Path) -> Path:
    return archive.parent / _MARKER.format(archive.name)


def _fingerprint(archive: Path) -> Dict[str, int]:
    st = archive.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def extracted_folder(archive: Path) -> Optional[Path]:
    """Where an earlier, finished extraction of ``archive`` put its contents (None if there was none)."""
    try:
        info = json.loads(_marker(archive).read_text(encoding="utf-8"))
        if info.get("state") != "done" or info.get("archive") != _fingerprint(archive):
            return None
        folder = archive.parent / str(info["folder"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return folder if folder.is_dir() else None


def extraction_started(archive: Path) -> bool:
    """True when an extraction of ``archive`` began and did not finish (the next one resumes it)."""
    try:
        info = json.loads(_marker(archive).read_text(encoding="utf-8"))
        return info.get("state") == "extracting"
    except (OSError, ValueError, AttributeError):
        return False


def extract_archive(archive: Path, progress: Progress = None) -> Path:
    """Extract ``archive`` safely next to itself (once); return the folder its contents are in.

    ``DukeMTMC-reID.zip`` holding ``DukeMTMC-reID/...`` gives ``<beside>/DukeMTMC-reID``; an archive
    without one top folder, ``X.zip``, gives ``<beside>/X`` holding its entries.
    """
    archive = Path(archive)
    done = extracted_folder(archive)
    if done is not None:
        return done
    reader = _Reader(archive)
    try:
        entries = reader.entries()
        _check_layout(reader, entries)
        top = _top_folder(entries)
        stem = archive_stem(archive) or archive.name + ".extracted"
        dest = archive.parent if top else archive.parent / stem
        folder = archive.parent / top if top else dest
        marker = _marker(archive)
        try:
            atomic_write_json(marker, {"state": "extracting", "archive": _fingerprint(archive), "folder": folder.name})
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MdprError(
                f"Cannot extract {archive.name} into {dest} ({describe_os_error(exc)}); "
                "copy the archive to a writable folder and pass that folder as ROOT."
            ) from None
        _write(reader, entries, dest, progress)
    finally:
        reader.close()
    atomic_write_json(marker, {"state": "done", "archive": _fingerprint(archive), "folder": folder.name})
    return folder


def _write(reader: _Reader, entries: List[_Entry], dest: Path, progress: Progress) -> None:
    base = dest.resolve()
    targets: Dict[str, Tuple[Path, int]] = {}
    for e in entries:
        target = dest.joinpath(*e.parts) if e.parts else dest
        if not _inside(target.resolve(), base):
            reader.refuse(f"entry {e.name!r} would be written outside {dest}")
        if e.is_dir:
            target.mkdir(parents=True, exist_ok=True)
        elif e.parts:
            targets[e.name] = (target, e.size)
    conflicts: List[str] = []
    total, done = len(targets), 0
    stage = f"extracting {reader.path.name}"
    with atomic_batch() as batch:  # grouped flushes: one fsync per member would cost ~10 ms a file
        for name, src in reader.files():
            if name not in targets:
                continue
            target, size = targets[name]
            done += 1
            if target.exists() or target.is_symlink():
                if not target.is_file() or target.stat().st_size != size:
                    conflicts.append(str(target))
                continue
            with open(batch.path(target), "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            batch.commit_if_full()
            if progress:
                progress(done, total, stage)
    if conflicts:
        raise MdprError(
            f"{len(conflicts)} file(s) in {dest} differ from {reader.path.name} and were not overwritten "
            f"(first: {conflicts[0]}); move them away or extract elsewhere."
        )


def _inside(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
        return True
    except ValueError:
        return False
