"""Train-time augmentation: fast-reid's pipeline with per-image seeds (picklable, reproducible)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import torch
from PIL import Image

from mdpr.config import InputConfig
from mdpr.data.transforms import RandomErasing, RandomPatch, TrainTransform, build_train_transform


def _cfg(**kw) -> InputConfig:
    base = dict(size_train=(32, 16), flip_prob=0.0, padding=0, random_erasing_prob=0.0, random_patch_prob=0.0)
    base.update(kw)
    return InputConfig(**base)


def _gradient_image(w: int = 20, h: int = 40) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    arr[..., 2] = 77
    return Image.fromarray(arr)


def test_resize_only_is_the_test_transform() -> None:
    from mdpr.data.transforms import TestTransform

    img = _gradient_image()
    out = TrainTransform(_cfg())(img, random.Random(0))
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32
    assert torch.equal(out, TestTransform((32, 16))(img))


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    t = build_train_transform(_cfg(flip_prob=0.5, padding=4, random_erasing_prob=0.5))
    img = _gradient_image()
    outs = [t(img, random.Random(s)) for s in (1, 1, 2, 3, 4)]
    assert torch.equal(outs[0], outs[1])
    assert any(not torch.equal(outs[0], o) for o in outs[2:])


def test_pad_and_crop_shifts_by_at_most_padding_with_zero_fill() -> None:
    img = Image.new("RGB", (16, 32), (200, 100, 50))
    t = TrainTransform(_cfg(padding=3))
    seen_shift = False
    for seed in range(20):
        out = t(img, random.Random(seed))
        zero_cols = (out.sum(dim=(0, 1)) == 0).sum().item()
        zero_rows = (out.sum(dim=(0, 2)) == 0).sum().item()
        assert zero_cols <= 3 and zero_rows <= 3
        assert set(out[0].unique().tolist()) <= {0.0, 200.0}
        seen_shift |= zero_cols + zero_rows > 0
    assert seen_shift


def test_flip_mirrors() -> None:
    img = _gradient_image(16, 32)
    plain = TrainTransform(_cfg())(img, random.Random(0))
    flipped = TrainTransform(_cfg(flip_prob=1.0))(img, random.Random(0))
    assert torch.equal(flipped, torch.flip(plain, dims=[2]))


def test_random_erasing_fills_a_rectangle_with_the_mean_pixel() -> None:
    value = (10.0, 20.0, 30.0)
    erase = RandomErasing(prob=1.0, value=value)
    img = torch.full((3, 64, 32), 255.0)
    out = erase(img.clone(), random.Random(3))
    mask = out[0] != 255.0
    assert mask.any()
    rows, cols = mask.nonzero(as_tuple=True)
    box = out[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    for c, v in enumerate(value):
        assert torch.all(box[c] == v)
    area = mask.sum().item() / mask.numel()
    assert 0.01 <= area <= 0.34
    assert torch.equal(RandomErasing(prob=0.0)(img.clone(), random.Random(3)), img)


def test_random_patch_pool_is_fed_by_every_image_and_pastes_once_it_holds_min_pool() -> None:
    """fast-reid's order: each image first adds its own patch to the pool, then (once the pool holds
    min_pool patches) receives one drawn from the whole pool with probability prob."""
    patcher = RandomPatch(prob=1.0, pool_size=5, min_pool=3)
    pool = patcher.new_pool()
    colors = [float(c) for c in range(10, 90, 10)]
    sources = []
    for i, c in enumerate(colors):
        img = torch.full((3, 32, 16), c)
        sources.append(patcher.apply(img, pool, random.Random(i), source=i))
        assert len(pool) == min(i + 1, 5)  # the rolling pool keeps the newest 5
        values = set(img.unique().tolist())
        if i < 2:
            assert values == {c}  # fewer than min_pool patches: nothing pasted
        else:
            assert sources[i] in range(max(0, i - 4), i + 1)  # a patch of one of the last 5 images
            assert values <= {c, colors[sources[i]]}
    assert sources[:2] == [-1, -1] and sum(s != i for i, s in enumerate(sources[2:], 2)) >= 3
    assert [src for _, src in pool.patches] == [3, 4, 5, 6, 7]
    same = [torch.full((3, 32, 16), 5.0) for _ in range(4)]
    RandomPatch(prob=0.0, min_pool=0)(same, random.Random(0))
    assert all(torch.all(x == 5.0) for x in same)


def test_a_patch_is_a_pure_function_of_its_image_and_seed() -> None:
    patcher = RandomPatch(prob=1.0, min_pool=1)
    img = torch.rand(3, 32, 16) * 255
    a, b = patcher.cut(img, random.Random(3)), patcher.cut(img.clone(), random.Random(3))
    assert a is not None and b is not None and torch.equal(a, b)
    a[:] = -1  # a copy, not a view: pasting onto the source later cannot change a pooled patch
    assert (img >= 0).all()


def test_everything_is_picklable_for_dataloader_workers() -> None:
    t = TrainTransform(_cfg(padding=2, random_erasing_prob=0.5, flip_prob=0.5))
    t2 = pickle.loads(pickle.dumps(t))
    img = _gradient_image()
    assert torch.equal(t(img, random.Random(9)), t2(img, random.Random(9)))
    pickle.loads(pickle.dumps(RandomPatch(0.5)))


def test_autoaugment_is_seeded_and_leaves_global_rng_alone() -> None:
    t = TrainTransform(_cfg(autoaug_prob=1.0))
    img = _gradient_image()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = t(img, random.Random(4))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, t(img, random.Random(4)))
