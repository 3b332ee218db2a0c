"""Finding the images to index in a folder, with identities parsed from Market-style file names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Union

from mdpr.data.images import IMAGE_EXTENSIONS, find_images, is_image_file, parse_market_name
from mdpr.errors import MdprError

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ImageItem:
    """An image to index: its file and, when known, its identity and camera (-1 = unknown)."""

    path: Path
    pid: int = -1
    camid: int = -1


def items_from_folder(folder: PathLike) -> List[ImageItem]:
    """Every image under ``folder`` (sorted, recursive), or the one image file ``folder`` names, with pid / camid
    parsed from Market-style names."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise MdprError(f"Image folder {root} does not exist; pass the folder that holds the crops to index.")
    if not root.is_dir() and not is_image_file(root):
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise MdprError(f"{root} is not an image file ({exts}) or a folder of images; pass one of those.")
    found = find_images(root) if root.is_dir() else [root]
    items = []
    for path in found:
        parsed = parse_market_name(path)
        pid, camid = parsed if parsed is not None else (-1, -1)
        # The path as named, never resolved: a symlink is an image of its own (its name's identity and
        # camera, its own row), read through the link; a link that loops is skipped when it cannot be read.
        items.append(ImageItem(Path(os.path.abspath(path)), max(pid, -1), camid))
    if not items:
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise MdprError(f"No images ({exts}) found under {root}; check the folder.")
    return items


def image_files(paths: Sequence[PathLike], what: str = "Image") -> List[Path]:
    """Image files and folders alike: files as given, folders searched recursively (sorted); one sentence for
    a path that does not exist or a folder without images."""
    files: List[Path] = []
    for item in paths:
        p = Path(item).expanduser()
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise MdprError(f"{what} folder {p} holds no images; pass image files or a folder of images.")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise MdprError(f"{what} {p} does not exist; pass an existing image file or folder.")
    return files
