"""A small reader for MATLAB level-5 ``.mat`` files (MATLAB's default before v7.3), without scipy.

It reads what ReID split files hold: numeric arrays (double, single, integer, logical), char arrays
and cell arrays of those, compressed (``miCOMPRESSED``) or not, either byte order. Structs, sparse
and object arrays are refused with :class:`MatFileError`. Arrays come back as numpy arrays in MATLAB's
shape (column-major data reordered), cells as numpy object arrays, char arrays as ``str`` (a char
matrix with several rows as a list of strings).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

# data element types
_MI_INT8, _MI_UINT8, _MI_INT16, _MI_UINT16, _MI_INT32, _MI_UINT32 = 1, 2, 3, 4, 5, 6
_MI_SINGLE, _MI_DOUBLE, _MI_INT64, _MI_UINT64 = 7, 9, 12, 13
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8, _MI_UTF16, _MI_UTF32 = 14, 15, 16, 17, 18

_MI_DTYPES = {
    _MI_INT8: "i1",
    _MI_UINT8: "u1",
    _MI_INT16: "i2",
    _MI_UINT16: "u2",
    _MI_INT32: "i4",
    _MI_UINT32: "u4",
    _MI_SINGLE: "f4",
    _MI_DOUBLE: "f8",
    _MI_INT64: "i8",
    _MI_UINT64: "u8",
}

# array classes
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE = 1, 2, 3, 4, 5
_MX_NUMERIC = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}


class MatFileError(ValueError):
    """The file is not a level-5 MAT-file or uses a feature this reader does not support."""


class _Reader:
    def __init__(self, data: bytes, endian: str) -> None:
        self.data = data
        self.endian = endian

    def elements(self, data: bytes):
        """Yield ``(type, payload)`` for the data elements in ``data``."""
        pos, end = 0, len(data)
        e = self.endian
        while pos + 8 <= end:
            (first,) = struct.unpack_from(e + "I", data, pos)
            if first >> 16:  # small data element: 2-byte size, 2-byte type, 4 bytes of data
                mtype, nbytes = first & 0xFFFF, first >> 16
                if nbytes > 4:
                    raise MatFileError("corrupt small data element")
                yield mtype, data[pos + 4 : pos + 4 + nbytes]
                pos += 8
                continue
            mtype, nbytes = struct.unpack_from(e + "II", data, pos)
            start = pos + 8
            if start + nbytes > end:
                raise MatFileError("truncated data element")
            yield mtype, data[start : start + nbytes]
            # compressed elements are not padded; every other element is padded to 8 bytes
            pos = start + nbytes if mtype == _MI_COMPRESSED else start + ((nbytes + 7) // 8) * 8

    def variables(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for mtype, payload in self.elements(self.data):
            if mtype == _MI_COMPRESSED:
                try:
                    payload = zlib.decompress(payload)
                except zlib.error as exc:
                    raise MatFileError(f"bad compressed element ({exc})") from None
                for inner_type, inner in self.elements(payload):
                    if inner_type == _MI_MATRIX:
                        name, value = self.matrix(inner)
                        out[name] = value
            elif mtype == _MI_MATRIX:
                name, value = self.matrix(payload)
                out[name] = value
        return out

    def numbers(self, mtype: int, payload: bytes) -> np.ndarray:
        if mtype not in _MI_DTYPES:
            raise MatFileError(f"unsupported numeric data type {mtype}")
        return np.frombuffer(payload, dtype=np.dtype(self.endian + _MI_DTYPES[mtype]))

    def matrix(self, payload: bytes) -> Tuple[str, Any]:
        if not payload:  # an empty matrix element (e.g. an empty cell)
            return "", np.zeros((0, 0))
        parts = list(self.elements(payload))
        if len(parts) < 3:
            raise MatFileError("matrix element lacks flags, dimensions or name")
        flags = self.numbers(parts[0][0], parts[0][1])
        mx_class = int(flags[0]) & 0xFF
        is_complex = bool(int(flags[0]) & 0x0800)
        is_logical = bool(int(flags[0]) & 0x0200)
        dims = tuple(int(d) for d in self.numbers(parts[1][0], parts[1][1]))
        name = parts[2][1].decode("latin-1")
        count = int(np.prod(dims)) if dims else 0
        if mx_class == _MX_CELL:
            cells = np.empty(count, dtype=object)
            for i, (mtype, cell) in enumerate(parts[3 : 3 + count]):
                if mtype != _MI_MATRIX:
                    raise MatFileError("cell entry is not a matrix")
                cells[i] = self.matrix(cell)[1]
            return name, cells.reshape(dims, order="F")
        if mx_class == _MX_CHAR:
            if len(parts) < 4:
                return name, ""
            mtype, raw = parts[3]
            if mtype == _MI_UTF8:
                codes = np.array([ord(c) for c in raw.decode("utf-8", errors="replace")], dtype=np.uint32)
            elif mtype in (_MI_UTF16, _MI_UINT16):
                codes = np.frombuffer(raw, dtype=np.dtype(self.endian + "u2")).astype(np.uint32)
            elif mtype in (_MI_UTF32, _MI_UINT32, _MI_INT32):
                codes = np.frombuffer(raw, dtype=np.dtype(self.endian + "u4")).astype(np.uint32)
            else:
                codes = self.numbers(mtype, raw).astype(np.uint32)
            if codes.size != count or not dims:
                return name, "".join(chr(int(c)) for c in codes)
            chars = codes.reshape(dims[0], -1, order="F")
            rows = ["".join(chr(int(c)) for c in row) for row in chars]
            return name, rows[0] if len(rows) == 1 else rows
        if mx_class in _MX_NUMERIC:
            if is_complex:
                raise MatFileError(f"variable {name!r} is complex")
            if len(parts) < 4:
                return name, np.zeros(dims)
            values = self.numbers(*parts[3]).astype(_MX_NUMERIC[mx_class], copy=False)
            if values.size != count:
                raise MatFileError(f"variable {name!r} holds {values.size} values for shape {dims}")
            array = values.reshape(dims, order="F")
            return name, array.astype(bool) if is_logical else array
        kinds = {_MX_STRUCT: "a struct", _MX_OBJECT: "an object", _MX_SPARSE: "a sparse array"}
        raise MatFileError(f"variable {name!r} is {kinds.get(mx_class, f'of class {mx_class}')}, not supported")


def is_hdf5_mat(path: Union[str, Path]) -> bool:
    """True for MATLAB v7.3 files (HDF5 with a 512-byte MATLAB header; read those with h5py)."""
    with open(path, "rb") as fh:
        head = fh.read(520)
    return head[512:520] == b"\x89HDF\r\n\x1a\n" or head[:8] == b"\x89HDF\r\n\x1a\n"


def load_mat_v5(path: Union[str, Path]) -> Dict[str, Any]:
    """The variables of a level-5 MAT-file, by name."""
    data = Path(path).read_bytes()
    if len(data) < 128:
        raise MatFileError("file is shorter than a MAT-file header")
    if is_hdf5_mat(path):
        raise MatFileError("this is a MATLAB v7.3 (HDF5) file, not level 5")
    version_and_endian = data[124:128]
    if version_and_endian[2:4] == b"IM":
        endian = "<"
    elif version_and_endian[2:4] == b"MI":
        endian = ">"
    else:
        raise MatFileError("not a level-5 MAT-file (no MI/IM byte-order mark)")
    return _Reader(data[128:], endian).variables()
