"""Finding, naming and decoding images: shared by prepare, training, extraction and query."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

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


def load_rgb(path: Union[str, Path]) -> Image.Image:
    """Decode an image fully into an RGB PIL image; raise :class:`ImageReadError` on any failure."""
    try:
        with Image.open(path) as img:
            img.load()  # force full decode so truncated files fail here, not later in a worker
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: {exc}") from exc
