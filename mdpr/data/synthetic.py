"""Renderer of synthetic people: the built-in demo dataset (Market-1501 layout), drawn with Pillow and numpy.

Every identity has a stable appearance (clothing colours and patterns, sleeve and trouser type, hair,
hat, skin, body proportions, bag/backpack/scarf); every camera changes what a real camera changes
(illumination, colour cast, its own background scene with clutter and passers-by, blur, noise); every
image adds pose (front/back/side, stance), scale and crop jitter and sometimes a partial occlusion. So
raw pixels are dominated by the camera and the background, and a model has to learn the person.

Train and test identities are disjoint (half each, like Market-1501). The test identities are split
Market-style into ``query/`` (up to one image per camera, each with a match from another camera in the
gallery) and ``bounding_box_test/``, which also holds distractors (pid 0) and junk crops (pid -1).
Everything is a function of the seed: the same arguments give the same pixels.
"""

from __future__ import annotations

import colorsys
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mdpr.errors import MdprError
from mdpr.fileio import atomic_write_json, fsync_dir, fsync_files, replace_durably

PARAMS_FILE = "demo.json"
SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
JPEG_QUALITY = 90
_SS = 2  # draw at twice the size, then downsample: anti-aliased edges at no real cost

Color = Tuple[int, int, int]

# Well-separated clothing colours (names only help debugging).
TOP_COLORS: Dict[str, Color] = {
    "red": (200, 30, 35),
    "magenta": (190, 30, 160),
    "orange": (240, 130, 20),
    "yellow": (240, 215, 40),
    "lime": (140, 210, 50),
    "green": (30, 130, 50),
    "teal": (20, 140, 140),
    "sky": (110, 180, 235),
    "blue": (30, 70, 200),
    "navy": (25, 30, 85),
    "purple": (110, 45, 160),
    "pink": (240, 120, 180),
    "white": (235, 235, 230),
    "grey": (130, 130, 135),
    "black": (25, 25, 28),
    "brown": (115, 70, 35),
}
BOTTOM_COLORS: Dict[str, Color] = {
    "black": (22, 22, 26),
    "navy": (30, 35, 80),
    "jeans": (65, 95, 150),
    "grey": (140, 140, 145),
    "beige": (200, 180, 140),
    "brown": (100, 65, 40),
    "white": (225, 225, 220),
    "olive": (95, 105, 45),
    "red": (170, 35, 40),
    "plum": (85, 40, 110),
}
SKIN: Sequence[Color] = ((240, 205, 180), (215, 170, 130), (175, 120, 85), (115, 75, 50))
HAIR: Sequence[Color] = ((20, 15, 12), (75, 45, 25), (200, 165, 90), (150, 150, 150), (150, 60, 25))
SHOES: Sequence[Color] = ((20, 20, 20), (235, 235, 235), (110, 60, 30), (180, 30, 30), (40, 60, 140))
TOP_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo", "twotone", "diagonal")
BOTTOM_TYPES = ("trousers", "trousers", "shorts", "skirt")
ACCESSORIES = ("none", "none", "backpack", "handbag", "shoulderbag", "scarf")


@dataclass(frozen=True)
class DemoParams:
    num_ids: int = 100
    images_per_id: int = 16
    cameras: int = 4
    size: Tuple[int, int] = (128, 64)  #: (height, width)
    seed: int = 0
    version: int = 1  #: bump when the drawing changes, so an old folder is not mistaken for a new one


@dataclass
class DemoSummary:
    root: Path
    params: DemoParams
    train_ids: int
    test_ids: int
    images: Dict[str, int]  #: per split folder
    generated: bool  #: False when an identical demo was already there


# --------------------------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class Person:
    top: Color
    top2: Color
    pattern: str
    long_sleeves: bool
    bottom: Color
    bottom_type: str
    shoes: Color
    skin: Color
    hair: Color
    long_hair: bool
    hat: Optional[Color]
    accessory: str
    acc_color: Color
    acc_side: int  # -1 left, +1 right
    height: float  # fraction of the image height
    shoulders: float  # fraction of the image width
    leg_ratio: float  # legs / body height
    head: float  # head height / body height


def random_person(rng: np.random.Generator) -> Person:
    tops = list(TOP_COLORS.values())
    i = int(rng.integers(len(tops)))
    j = int((i + rng.integers(3, len(tops) - 2)) % len(tops))  # a clearly different second colour
    return Person(
        top=tops[i],
        top2=tops[j],
        pattern=str(rng.choice(TOP_PATTERNS)),
        long_sleeves=bool(rng.random() < 0.6),
        bottom=list(BOTTOM_COLORS.values())[int(rng.integers(len(BOTTOM_COLORS)))],
        bottom_type=str(rng.choice(BOTTOM_TYPES)),
        shoes=SHOES[int(rng.integers(len(SHOES)))],
        skin=SKIN[int(rng.integers(len(SKIN)))],
        hair=HAIR[int(rng.integers(len(HAIR)))],
        long_hair=bool(rng.random() < 0.35),
        hat=tops[int(rng.integers(len(tops)))] if rng.random() < 0.2 else None,
        accessory=str(rng.choice(ACCESSORIES)),
        acc_color=tops[int(rng.integers(len(tops)))],
        acc_side=int(rng.choice((-1, 1))),
        height=float(rng.uniform(0.86, 0.97)),
        shoulders=float(rng.uniform(0.46, 0.64)),
        leg_ratio=float(rng.uniform(0.42, 0.52)),
        head=float(rng.uniform(0.12, 0.155)),
    )


def _shade(c: Color, f: float) -> Color:
    r, g, b = (int(max(0, min(255, v * f))) for v in c)
    return r, g, b


def _draw_top(draw: ImageDraw.ImageDraw, p: Person, box: Tuple[int, int, int, int], view: str, unit: float) -> None:
    x0, y0, x1, y1 = box
    draw.rounded_rectangle(box, radius=max(1, int(unit * 3)), fill=p.top)
    w, h = x1 - x0, y1 - y0
    pat = p.pattern
    if view == "back" and pat == "logo":
        pat = "plain"  # the print is on the front only
    if pat == "hstripes":
        step = max(2, int(h / 5))
        for y in range(y0 + step // 2, y1, step):
            draw.rectangle((x0, y, x1, y + max(1, step // 2)), fill=p.top2)
    elif pat == "vstripes":
        step = max(2, int(w / 4))
        for x in range(x0 + step // 3, x1, step):
            draw.rectangle((x, y0, x + max(1, step // 2), y1), fill=p.top2)
    elif pat == "checks":
        step = max(2, int(w / 4))
        for yi, y in enumerate(range(y0, y1, step)):
            for xi, x in enumerate(range(x0, x1, step)):
                if (xi + yi) % 2 == 0:
                    draw.rectangle((x, y, min(x1, x + step - 1), min(y1, y + step - 1)), fill=p.top2)
    elif pat == "logo":
        r = int(min(w, h) * 0.28)
        cx, cy = (x0 + x1) // 2, y0 + int(h * 0.4)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=p.top2)
    elif pat == "twotone":
        draw.rectangle((x0, y0 + h // 2, x1, y1), fill=p.top2)
    elif pat == "diagonal":
        band = max(2, int(w * 0.22))
        draw.polygon([(x0, y0 + band), (x0 + band, y0), (x1, y1 - band), (x1 - band, y1)], fill=p.top2)


def render_person(
    p: Person, width: int, height: int, view: str, stance: float, arm_swing: float
) -> Image.Image:
    """An RGBA drawing of ``p`` filling a ``width`` x ``height`` box (feet at the bottom)."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    unit = width / 64.0
    cx = width / 2
    body_h = height
    head_h = p.head * body_h
    leg_h = p.leg_ratio * body_h
    torso_top = head_h * 1.05
    torso_bot = body_h - leg_h
    sh = p.shoulders * width * (0.62 if view == "side" else 1.0)
    hip = sh * 0.78
    # accessory behind the body
    if p.accessory == "backpack" and view != "front":
        bw = sh * (0.6 if view == "back" else 0.45)
        bx = cx - bw / 2 if view == "back" else cx - p.acc_side * sh * 0.55 - bw / 2
        d.rounded_rectangle(
            (bx, torso_top + 2 * unit, bx + bw, torso_top + (torso_bot - torso_top) * 0.7),
            radius=max(1, int(3 * unit)),
            fill=p.acc_color,
        )
    # legs
    leg_w = hip * 0.42
    spread = stance * hip * 0.35
    shoe_h = max(2.0, body_h * 0.035)
    for side in (-1, 1):
        lx = cx + side * (hip * 0.27 + spread) - leg_w / 2
        legs_fill = p.bottom if p.bottom_type == "trousers" else p.skin
        d.rectangle((lx, torso_bot, lx + leg_w, body_h - shoe_h), fill=legs_fill)
        if p.bottom_type == "shorts":
            d.rectangle((lx - 1, torso_bot, lx + leg_w + 1, torso_bot + leg_h * 0.4), fill=p.bottom)
        d.rounded_rectangle(
            (lx - unit, body_h - shoe_h - unit, lx + leg_w + unit * 2, body_h - 1), radius=max(1, int(unit)), fill=p.shoes
        )
    if p.bottom_type == "skirt":
        d.polygon(
            [(cx - hip / 2, torso_bot - 1), (cx + hip / 2, torso_bot - 1), (cx + hip * 0.75, torso_bot + leg_h * 0.55),
             (cx - hip * 0.75, torso_bot + leg_h * 0.55)],
            fill=p.bottom,
        )
    else:
        d.rectangle((cx - hip / 2, torso_bot - 1, cx + hip / 2, torso_bot + leg_h * 0.12), fill=p.bottom)
    # arms (behind the torso edges)
    arm_w = sh * 0.2
    arm_len = (torso_bot - torso_top) * 1.1
    for side in (-1, 1):
        if view == "side" and side == 1:
            continue
        ax = cx + side * (sh / 2 - arm_w * 0.2)
        swing = arm_swing * side * unit * 4
        top_pt = (ax, torso_top + arm_w * 0.5)
        end_pt = (ax + side * arm_w * 0.35 + swing, torso_top + arm_len)
        d.line([top_pt, end_pt], fill=p.top, width=max(2, int(arm_w)))
        if not p.long_sleeves:
            mid = ((top_pt[0] + end_pt[0]) / 2, (top_pt[1] + end_pt[1]) / 2)
            d.line([mid, end_pt], fill=p.skin, width=max(2, int(arm_w * 0.85)))
        hand_r = arm_w * 0.45
        d.ellipse((end_pt[0] - hand_r, end_pt[1] - hand_r, end_pt[0] + hand_r, end_pt[1] + hand_r), fill=p.skin)
    # torso with its pattern
    _draw_top(d, p, (int(cx - sh / 2), int(torso_top), int(cx + sh / 2), int(torso_bot + 1)), view, unit)
    # accessories in front
    if p.accessory == "backpack" and view == "front":
        for side in (-1, 1):
            sx = cx + side * sh * 0.3
            d.line([(sx, torso_top), (sx, torso_top + (torso_bot - torso_top) * 0.6)], fill=p.acc_color, width=max(2, int(2 * unit)))
    elif p.accessory == "shoulderbag":
        side = p.acc_side if view != "back" else -p.acc_side
        d.line([(cx - side * sh * 0.4, torso_top), (cx + side * sh * 0.45, torso_bot - 2 * unit)], fill=p.acc_color, width=max(2, int(2 * unit)))
        bx = cx + side * sh * 0.45
        d.rectangle((bx - sh * 0.22, torso_bot - 6 * unit, bx + sh * 0.22, torso_bot + 6 * unit), fill=p.acc_color)
    elif p.accessory == "handbag":
        side = p.acc_side if view != "back" else -p.acc_side
        bx = cx + side * (sh / 2 + arm_w * 0.4)
        by = torso_top + arm_len * 0.95
        d.rectangle((bx - sh * 0.2, by, bx + sh * 0.2, by + sh * 0.32), fill=p.acc_color)
    elif p.accessory == "scarf":
        d.rectangle((cx - sh * 0.36, torso_top - unit, cx + sh * 0.36, torso_top + 4 * unit), fill=p.acc_color)
    # head, hair, hat
    hw = head_h * 0.78
    hx0, hy0 = cx - hw / 2, 0.0
    d.ellipse((hx0, hy0, hx0 + hw, hy0 + head_h), fill=p.skin)
    if view == "back":
        d.ellipse((hx0, hy0, hx0 + hw, hy0 + head_h), fill=p.hair)
    else:
        d.chord((hx0, hy0, hx0 + hw, hy0 + head_h * 0.9), 180, 360, fill=p.hair)
    if p.long_hair:
        d.rectangle((hx0 - unit, hy0 + head_h * 0.4, hx0 + hw + unit, torso_top + 5 * unit), fill=p.hair)
        if view != "back":
            d.ellipse((hx0 + hw * 0.15, hy0 + head_h * 0.3, hx0 + hw * 0.85, hy0 + head_h), fill=p.skin)
    if p.hat is not None:
        d.chord((hx0 - unit, hy0 - unit, hx0 + hw + unit, hy0 + head_h * 0.75), 180, 360, fill=p.hat)
        d.rectangle((hx0 - 2 * unit, hy0 + head_h * 0.3, hx0 + hw + 2 * unit, hy0 + head_h * 0.4), fill=p.hat)
    return img


# ------------------------------------------------------------------------------------------------ cameras


@dataclass(frozen=True)
class Camera:
    gain: float
    cast: Tuple[float, float, float]
    blur: float
    noise: float
    wall: Color
    floor: Color
    texture: str
    horizon: float
    clutter: Tuple[Color, ...]
    scene_seed: int


def _muted(rng: np.random.Generator, sat: Tuple[float, float], val: Tuple[float, float]) -> Color:
    """A colour of random hue with saturation and value in the given ranges (walls, floors, clutter)."""
    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(*sat)), float(rng.uniform(*val)))
    return int(r * 255), int(g * 255), int(b * 255)


def _triple(values: np.ndarray) -> Tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b


def random_camera(rng: np.random.Generator) -> Camera:
    wall = _muted(rng, (0.05, 0.35), (0.35, 0.85))
    floor = _muted(rng, (0.0, 0.25), (0.25, 0.7))
    return Camera(
        gain=float(rng.uniform(0.85, 1.12)),
        cast=_triple(1.0 + rng.uniform(-0.08, 0.08, 3)),
        blur=float(rng.uniform(0.0, 0.9)),
        noise=float(rng.uniform(2.0, 7.0)),
        wall=wall,
        floor=floor,
        texture=str(rng.choice(("bricks", "columns", "windows", "gradient", "tiles"))),
        horizon=float(rng.uniform(0.45, 0.75)),
        clutter=tuple(_muted(rng, (0.1, 0.6), (0.2, 0.9)) for _ in range(5)),
        scene_seed=int(rng.integers(2**31)),
    )


def camera_scene(cam: Camera, height: int, width: int) -> np.ndarray:
    """A wide background (H x 6W) of the camera's place; images crop windows of it."""
    rng = np.random.default_rng(cam.scene_seed)
    W = width * 6
    img = Image.new("RGB", (W, height), cam.wall)
    d = ImageDraw.Draw(img)
    hy = int(cam.horizon * height)
    d.rectangle((0, hy, W, height), fill=cam.floor)
    darker = _shade(cam.wall, 0.75)
    lighter = _shade(cam.wall, 1.25)
    if cam.texture == "bricks":
        bh = max(3, height // 16)
        for row, y in enumerate(range(0, hy, bh)):
            off = (row % 2) * bh
            for x in range(-off, W, bh * 2):
                d.rectangle((x, y, x + bh * 2 - 2, y + bh - 2), outline=darker)
    elif cam.texture == "columns":
        for x in range(int(rng.integers(0, 20)), W, int(width * 0.45)):
            d.rectangle((x, 0, x + width // 8, hy), fill=darker)
    elif cam.texture == "windows":
        for y in range(height // 12, hy - height // 10, height // 5):
            for x in range(int(rng.integers(0, 10)), W, width // 2):
                d.rectangle((x, y, x + width // 4, y + height // 8), fill=lighter, outline=darker)
    elif cam.texture == "tiles":
        step = max(4, width // 6)
        for x in range(0, W, step):
            d.line([(x, hy), (x - (x - W / 2) * 0.6, height)], fill=_shade(cam.floor, 0.8), width=1)
    arr = np.asarray(img, dtype=np.float32)
    if cam.texture == "gradient":
        ramp = np.linspace(0.7, 1.2, W, dtype=np.float32)[None, :, None]
        arr[:hy] *= ramp
    # static clutter: poles, bins, signs, plants
    for _ in range(int(rng.integers(8, 17))):
        color = cam.clutter[int(rng.integers(len(cam.clutter)))]
        x = int(rng.integers(0, W))
        kind = int(rng.integers(3))
        sub = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        dd = ImageDraw.Draw(sub)
        if kind == 0:  # pole
            dd.rectangle((x, int(height * 0.05), x + max(2, width // 16), hy + height // 10), fill=color)
        elif kind == 1:  # bin / box
            w, h = int(rng.integers(width // 6, width // 3)), int(rng.integers(height // 10, height // 5))
            dd.rectangle((x, hy + height // 12 - h, x + w, hy + height // 12), fill=color)
        else:  # sign / plant
            r = int(rng.integers(width // 10, width // 5))
            y = int(rng.integers(height // 8, hy))
            dd.ellipse((x - r, y - r, x + r, y + r), fill=color)
        arr = np.asarray(sub, dtype=np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------------- images


def _passer_by(rng: np.random.Generator, height: int, width: int, haze: Color) -> Image.Image:
    """A small background pedestrian (clutter, not an identity), faded by distance."""
    person = random_person(rng)
    h = int(height * rng.uniform(0.3, 0.5))
    fig = render_person(person, max(8, int(h * 0.45)), h, str(rng.choice(("front", "back", "side"))), 0.3, 0.0)
    rgb = Image.blend(fig.convert("RGB"), Image.new("RGB", fig.size, haze), 0.45)
    rgb.putalpha(fig.getchannel("A"))
    return rgb


def render_image(
    person: Optional[Person],
    cam: Camera,
    scene: np.ndarray,
    rng: np.random.Generator,
    size: Tuple[int, int],
    fragment: bool = False,
) -> Image.Image:
    """One camera view: background crop, passers-by, the person with jitter, occlusion, camera effects."""
    H, W = size
    SH, SW = H * _SS, W * _SS
    x0 = int(rng.integers(0, scene.shape[1] - W))
    bg = Image.fromarray(scene[:, x0 : x0 + W]).resize((SW, SH), Image.Resampling.BILINEAR)
    canvas = bg.convert("RGBA")
    for _ in range(int(rng.choice((0, 0, 1, 1, 2)))):
        pb = _passer_by(rng, SH, SW, cam.wall)
        px = int(rng.integers(-pb.width // 2, SW - pb.width // 2))
        py = int(cam.horizon * SH + rng.uniform(-0.1, 0.15) * SH) - pb.height
        canvas.paste(pb, (px, py), pb)
    if person is not None:
        scale = rng.uniform(0.88, 1.06)
        ph = int(SH * person.height * scale)
        pw = int(SW * scale)
        view = str(rng.choice(("front", "front", "back", "side")))
        fig = render_person(person, pw, ph, view, float(rng.uniform(0, 1)), float(rng.uniform(-1, 1)))
        if rng.random() < 0.5:
            fig = fig.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        fx = int((SW - pw) / 2 + rng.uniform(-0.1, 0.1) * SW)
        fy = int(SH - ph - rng.uniform(-0.04, 0.08) * SH)
        canvas.paste(fig, (fx, fy), fig)
    img = canvas.convert("RGB")
    d = ImageDraw.Draw(img)
    if rng.random() < 0.25:  # partial occlusion by an object in front of the person
        color = cam.clutter[int(rng.integers(len(cam.clutter)))]
        if rng.random() < 0.6:  # from below: car, bench, railing
            top = int(SH * rng.uniform(0.68, 0.85))
            d.rounded_rectangle((-4, top, SW + 4, SH + 4), radius=int(4 * _SS), fill=color)
            d.rectangle((int(SW * rng.uniform(0.1, 0.5)), top + 3 * _SS, SW, top + 6 * _SS), fill=_shade(color, 0.6))
        else:  # from the side: a pole, a doorway, another person's shoulder
            w = int(SW * rng.uniform(0.15, 0.28))
            left = 0 if rng.random() < 0.5 else SW - w
            d.rectangle((left, 0, left + w, SH), fill=color)
    img = img.resize((W, H), Image.Resampling.LANCZOS)
    if fragment:  # junk: a bad detection, a piece of a person
        fx0, fy0 = int(rng.integers(0, W // 2)), int(rng.integers(0, H // 2))
        img = img.crop((fx0, fy0, fx0 + W // 2, fy0 + H // 2)).resize((W, H), Image.Resampling.BILINEAR)
    blur = cam.blur + rng.uniform(0, 0.4)
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr: np.ndarray = np.asarray(img, dtype=np.float32)
    # illumination: camera gain and cast, a per-image flicker, and a soft vertical light gradient
    light = cam.gain * rng.uniform(0.92, 1.08) * np.linspace(rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.05), H)
    arr = arr * light[:, None, None] * np.asarray(cam.cast, dtype=np.float32)[None, None, :]
    arr += rng.normal(0.0, cam.noise, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------------- dataset


def distinct_people(
    keys: Sequence[int], seed: int, taken: Optional[set] = None, stream: int = 6, attempts: int = 60
) -> Dict[int, Person]:
    """An appearance per key such that no two share both top and bottom colour (nor any pair in
    ``taken``, which is updated), redrawn up to ``attempts`` times so that huge demos still finish."""
    taken = set() if taken is None else taken
    people: Dict[int, Person] = {}
    for key in keys:
        for attempt in range(attempts):
            person = random_person(np.random.default_rng([seed, stream, key, attempt]))
            if (person.top, person.bottom) not in taken:
                break
        people[key] = person
        taken.add((person.top, person.bottom))
    return people


def _camera_plan(rng: np.random.Generator, n_images: int, cameras: int) -> List[int]:
    """Cameras (1-based) for an identity's images: balanced, at least two distinct cameras."""
    seen = int(rng.integers(2, cameras + 1)) if cameras > 2 else 2
    chosen = sorted(rng.choice(np.arange(1, cameras + 1), size=seen, replace=False).tolist())
    plan = [chosen[i % seen] for i in range(n_images)]
    rng.shuffle(plan)
    return [int(c) for c in plan]


def _split_queries(rng: np.random.Generator, cams: List[int]) -> List[int]:
    """Indices of the query images: up to one per camera, each with a gallery image from another camera."""
    n_query = max(1, min(len(set(cams)), len(cams) // 4))
    order = list(rng.permutation(len(cams)))
    queries: List[int] = []
    for i in order:
        if len(queries) == n_query:
            break
        if any(cams[q] == cams[i] for q in queries):
            continue
        rest = [cams[k] for k in range(len(cams)) if k != i and k not in queries]
        if any(c != cams[i] for c in rest) and all(any(c != cams[q] for c in rest) for q in queries):
            queries.append(int(i))
    return queries


def _check_params(params: DemoParams) -> None:
    if params.num_ids < 3:
        raise MdprError(f"ids must be at least 3 (train and test identities are disjoint), got {params.num_ids}.",
                        keys=["ids"])
    if params.images_per_id < 2:
        raise MdprError(f"images_per_id must be at least 2 (a query and a gallery match), got {params.images_per_id}.",
                        keys=["images_per_id"])
    if not 2 <= params.cameras <= 9:
        raise MdprError(f"cameras must be between 2 and 9 (Market-style names c1..c9), got {params.cameras}.",
                        keys=["cameras"])
    h, w = params.size
    if h < 32 or w < 16:
        raise MdprError(f"size must be at least 32x16 (height x width), got {h}x{w}.", keys=["size"])


def parse_size(text: str) -> Tuple[int, int]:
    """``"128x64"`` -> ``(128, 64)`` (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().replace("*", "x").split("x"))
    except ValueError:
        raise MdprError(f"size must be HEIGHTxWIDTH such as 128x64, got '{text}'.", keys=["size"]) from None
    return h, w


def generate_demo(
    out_dir: Union[str, Path],
    num_ids: int = 100,
    images_per_id: int = 16,
    cameras: int = 4,
    size: Tuple[int, int] = (128, 64),
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> DemoSummary:
    """Write the demo dataset under ``out_dir`` (Market-1501 layout); ``size`` is (height, width).

    Re-running with the same arguments on the same folder does nothing; a folder holding anything
    else is refused (nothing is ever overwritten).
    """
    params = DemoParams(num_ids, images_per_id, cameras, (int(size[0]), int(size[1])), seed)
    _check_params(params)
    root = Path(out_dir).expanduser()
    params_path = root / PARAMS_FILE
    if root.exists() and not root.is_dir():
        raise MdprError(f"{root} is a file; pass a folder for the demo dataset.")
    if root.is_dir() and any(root.iterdir()):
        existing = _read_params(params_path)
        if existing == params and all((root / f).is_dir() for f in SPLIT_FOLDERS):
            return _summary(root, params, generated=False)
        raise MdprError(
            f"{root} is not empty and does not hold this demo ({_describe(existing)}); "
            "choose an empty or new folder, or delete this one."
        )
    tmp_root = root.parent / f".{root.name}.partial"
    if tmp_root.exists():
        shutil.rmtree(tmp_root)
    for folder in SPLIT_FOLDERS:
        (tmp_root / folder).mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([seed, 0])
    pool = sorted(rng.choice(np.arange(1, max(2 * num_ids, 10) + 1), size=num_ids, replace=False).tolist())
    shuffled = rng.permutation(pool).tolist()
    n_train = num_ids // 2
    train_ids = sorted(int(p) for p in shuffled[:n_train])
    test_ids = sorted(int(p) for p in shuffled[n_train:])
    cams = [random_camera(np.random.default_rng([seed, 1, c])) for c in range(cameras)]
    scenes = [camera_scene(cam, size[0], size[1]) for cam in cams]

    jobs: List[Tuple[str, Optional[Person], int, np.random.Generator, bool]] = []  # (rel path, person, cam, rng, fragment)
    frame_counter = [0]

    def name(pid: int, cam: int, rng_: np.random.Generator) -> str:
        frame_counter[0] += 1
        seq = int(rng_.integers(1, 7))
        frame = frame_counter[0] * 37 + int(rng_.integers(0, 30))
        return f"{pid:04d}_c{cam}s{seq}_{frame:06d}_{int(rng_.integers(1, 4)):02d}.jpg" if pid >= 0 else (
            f"-1_c{cam}s{seq}_{frame:06d}_00.jpg"
        )

    taken: set = set()
    people = distinct_people(sorted(train_ids + test_ids), seed, taken)
    gallery_count = 0
    for pid in train_ids + test_ids:
        prng = np.random.default_rng([seed, 2, pid])
        person = people[pid]
        plan = _camera_plan(prng, images_per_id, cameras)
        queries = set(_split_queries(prng, plan)) if pid in test_ids else set()
        for k, cam in enumerate(plan):
            irng = np.random.default_rng([seed, 3, pid, k])
            folder = "bounding_box_train" if pid in train_ids else ("query" if k in queries else "bounding_box_test")
            gallery_count += folder == "bounding_box_test"
            jobs.append((f"{folder}/{name(pid, cam, irng)}", person, cam, irng, False))
    # Market-style extras in the gallery: distractors (pid 0: strangers or empty scenes) and junk (pid -1)
    n_distractors = max(1, round(0.08 * gallery_count))
    # strangers never dress exactly like an identity (a distractor is not a second copy of someone)
    strangers = distinct_people(range(n_distractors), seed, taken, stream=7)
    for k in range(n_distractors):
        drng = np.random.default_rng([seed, 4, k])
        stranger = strangers[k] if drng.random() < 0.6 else None
        cam = int(drng.integers(1, cameras + 1))
        jobs.append((f"bounding_box_test/{name(0, cam, drng)}", stranger, cam, drng, False))
    for k in range(max(1, round(0.03 * gallery_count))):
        jrng = np.random.default_rng([seed, 5, k])
        cam = int(jrng.integers(1, cameras + 1))
        jobs.append((f"bounding_box_test/{name(-1, cam, jrng)}", random_person(jrng), cam, jrng, True))

    for i, (rel, who, cam, irng, fragment) in enumerate(jobs):
        img = render_image(who, cams[cam - 1], scenes[cam - 1], irng, size, fragment=fragment)
        img.save(tmp_root / rel, format="JPEG", quality=JPEG_QUALITY)
        if progress and ((i + 1) % 50 == 0 or i + 1 == len(jobs)):
            progress(i + 1, len(jobs))
    # the folder is renamed into place below: its files and entries must be on disk first
    fsync_files(tmp_root / rel for rel, *_ in jobs)
    atomic_write_json(tmp_root / PARAMS_FILE, _params_dict(params))
    for folder in SPLIT_FOLDERS:
        fsync_dir(tmp_root / folder)
    # publish the finished folder in one step (an interrupted run leaves only the hidden .partial folder)
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.is_dir():
        root.rmdir()  # empty (checked above)
    replace_durably(tmp_root, root)
    return _summary(root, params, generated=True)


def _params_dict(params: DemoParams) -> dict:
    data = asdict(params)
    data["size"] = list(params.size)
    return data


def _read_params(path: Path) -> Optional[DemoParams]:
    try:
        data = json.loads(path.read_text())
        data["size"] = tuple(data["size"])
        return DemoParams(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _describe(params: Optional[DemoParams]) -> str:
    if params is None:
        return "no demo.json in it"
    return (
        f"it holds a demo with --ids {params.num_ids} --images-per-id {params.images_per_id} "
        f"--cameras {params.cameras} --size {params.size[0]}x{params.size[1]} --seed {params.seed}"
    )


def _summary(root: Path, params: DemoParams, generated: bool) -> DemoSummary:
    counts = {f: sum(1 for _ in (root / f).glob("*.jpg")) for f in SPLIT_FOLDERS}
    n_train = params.num_ids // 2
    return DemoSummary(root, params, n_train, params.num_ids - n_train, counts, generated)

