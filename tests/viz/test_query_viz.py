"""The ranked-list picture: size, borders, placeholders, overlays."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mdpr.viz import (
    MATCH,
    MISMATCH,
    PROBE,
    UNKNOWN,
    RankedRow,
    Tile,
    match_color,
    ranked_list_size,
    save_picture,
    save_ranked_lists,
)


def test_picture_size_and_border_colours(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 128), (10, 20, 30))
    img.save(tmp_path / "p.png")
    rows = [
        RankedRow(Tile(tmp_path / "p.png", ("probe",), PROBE),
                  [Tile(img, ("#1 0.1",), match_color(3, 3)), Tile(img, ("#2 0.2",), match_color(3, 4)),
                   Tile(tmp_path / "missing.jpg", ("#3 0.3",), match_color(None, 4))]),
        RankedRow(Tile(img, ("probe",), PROBE), [Tile(img, ("#1 0.5",), UNKNOWN)]),
    ]
    out = save_ranked_lists(rows, tmp_path / "sub" / "ranked.png", thumb_size=(64, 32))
    with Image.open(out) as pic:
        assert pic.format == "PNG"
        assert pic.size == ranked_list_size(2, 3, (64, 32))
        pic = pic.convert("RGB")
        # layout: margin 10, cell width 32 + 2*4, separator 24, gap 6; borders are the first pixels of a cell
        assert pic.getpixel((10, 10)) == PROBE
        x1 = 10 + 40 + 24
        assert pic.getpixel((x1, 10)) == MATCH
        assert pic.getpixel((x1 + 40 + 6, 10)) == MISMATCH
        assert pic.getpixel((x1 + 2 * (40 + 6), 10)) == UNKNOWN
        assert pic.getpixel((x1 + 20, 40)) == (10, 20, 30)  # the thumbnail itself


def test_size_grows_with_rows_and_results() -> None:
    w1, h1 = ranked_list_size(1, 5)
    w2, h2 = ranked_list_size(3, 10)
    assert w2 > w1 and h2 > 2 * h1


def test_overlay_hook_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (32, 64), (0, 0, 0))
    red = Tile(img, (), UNKNOWN, overlay=lambda im: Image.new("RGB", im.size, (255, 0, 0)))
    out = save_ranked_lists([RankedRow(red, [])], tmp_path / "o.png", thumb_size=(64, 32))
    with Image.open(out) as pic:
        assert pic.convert("RGB").getpixel((10 + 4 + 16, 10 + 4 + 32)) == (255, 0, 0)


def test_save_picture_takes_the_format_from_the_suffix_and_leaves_no_temporary(tmp_path: Path) -> None:
    img = Image.new("RGB", (16, 8), (200, 10, 10))
    out = save_picture(img, tmp_path / "pic.JPG")
    with Image.open(out) as pic:
        assert pic.format == "JPEG"
    with pytest.raises(ValueError, match="unknown file extension"):
        save_picture(img, tmp_path / "pic.nope")
    assert [p.name for p in tmp_path.iterdir()] == ["pic.JPG"]
