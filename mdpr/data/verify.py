"""Decode every image of a dataset in parallel and report the ones that cannot be read."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from PIL import Image

from mdpr.data.images import ImageReadError
from mdpr.runtime import usable_cpu_count


def decode_error(path: Union[str, Path]) -> Optional[str]:
    """None when ``path`` decodes completely with Pillow, else the reason it does not."""
    try:
        with Image.open(path) as img:
            img.load()  # a full decode: truncated files fail here, not in a later training run
            if img.width < 1 or img.height < 1:
                return "empty image"
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, ImageReadError) as exc:
        return str(exc) or type(exc).__name__
    return None


def default_workers() -> int:
    return max(1, min(8, usable_cpu_count()))


def verify_images(
    paths: Sequence[Union[str, Path]],
    workers: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> List[Tuple[Path, str]]:
    """``(path, reason)`` for each image that cannot be decoded, in input order.

    Decoding runs in a thread pool (Pillow releases the GIL while it decodes); ``progress(done, total)``
    is called as results come in.
    """
    total = len(paths)
    bad: List[Tuple[Path, str]] = []
    if total == 0:
        return bad
    with ThreadPoolExecutor(max_workers=default_workers() if workers is None else max(1, workers)) as pool:
        # map() keeps the input order and streams results, so progress moves smoothly
        for done, (path, reason) in enumerate(zip(paths, pool.map(decode_error, paths, chunksize=16)), start=1):
            if reason is not None:
                bad.append((Path(path), reason))
            if progress and (done % 64 == 0 or done == total):
                progress(done, total)
    return bad
