"""Crash-safe file writes and the one safe checkpoint reader.

One durability rule for every file mdpr writes whole (text, JSON, checkpoints, archives' members, stores):
write a temporary file in the destination's own folder, flush and fsync it, rename it over the destination,
then fsync the folder. A reader (or a process restarted after ``kill -9`` or a power cut) sees the old file
or the new one, never a part of one, and no temporary file is left behind after a failure.

Every ``torch.load`` in mdpr goes through :func:`read_torch_file`, which only ever unpickles with
``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Tuple, Union

from mdpr.errors import MdprError

PathLike = Union[str, "os.PathLike[str]"]


def fsync_file(path: PathLike) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))  # Windows flushes only writable handles
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is); a no-op where unsupported."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_files(paths: Iterable[PathLike], workers: int = 16) -> None:
    """Flush many files' data; concurrent fsyncs share the file system's journal commits (tens of times faster)."""
    files = list(paths)
    if len(files) <= 1:
        for file in files:
            fsync_file(file)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(files))) as pool:
        for _ in pool.map(fsync_file, files):  # re-raises the first failure
            pass


def replace_durably(src: PathLike, dst: PathLike) -> None:
    """Rename the finished file or folder ``src`` over ``dst`` (same file system) so that a crash keeps one of them.

    ``src`` is flushed first (a folder's entries only: its files are flushed by whoever wrote them, e.g. with
    :func:`fsync_files`), then renamed, then ``dst``'s folder is flushed. A folder that replaces a non-empty
    folder swaps it aside first (``.NAME.old`` beside it, removed once the new one is in place), because a
    rename cannot replace a non-empty folder.
    """
    source, target = Path(src), Path(dst)
    folder = source.is_dir()
    if folder:
        fsync_dir(source)
    else:
        fsync_file(source)
    if folder and target.is_dir() and any(target.iterdir()):
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(source, target)
    fsync_dir(target.parent)


class AtomicBatch:
    """Many files written by the module's rule, their flushes grouped (see :func:`atomic_batch`)."""

    def __init__(self, limit: int = 512) -> None:
        self.limit = limit  #: pending files at which :meth:`commit_if_full` publishes
        self._pending: List[Tuple[Path, Path]] = []  # (temporary, destination)

    def __len__(self) -> int:
        return len(self._pending)

    def path(self, path: PathLike) -> Path:
        """A temporary path beside ``path`` for the caller to write the whole file to; published at :meth:`commit`."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        self._pending.append((Path(name), target))
        return Path(name)

    def commit(self) -> None:
        """Flush every file written so far, rename each over its destination, then flush their folders."""
        pending, self._pending = self._pending, []
        try:
            # mkstemp creates 0600 files: give each new file the old one's mode, or the umask's default, so that a
            # store or model read by a service running as another user stays readable
            for tmp, target in pending:
                os.chmod(tmp, _mode_for(target))
            fsync_files([tmp for tmp, _ in pending])
            for tmp, target in pending:
                os.replace(tmp, target)
        except BaseException:
            self._pending = pending
            raise
        for folder in dict.fromkeys(target.parent for _, target in pending):
            fsync_dir(folder)

    def commit_if_full(self) -> None:
        """:meth:`commit` once ``limit`` files are pending (an interrupted run keeps what was published)."""
        if len(self._pending) >= self.limit:
            self.commit()

    def discard(self) -> None:
        """Remove the temporary files not yet published."""
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._pending = []


@contextlib.contextmanager
def atomic_batch(limit: int = 512) -> Iterator[AtomicBatch]:
    """Yield an :class:`AtomicBatch`: files written to its paths replace their destinations durably when the block
    ends (or at each :meth:`AtomicBatch.commit`); on error the unpublished temporary files are removed.

    For many small files (archive members, extracted images): one fsync each costs milliseconds, a batch's
    concurrent fsyncs cost little more than one.
    """
    batch = AtomicBatch(limit)
    try:
        yield batch
        batch.commit()
    except BaseException:
        batch.discard()
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` durably, on error it is removed.

    The caller writes the whole file to the yielded path (``torch.save``, ``h5py.File``, ...).
    """
    target = Path(path)
    try:
        with atomic_batch() as batch:
            yield batch.path(path)
    except (RuntimeError, OSError) as exc:
        if _disk_full(exc) and not (isinstance(exc, OSError) and exc.filename):
            # torch and HDF5 report a full disk as RuntimeError (or an OSError without the file's name):
            # one OSError naming the destination, which the CLI turns into one sentence
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from exc
        raise


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left" in text or "errno = 28" in text or "Disk quota exceeded" in text


def ensure_free_space(path: PathLike, needed: int, what: str = "the file") -> None:
    """Raise one sentence when the disk holding ``path`` has less than ``needed`` bytes free.

    Used before writes whose library does not survive a full disk (HDF5 can leave its objects broken, and the
    interpreter crashes when they are collected): better refuse before writing than fail half-way.
    """
    target = Path(path)
    folder = target.parent if not target.is_dir() else target
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # unknown: let the write itself report
    if free < needed:
        raise MdprError(f"Cannot write {what} {target}: it needs about {_megabytes(needed)} but only "
                        f"{_megabytes(free)} are free on its disk; free some space, then run the same command again "
                        "(it continues where it stopped).")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{max(n, 0) // 1000} kB"


def os_error_sentence(exc: OSError) -> str:
    """One sentence for an :class:`OSError` met while reading or writing: the path, what the error means, what
    to do (the CLI's answer to an OS error; ``describe_os_error`` gives the meaning alone)."""
    meaning = describe_os_error(exc)
    where = str(exc.filename) if exc.filename is not None else ""
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space, then run the same command again (extract and prepare continue where they stopped)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "choose a writable location (or fix the permissions)"
    elif exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST):
        advice = "choose another path"
    elif exc.errno == errno.ENOENT:
        advice = "check the path"
    else:
        advice = "check the path and the disk"
    if where:
        return f"Cannot use {where}: {meaning}; {advice}."
    return f"A file operation failed: {meaning}; {advice}."


#: OS errors that are about the user's files and disks even when the exception names no file.
USER_OS_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` (see the module's durability rule)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) so that readers see either the old or the new file, never a part."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    """Replace ``path`` by ``obj`` as strict JSON (non-finite numbers are refused, never written as NaN)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def atomic_copy(src: PathLike, dst: PathLike) -> None:
    """Copy ``src`` over ``dst`` with the same guarantee as the writers above."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def describe_os_error(exc: OSError) -> str:
    """What an OS error on a path means for the user, in a few words."""
    meanings = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder, not a file",
        errno.ELOOP: "the path contains a symbolic-link loop",
        errno.ENAMETOOLONG: "the name is too long",
        errno.ENOENT: "it does not exist",
        errno.EEXIST: "it already exists",
    }
    return meanings.get(exc.errno or 0, exc.strerror or type(exc).__name__)


# ---------------------------------------------------------------------------------------------- torch files


def _safe_numpy_globals() -> List[Any]:
    """numpy scalar/dtype reconstructors: fast-reid checkpoints can hold numpy metrics next to the weights."""
    import numpy as np

    allowed: List[Any] = [np.dtype]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["scalar"])
            allowed.append(module.scalar)
            break
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def read_torch_file(path: PathLike, map_location: Any = "cpu", what: str = "Weights file") -> Any:
    """``torch.load(path, weights_only=True)`` with one clear :class:`MdprError` for every way that can fail.

    ``what`` names the file in the messages ("Weights file", "Checkpoint", ...).
    """
    import torch

    file = Path(path).expanduser()
    if not file.is_file():
        raise MdprError(f"{what} {file} does not exist; pass the path to a .pth/.pt checkpoint.")
    if _looks_like_hdf5(file):
        raise MdprError(f"{what} {file} is an HDF5 file (a feature store?), not a PyTorch checkpoint; "
                        "pass the .pt/.pth file of a model.")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as first_error:  # noqa: BLE001 - every failure becomes one user-facing sentence
        if "Unsupported global" in str(first_error):
            try:
                with torch.serialization.safe_globals(_safe_numpy_globals()):
                    return torch.load(file, map_location=map_location, weights_only=True)
            except Exception as second_error:  # noqa: BLE001
                first_error = second_error
        raise MdprError(f"{what} {file} is not a readable PyTorch checkpoint ({_first_line(first_error)}); pass an "
                        "mdpr, fast-reid/MDPR, torchvision, IBN-Net or LUPerson .pth file.") from None


def _looks_like_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without advice that does not apply to mdpr users.

    torch suggests re-loading with ``weights_only=False``, which would run arbitrary code from the file.
    """
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    for marker in ("weights_only", "Weights only load failed"):
        if marker in line:
            return "it holds objects other than tensors and plain values, which mdpr never unpickles"
    return line[:200]


# ---------------------------------------------------------------------------------------------- output paths


def _probe_dir(folder: Path, what: str, path: Path) -> None:
    """Raise one sentence unless ``folder`` is (or can become) a writable folder."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # a dangling link or a loop
            raise MdprError(f"Cannot write {what} {path}: {existing} is a broken symbolic link; choose another path.")
        parent = existing.parent
        if parent == existing:
            break
        existing = parent
    if not existing.is_dir():
        raise MdprError(f"Cannot write {what} {path}: {existing} is a file, not a folder; choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MdprError(f"Cannot write {what} {path}: the folder {existing} is not writable (permission denied or a "
                        "read-only file system); choose another path.")
    try:  # access() says yes on read-only mounts for root: create and remove a probe file
        fd, probe = tempfile.mkstemp(prefix=".mdpr-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MdprError(f"Cannot write {what} {path}: {describe_os_error(exc)} in {existing}; choose another "
                        "path.") from None


def check_output_file(path: PathLike, what: str = "the output file") -> Path:
    """Check before any work that ``path`` can be written as a file (not a folder, writable parent)."""
    target = Path(path).expanduser()
    try:
        if target.is_dir():
            raise MdprError(f"Cannot write {what} {target}: it is a folder; give a file name.")
        _probe_dir(target.parent if str(target.parent) else Path("."), what, target)
    except OSError as exc:  # e.g. ELOOP while resolving
        raise MdprError(f"Cannot write {what} {target}: {describe_os_error(exc)}; choose another path.") from None
    return target


def check_output_folder(path: PathLike, what: str = "the output folder") -> Path:
    """Check before any work that ``path`` is, or can be created as, a writable folder."""
    target = Path(path).expanduser()
    try:
        if target.exists() and not target.is_dir():
            raise MdprError(f"Cannot write {what} {target}: it is a file, not a folder; choose another path.")
        _probe_dir(target, what, target)
    except OSError as exc:
        raise MdprError(f"Cannot write {what} {target}: {describe_os_error(exc)}; choose another path.") from None
    return target


# ---------------------------------------------------------------------------------------------- locks


class ExclusiveLock:
    """An advisory lock on ``path`` (created when missing) held by this process only; released by the OS when
    the process dies, so a killed owner never leaves a stale lock.

    ``flock`` locks belong to the open file description, which a forked child (a DataLoader worker) shares:
    children close their copy right after the fork, so an orphaned worker never keeps the lock alive.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.fd = -1

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        _HELD_LOCKS.add(self)
        return True

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        _HELD_LOCKS.discard(self)

    def __enter__(self) -> ExclusiveLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_HELD_LOCKS: weakref.WeakSet[ExclusiveLock] = weakref.WeakSet()


def _release_locks_in_child() -> None:
    for lock in list(_HELD_LOCKS):
        if lock.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_locks_in_child)
