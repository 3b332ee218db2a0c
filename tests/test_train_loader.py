"""Training DataLoader: PK batches, reproducible pixels for any worker count, corrupt images replaced."""

from __future__ import annotations

from pathlib import Path

import torch
from trainkit import TINY, make_dataset

from mdpr.config import load_config
from mdpr.data.loader import build_test_loader, build_train_loader


def _loader(manifest, cfg, **kw):
    train = manifest.train
    return build_train_loader(
        [manifest.image_path(r) for r in train], [r.pid for r in train], [r.camid for r in train], cfg, **kw
    )


def _cfg(*extra: str):
    return load_config("demo-cpu", [*TINY, "input.padding=2", "input.random_erasing_prob=0.5",
                                    "input.random_patch_prob=0.5", "input.flip_prob=0.5", *extra])


def test_batches_and_worker_independent_pixels(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, register=False)
    loader, sampler = _loader(manifest, _cfg())
    sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(manifest.train) // 8 == 3
    b = batches[0]
    assert b["images"].shape == (8, 3, 64, 32) and b["images"].dtype == torch.float32
    assert b["targets"].tolist()[::2] == b["targets"].tolist()[1::2]  # K = 2 consecutive per identity
    assert b["failed"] == []
    workers, wsampler = _loader(manifest, _cfg("dataloader.num_workers=2"))
    wsampler.set_epoch(1)
    for a, c in zip(batches, workers):
        assert torch.equal(a["images"], c["images"]) and torch.equal(a["indices"], c["indices"])
    sampler.set_epoch(2)
    assert not torch.equal(next(iter(loader))["images"], batches[0]["images"])


def test_rank_slices_match_the_single_process_batch(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, register=False)
    cfg = _cfg("input.random_patch_prob=0.0")
    single, s = _loader(manifest, cfg)
    halves = [_loader(manifest, cfg, rank=r, world_size=2) for r in range(2)]
    for smp in [s] + [h[1] for h in halves]:
        smp.set_epoch(0)
    for full, r0, r1 in zip(single, halves[0][0], halves[1][0]):
        assert torch.equal(torch.cat([r0["images"], r1["images"]]), full["images"])


def test_corrupt_image_is_replaced_by_same_identity_and_counted(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, register=False, train_ids=4, per_id=2)
    bad = manifest.image_path(manifest.train[0])
    bad.write_bytes(b"not an image at all")
    cfg = load_config("demo-cpu", [*TINY, "dataloader.steps_per_epoch=6"])
    loader, sampler = _loader(manifest, cfg)
    failed = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for batch in loader:
            failed += batch["failed"]
            assert torch.isfinite(batch["images"]).all()
    assert failed and set(failed) == {str(bad)}


def test_all_images_of_an_identity_unreadable_gives_a_mean_image(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, register=False, train_ids=4, per_id=2)
    for r in manifest.train[:2]:  # both images of class 0
        manifest.image_path(r).write_bytes(b"")
    cfg = load_config("demo-cpu", [*TINY, "dataloader.steps_per_epoch=4", "input.flip_prob=0",
                                   "input.padding=0", "input.random_erasing_prob=0", "input.random_patch_prob=0"])
    loader, sampler = _loader(manifest, cfg)
    seen = False
    for batch in loader:
        for img, target in zip(batch["images"], batch["targets"]):
            if target == 0:
                seen = True
                assert torch.allclose(img[:, 0, 0], torch.tensor([124.0, 116.0, 104.0]))
    assert seen


def test_test_loader_flags_unreadable_images(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, register=False)
    paths = [manifest.image_path(r) for r in manifest.gallery[:3]]
    paths[1].write_bytes(b"broken")
    cfg = load_config("demo-cpu", TINY)
    images, indices, ok = next(iter(build_test_loader(paths, cfg.input, batch_size=8)))
    assert images.shape == (3, 3, 64, 32)
    assert indices.tolist() == [0, 1, 2] and ok.tolist() == [True, False, True]
