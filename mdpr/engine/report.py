"""What a run directory's ``metrics.jsonl`` says: a summary (for the end-of-run table) and a PNG plot.

``metrics.jsonl`` holds one JSON object per line with a ``type``:

* ``train``: ``epoch`` (1-based), ``step`` (1-based in the epoch), ``iteration`` (global, 1-based), ``lr``,
  ``loss`` (sum of the terms), every ``loss_*`` term, ``images_per_s``, ``time`` (seconds since start);
* ``epoch``: the epoch's mean of every term, ``images``, ``seconds``, ``replaced_images``;
* ``eval``: ``epoch``, ``iteration``, ``mAP``, ``mINP``, ``rank1``, ``rank5``, ``rank10``, ``num_query``...

The plot is drawn with Pillow (no plotting library needed): total loss and loss groups per iteration,
learning rate per iteration, and mAP / Rank-1 per epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont

from mdpr.fileio import atomic_path

PathLike = Union[str, Path]


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (a torn last line, from a killed process, is ignored)."""
    records: List[Dict[str, Any]] = []
    p = Path(path)
    if not p.is_file():
        return records
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def loss_groups(record: Dict[str, Any]) -> Dict[str, float]:
    """Sum the official loss terms into readable groups: classification, triplet, attention, distillation."""
    groups: Dict[str, float] = {}
    for key, value in record.items():
        if not key.startswith("loss_") or not isinstance(value, (int, float)):
            continue
        if key.endswith("_cls"):
            name = "classification"
        elif key.endswith("_triplet"):
            name = "triplet"
        elif "diversity" in key:
            name = "attention"
        elif "distillation" in key:
            name = "distillation"
        else:
            name = "other"
        groups[name] = groups.get(name, 0.0) + float(value)
    return groups


def summarize(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The numbers of the end-of-run table."""
    train = [r for r in records if r.get("type") == "train"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    evals = [r for r in records if r.get("type") == "eval"]
    out: Dict[str, Any] = {
        "epochs": epochs[-1]["epoch"] if epochs else 0,
        "iterations": train[-1]["iteration"] if train else 0,
        "seconds": round(sum(float(r.get("seconds", 0.0)) for r in epochs), 3),
        "images": int(sum(int(r.get("images", 0)) for r in epochs)),
        "replaced_images": int(sum(int(r.get("replaced_images", 0)) for r in epochs)),
        "final_lr": train[-1]["lr"] if train else None,
        "final_losses": {k: v for k, v in epochs[-1].items() if k == "loss" or k.startswith("loss_")} if epochs else {},
        "evaluations": [
            {k: r[k] for k in ("epoch", "mAP", "rank1", "rank5", "rank10", "mINP") if k in r} for r in evals
        ],
        "final_metrics": {k: v for k, v in evals[-1].items() if k not in ("type",)} if evals else {},
    }
    if out["seconds"] > 0:
        out["images_per_s"] = round(out["images"] / out["seconds"], 2)
    return out


# --------------------------------------------------------------------------------------------- plotting

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _font(size: int) -> Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, count: int = 5) -> List[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def _panel(
    draw: ImageDraw.ImageDraw,
    box: Tuple[int, int, int, int],
    title: str,
    series: List[Tuple[str, List[Tuple[float, float]]]],
    xlabel: str,
    y_range: Optional[Tuple[float, float]] = None,
) -> None:
    left, top, right, bottom = box
    font, small = _font(15), _font(12)
    draw.text((left, top), title, fill=(20, 20, 20), font=font)
    px0, py0, px1, py1 = left + 64, top + 26, right - 10, bottom - 34
    draw.rectangle((px0, py0, px1, py1), outline=(90, 90, 90))
    points = [p for _, pts in series for p in pts if math.isfinite(p[1])]
    if not points:
        draw.text((px0 + 10, py0 + 10), "no data yet", fill=(120, 120, 120), font=small)
        return
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    y_lo, y_hi = y_range if y_range else (min(ys), max(ys))
    if y_hi <= y_lo:
        pad = abs(y_lo) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad

    def sx(x: float) -> float:
        return px0 + (x - x_lo) / (x_hi - x_lo) * (px1 - px0)

    def sy(y: float) -> float:
        return py1 - (y - y_lo) / (y_hi - y_lo) * (py1 - py0)

    for t in _nice_ticks(y_lo, y_hi):
        if y_lo <= t <= y_hi:
            y = sy(t)
            draw.line((px0, y, px1, y), fill=(225, 225, 225))
            draw.text((px0 - 6, y), _fmt(t), fill=(60, 60, 60), font=small, anchor="rm")
    for t in _nice_ticks(x_lo, x_hi):
        if x_lo <= t <= x_hi:
            x = sx(t)
            draw.line((x, py1, x, py1 + 4), fill=(90, 90, 90))
            draw.text((x, py1 + 6), _fmt(t), fill=(60, 60, 60), font=small, anchor="mt")
    draw.text(((px0 + px1) / 2, bottom - 12), xlabel, fill=(60, 60, 60), font=small, anchor="mm")
    legend_x = left + int(draw.textlength(title, font=font)) + 24
    for i, (name, pts) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        coords = [(sx(x), sy(min(max(y, y_lo), y_hi))) for x, y in pts if math.isfinite(y)]
        if len(coords) == 1:
            x, y = coords[0]
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        elif coords:
            draw.line(coords, fill=color, width=2)
            if len(coords) <= 30:
                for x, y in coords:
                    draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=color)
        draw.rectangle((legend_x, top + 3, legend_x + 12, top + 13), fill=color)
        draw.text((legend_x + 16, top + 8), name, fill=(30, 30, 30), font=small, anchor="lm")
        legend_x += 28 + int(draw.textlength(name, font=small))


def plot_training(records: Sequence[Dict[str, Any]], out_path: PathLike, title: str = "training") -> Path:
    """Write a PNG (1000 x 960) with losses, learning rate and mAP / Rank-1 of a run; returns its path."""
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    width, height = 1000, 960
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((width / 2, 16), title, fill=(0, 0, 0), font=_font(18), anchor="mm")

    loss_series: List[Tuple[str, List[Tuple[float, float]]]] = [
        ("total", [(r["iteration"], float(r["loss"])) for r in train if "loss" in r])
    ]
    grouped: Dict[str, List[Tuple[float, float]]] = {}
    for r in train:
        for name, value in loss_groups(r).items():
            grouped.setdefault(name, []).append((r["iteration"], value))
    loss_series += sorted(grouped.items())
    _panel(draw, (20, 36, width - 20, 396), "losses", loss_series, "iteration")
    _panel(
        draw, (20, 406, width - 20, 666), "learning rate", [("lr", [(r["iteration"], r["lr"]) for r in train])], "iteration"
    )
    _panel(
        draw,
        (20, 676, width - 20, height - 10),
        "query / gallery evaluation",
        [
            ("mAP", [(r["epoch"], float(r["mAP"])) for r in evals if "mAP" in r]),
            ("Rank-1", [(r["epoch"], float(r["rank1"])) for r in evals if "rank1" in r]),
        ],
        "epoch",
        y_range=(0.0, 1.0),
    )
    out = Path(out_path)
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out
