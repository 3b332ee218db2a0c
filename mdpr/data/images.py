"""Finding, naming and decoding images: shared by prepare, training, extraction and query."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from mdpr.errors import MdprError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: Larger images are refused before decoding (a 12000x12000 PNG would take 1.4 GB); person crops and
#: camera frames are far smaller.
MAX_IMAGE_PIXELS = 50_000_000

# Market-1501 / DukeMTMC-reID style: 0002_c1s1_000451_03.jpg, -1_c3s2_..., 0005_c2_f0046985.jpg
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class ImageReadError(Exception):
    """An image file could not be decoded (missing, truncated, not an image)."""


def is_image_file(path: Union[str, Path]) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def find_images(root: Union[str, Path]) -> List[Path]:
    """All image files under ``root``, recursively, in a deterministic (sorted relative path) order."""
    root = Path(root)
    found: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_file(name) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def parse_market_name(path: Union[str, Path]) -> Optional[Tuple[int, int]]:
    """``(pid, camid)`` from a Market-style file name (camid 0-based), or None when it does not match.

    Only the file name is matched, never the folders above it (a root such as ``/data/run_c1/`` must not
    change the result).
    """
    m = _MARKET_NAME.match(Path(path).name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)) - 1


def load_rgb(path: Union[str, os.PathLike[str]]) -> Image.Image:
    """Decode an image fully into an upright 8-bit RGB PIL image; raise :class:`ImageReadError` on any failure.

    The one decoding policy of mdpr: EXIF orientation applied (phone photos stored rotated come out
    upright), 16-bit and 32-bit grey images scaled to 8 bits (not clipped to white), palette, grey,
    alpha and CMYK images converted to RGB (alpha dropped), images above :data:`MAX_IMAGE_PIXELS`
    refused before their pixels are decoded.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageReadError(f"{path}: {width}x{height} pixels is more than the limit of "
                                     f"{MAX_IMAGE_PIXELS:,} pixels for one image")
            img.load()  # force full decode so truncated files fail here, not later in a worker
            return to_rgb8(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError, TypeError) as exc:
        raise ImageReadError(f"{path}: {exc}") from exc


def to_rgb8(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``img`` whatever its mode (see :func:`load_rgb`)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255) else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_error_sentence(path: Union[str, os.PathLike[str]], exc: BaseException, what: str = "Image") -> str:
    """The one sentence for an image that cannot be used: what, which file, why, what to pass instead."""
    text = str(exc)
    prefix = f"{path}: "
    reason = text[len(prefix):] if text.startswith(prefix) else text
    return f"{what} {path} could not be read ({reason}); pass a JPEG, PNG, BMP or WebP file."


def decode_image(path: Union[str, os.PathLike[str]], what: str = "Image") -> Image.Image:
    """:func:`load_rgb` with one :class:`MdprError` sentence instead of :class:`ImageReadError`."""
    try:
        return load_rgb(path)
    except ImageReadError as exc:
        raise MdprError(read_error_sentence(path, exc, what)) from None


def decode_images(paths: List[Path], what: str = "Image", workers: int = 1) -> List[Image.Image]:
    """:func:`decode_image` for every path, in order, on ``workers`` threads (Pillow decodes without the GIL);
    the first unreadable file raises its one sentence."""
    if workers <= 1 or len(paths) < 2:
        return [decode_image(p, what) for p in paths]
    with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        return list(pool.map(lambda p: decode_image(p, what), paths))
