"""The write-ahead journal of a store: an append-only file of CRC-checked batches.

``<store>.journal`` starts with a header (magic, the writer's :class:`~mdpr.store.schema.StoreMeta`)
and holds one length-prefixed, CRC-checked record per batch: a torn tail (a kill or a power cut in the
middle of a write) is detected and dropped when the journal is scanned. The journal is locked while a
writer holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mdpr.store.schema import StoreMeta

_JOURNAL_MAGIC = b"MDPRJNL1"
_RECORD_MAGIC = b"MDRB"
_RECORD_HEADER = struct.Struct("<4sQI")  # magic, payload length, crc32(payload)
_U32 = struct.Struct("<I")


@dataclass
class Record:
    """Where one batch lies in the journal, and the paths (and failed images) it holds."""

    offset: int  # of the payload
    length: int
    rows: int
    paths: List[str] = field(default_factory=list)
    failed: List[Any] = field(default_factory=list)


class Journal:
    """Append-only file of CRC-checked batches; a torn tail (killed mid-write, power cut) is dropped on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = not path.exists()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        _OPEN.add(self)
        self._locked = False
        self.header: Optional[Dict[str, Any]] = None
        self.records: List[Record] = []
        self.end = 0
        self._last_sync = time.monotonic()

    def lock(self) -> bool:
        """Take an exclusive lock (released by the OS if the process dies); False when another process holds it.

        ``flock`` locks belong to the open file description, which a forked child (a DataLoader worker)
        shares: the lock would outlive a killed writer for as long as an orphaned worker lives. So
        children close their copy of the descriptor right after the fork (:func:`_close_in_child`), and
        only the writing process holds the lock.
        """
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; concurrent writers are the user's responsibility
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        self._locked = True
        return True

    def scan(self) -> None:
        """Read the header and every complete record; remember where the valid part ends."""
        size = os.fstat(self.fd).st_size
        self.header, self.records, self.end = None, [], 0
        head = _pread(self.fd, len(_JOURNAL_MAGIC) + _U32.size, 0)
        if len(head) < len(_JOURNAL_MAGIC) + _U32.size or head[: len(_JOURNAL_MAGIC)] != _JOURNAL_MAGIC:
            return
        (hlen,) = _U32.unpack_from(head, len(_JOURNAL_MAGIC))
        pos = len(head)
        body = _pread(self.fd, hlen + _U32.size, pos)
        if len(body) < hlen + _U32.size or zlib.crc32(body[:hlen]) != _U32.unpack_from(body, hlen)[0]:
            return
        self.header = json.loads(body[:hlen].decode("utf-8"))
        pos += hlen + _U32.size
        self.end = pos
        while pos + _RECORD_HEADER.size <= size:
            magic, length, crc = _RECORD_HEADER.unpack(_pread(self.fd, _RECORD_HEADER.size, pos))
            start = pos + _RECORD_HEADER.size
            if magic != _RECORD_MAGIC or start + length > size:
                break
            payload = _pread(self.fd, length, start)
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            (jlen,) = _U32.unpack_from(payload, 0)
            info = json.loads(payload[_U32.size : _U32.size + jlen].decode("utf-8"))
            self.records.append(Record(start, length, len(info["paths"]), info["paths"], info.get("failed", [])))
            pos = start + length
            self.end = pos

    def reset(self, header: Dict[str, Any]) -> None:
        """Start over with only a header (after a fold, or when the old content was unusable)."""
        data = json.dumps(header, sort_keys=True).encode("utf-8")
        blob = _JOURNAL_MAGIC + _U32.pack(len(data)) + data + _U32.pack(zlib.crc32(data))
        # Forget the old records first: if this is interrupted, memory must not point into a cut file.
        self.header, self.records, self.end = None, [], 0
        try:
            os.ftruncate(self.fd, 0)
            _pwrite_all(self.fd, blob, 0)
            os.fsync(self.fd)
        except OSError as exc:  # a full disk: name the journal
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        self.header, self.records, self.end = header, [], len(blob)

    def truncate_tail(self) -> None:
        if os.fstat(self.fd).st_size != self.end:
            os.ftruncate(self.fd, self.end)
            os.fsync(self.fd)

    def append(self, info: Dict[str, Any], features: np.ndarray, fsync_interval: float) -> None:
        meta = json.dumps(info).encode("utf-8")
        little = np.ascontiguousarray(features, dtype=features.dtype.newbyteorder("<"))
        payload = b"".join((_U32.pack(len(meta)), meta, little.tobytes()))
        blob = _RECORD_HEADER.pack(_RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload
        try:
            _pwrite_all(self.fd, blob, self.end)
        except OSError as exc:  # a full disk: name the journal (a cut record is dropped when it is next read)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        self.records.append(Record(self.end + _RECORD_HEADER.size, len(payload), len(info["paths"]), info["paths"],
                                   info.get("failed", [])))
        self.end += len(blob)
        now = time.monotonic()
        if now - self._last_sync >= fsync_interval:
            os.fsync(self.fd)
            self._last_sync = now

    def read(self, record: Record, meta: StoreMeta) -> Tuple[Dict[str, Any], np.ndarray]:
        payload = _pread(self.fd, record.length, record.offset)
        (jlen,) = _U32.unpack_from(payload, 0)
        info = json.loads(payload[_U32.size : _U32.size + jlen].decode("utf-8"))
        feats = np.frombuffer(payload, dtype=np.dtype(meta.dtype).newbyteorder("<"), offset=_U32.size + jlen)
        return info, feats.reshape(record.rows, meta.dim).astype(meta.dtype)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self, delete: bool) -> None:
        if self.fd < 0:
            return
        if delete:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)  # also releases the lock
        self.fd = -1


#: Journals open in this process (closed in forked children).
_OPEN: weakref.WeakSet[Journal] = weakref.WeakSet()


def _close_in_child() -> None:
    for journal in list(_OPEN):
        if journal.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(journal.fd)
            journal.fd = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def has_records(path: Path) -> bool:
    """True when the journal at ``path`` has a valid header followed by data (rows not folded into the store yet)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_JOURNAL_MAGIC) + _U32.size)
            if len(head) < len(_JOURNAL_MAGIC) + _U32.size or head[: len(_JOURNAL_MAGIC)] != _JOURNAL_MAGIC:
                return False
            (hlen,) = _U32.unpack_from(head, len(_JOURNAL_MAGIC))
            return bool(os.fstat(fh.fileno()).st_size > len(head) + hlen + _U32.size)
    except OSError:
        return False


def _pread(fd: int, length: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows: one thread uses the journal, so seek + read is safe
    return os.read(fd, length)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, view, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            written = os.write(fd, view)
        view = view[written:]
        offset += written
