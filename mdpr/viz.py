"""Pictures drawn with Pillow (no matplotlib at run time).

Ranked lists: one row per probe, the probe on the left, then its top-k gallery images with rank and
distance; borders are green / red when the gallery identity matches / does not match the probe's
(grey when either is unknown). Each tile may carry an ``overlay`` callable applied to the decoded
image before it is shrunk to a thumbnail, which is where attention maps or other annotations plug in.

Attention overlays: the Soft Content Branch's attention maps (layer4 and layer3) blended over the
input as heat maps, one panel per map (:func:`draw_attention_overlays`; the command is :mod:`mdpr.workflows.visualize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from mdpr.fileio import atomic_path

ImageSource = Union[str, Path, Image.Image, None]
Overlay = Callable[[Image.Image], Image.Image]
Font = Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]  #: what ``ImageFont.load_default()`` returns

MATCH = (0, 170, 60)
MISMATCH = (220, 30, 30)
UNKNOWN = (170, 170, 170)
PROBE = (30, 90, 200)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
PLACEHOLDER = (225, 225, 225)

BORDER = 4  #: px of coloured frame around each thumbnail
GAP = 6  #: px between gallery tiles
SEPARATOR = 24  #: px between the probe and its first result
MARGIN = 10  #: px around the picture
ROW_GAP = 14  #: px between probes
LINE_HEIGHT = 13  #: px per caption line
CAPTION_LINES = 2


@dataclass
class Tile:
    """One picture in a ranked list."""

    image: ImageSource  #: path, PIL image, or None (drawn as a grey placeholder)
    lines: Tuple[str, ...] = ()  #: caption, up to two short lines
    color: Tuple[int, int, int] = UNKNOWN  #: border colour
    overlay: Optional[Overlay] = None  #: applied to the full-size RGB image before thumbnailing


@dataclass
class RankedRow:
    probe: Tile
    results: List[Tile]


def match_color(probe_pid: Optional[int], gallery_pid: Optional[int]) -> Tuple[int, int, int]:
    """Green when both identities are known and equal, red when known and different, grey otherwise."""
    if probe_pid is None or gallery_pid is None or probe_pid < 0 or gallery_pid < 0:
        return UNKNOWN
    return MATCH if probe_pid == gallery_pid else MISMATCH


def ranked_list_size(num_rows: int, num_results: int, thumb_size: Tuple[int, int] = (128, 64)) -> Tuple[int, int]:
    """``(width, height)`` in pixels of :func:`draw_ranked_lists` output for this many rows and results."""
    cell_w, cell_h = _cell(thumb_size)
    width = 2 * MARGIN + cell_w + (SEPARATOR + num_results * cell_w + max(0, num_results - 1) * GAP if num_results else 0)
    height = 2 * MARGIN + num_rows * cell_h + max(0, num_rows - 1) * ROW_GAP
    return width, height


def draw_ranked_lists(rows: Sequence[RankedRow], thumb_size: Tuple[int, int] = (128, 64)) -> Image.Image:
    """The ranked-list picture for ``rows`` (thumbnails are ``thumb_size`` = (height, width) pixels)."""
    num_results = max((len(r.results) for r in rows), default=0)
    width, height = ranked_list_size(len(rows), num_results, thumb_size)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    cell_w, cell_h = _cell(thumb_size)
    y = MARGIN
    for row in rows:
        x = MARGIN
        _paste_tile(canvas, draw, font, row.probe, x, y, thumb_size)
        x += cell_w + SEPARATOR
        for tile in row.results:
            _paste_tile(canvas, draw, font, tile, x, y, thumb_size)
            x += cell_w + GAP
        y += cell_h + ROW_GAP
    return canvas


def _cell(thumb_size: Tuple[int, int]) -> Tuple[int, int]:
    h, w = thumb_size
    return w + 2 * BORDER, h + 2 * BORDER + CAPTION_LINES * LINE_HEIGHT + 2


def _thumbnail(tile: Tile, thumb_size: Tuple[int, int]) -> Image.Image:
    h, w = thumb_size
    img: Optional[Image.Image] = None
    if isinstance(tile.image, Image.Image):
        img = tile.image.convert("RGB")
    elif tile.image is not None:
        try:
            with Image.open(tile.image) as src:
                img = src.convert("RGB")
        except (OSError, ValueError, SyntaxError):
            img = None
    if img is None:
        thumb = Image.new("RGB", (w, h), PLACEHOLDER)
        d = ImageDraw.Draw(thumb)
        d.line((0, 0, w, h), fill=UNKNOWN)
        d.line((0, h, w, 0), fill=UNKNOWN)
        return thumb
    if tile.overlay is not None:
        img = tile.overlay(img).convert("RGB")
    return ImageOps.pad(img, (w, h), method=Image.Resampling.BICUBIC, color=BACKGROUND)


def _paste_tile(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: Font,
    tile: Tile,
    x: int,
    y: int,
    thumb_size: Tuple[int, int],
) -> None:
    h, w = thumb_size
    draw.rectangle((x, y, x + w + 2 * BORDER - 1, y + h + 2 * BORDER - 1), fill=tile.color)
    canvas.paste(_thumbnail(tile, thumb_size), (x + BORDER, y + BORDER))
    ty = y + h + 2 * BORDER + 1
    for line in tile.lines[:CAPTION_LINES]:
        text = _fit(draw, font, line, w + 2 * BORDER)
        tw = draw.textlength(text, font=font)
        draw.text((x + (w + 2 * BORDER - tw) / 2, ty), text, fill=TEXT, font=font)
        ty += LINE_HEIGHT


def _fit(draw: ImageDraw.ImageDraw, font: Font, text: str, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def save_picture(image: Image.Image, path: Union[str, Path]) -> Path:
    """Save ``image`` atomically in the format Pillow infers from the suffix (PNG, JPEG, ...); returns the path."""
    out = Path(path)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:  # the temporary file's suffix says nothing: refuse as Pillow would for ``out``
        raise ValueError(f"unknown file extension: {out.suffix}")
    with atomic_path(out) as tmp:
        image.save(tmp, format=fmt)
    return out


def save_ranked_lists(rows: Sequence[RankedRow], path: Union[str, Path], thumb_size: Tuple[int, int] = (128, 64)) -> Path:
    """Draw and save as PNG (or any format Pillow infers from the suffix); returns the path."""
    return save_picture(draw_ranked_lists(rows, thumb_size), path)


__all__ = [
    "MATCH",
    "PROBE",
    "MISMATCH",
    "UNKNOWN",
    "RankedRow",
    "Tile",
    "draw_ranked_lists",
    "match_color",
    "ranked_list_size",
    "save_picture",
    "save_ranked_lists",
]


# ---------------------------------------------------------------------------------------------- attention
def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with a blue-cyan-yellow-red ramp (a perceptually ordered "jet")."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([0.0, 0.35, 0.65, 1.0])
    colors = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float64)
    out = np.empty(v.shape[:-1] + (3,), dtype=np.float64)
    for c in range(3):
        out[..., c] = np.interp(v[..., 0], stops, colors[:, c])
    return out.astype(np.uint8)


def draw_attention_overlays(
    image: Image.Image, maps: Mapping[str, np.ndarray], panel_height: int = 256, alpha: float = 0.5
) -> Image.Image:
    """One row: the image, then every attention map of every layer blended over it as a heat map.

    ``maps`` is ``{"layer4": (M, h, w), "layer3": (M, h, w)}`` with values in [0, 1] (softmax outputs);
    each map is scaled by its own maximum so that its shape is visible whatever its mass.
    """
    width = max(1, round(image.width * panel_height / image.height))
    base = image.convert("RGB").resize((width, panel_height), Image.Resampling.BICUBIC)
    base_arr = np.asarray(base, dtype=np.float64)
    panels: List[Tuple[str, Image.Image]] = [("input", base)]
    for layer, layer_maps in maps.items():
        for i, amap in enumerate(np.asarray(layer_maps, dtype=np.float64)):
            small = Image.fromarray((amap / max(amap.max(), 1e-12) * 255).astype(np.uint8))
            up = np.asarray(small.resize((width, panel_height), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
            blended = (1 - alpha) * base_arr + alpha * heat_colors(up)
            panels.append((f"{layer} #{i}", Image.fromarray(blended.astype(np.uint8))))
    font = ImageFont.load_default()
    label_h, gap = 14, 4
    canvas = Image.new("RGB", (len(panels) * (width + gap) + gap, panel_height + label_h + 2 * gap), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (title, panel) in enumerate(panels):
        x = gap + k * (width + gap)
        canvas.paste(panel, (x, gap + label_h))
        draw.text((x + 2, gap), _fit(draw, font, title, width - 4), fill=(0, 0, 0), font=font)
    return canvas
