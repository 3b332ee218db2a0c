"""Training DataLoader: PK batches, reproducible pixels, the patch pool across batches (and its exact\nreconstruction on resume), accumulation steps, corrupt images replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainkit import TINY, make_dataset

from mdpr.config import load_config
from mdpr.data.loader import build_train_loader

#: a small pool that fills within the first steps (the official 1000 / 100 would need 13+ tiny epochs)
POOL = ["input.random_patch_prob=1.0", "input.random_patch_pool=12", "input.random_patch_min_pool=4",
        "dataloader.steps_per_epoch=3"]


def _loader(manifest, cfg, **kw):
    train = manifest.train
    return build_train_loader(
        [manifest.image_path(r) for r in train], [r.pid for r in train], [r.camid for r in train], cfg, **kw
    )


def _epochs(manifest, cfg, epochs, **kw):
    loader, sampler = _loader(manifest, cfg, **kw)
    batches = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        batches += list(loader)
    return batches


def _cfg(*extra: str):
    return load_config("demo-cpu", [*TINY, "input.padding=2", "input.random_erasing_prob=0.5",
                                    "input.random_patch_prob=0.5", "input.flip_prob=0.5", *extra])


def test_batches_and_worker_independent_pixels(tmp_path: Path) -> None:
    """Without the patch pool (the one per-worker state, as in fast-reid) the pixels do not depend on the
    number of DataLoader workers; with it they are reproducible for a given number."""
    manifest = make_dataset(tmp_path, register=False)
    no_pool = ["input.random_patch_prob=0"]
    loader, sampler = _loader(manifest, _cfg(*no_pool))
    sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(manifest.train) // 8 == 3
    b = batches[0]
    assert b["images"].shape == (8, 3, 64, 32) and b["images"].dtype == torch.float32
    assert b["targets"].tolist()[::2] == b["targets"].tolist()[1::2]  # K = 2 consecutive per identity
    assert b["failed"] == [] and b["patch_sources"].tolist() == [-1] * 8
    workers, wsampler = _loader(manifest, _cfg(*no_pool, "dataloader.num_workers=2"))
    wsampler.set_epoch(1)
    for a, c in zip(batches, workers):
        assert torch.equal(a["images"], c["images"]) and torch.equal(a["indices"], c["indices"])
    sampler.set_epoch(2)
    assert not torch.equal(next(iter(loader))["images"], batches[0]["images"])
    pooled = [_epochs(manifest, _cfg(*POOL, "dataloader.num_workers=2"), range(2)) for _ in range(2)]
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(*pooled))


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


@pytest.mark.parametrize("workers", [0, 2])
def test_patch_pool_carries_across_batches_and_epochs_and_is_rebuilt_exactly_on_resume(tmp_path: Path,
                                                                                        workers: int) -> None:
    manifest = make_dataset(tmp_path, register=False, train_ids=8, per_id=3)
    cfg = _cfg(*POOL, f"dataloader.num_workers={workers}")
    uninterrupted = _epochs(manifest, cfg, range(3))
    sources = torch.cat([b["patch_sources"] for b in uninterrupted])
    indices = torch.cat([b["indices"] for b in uninterrupted])
    assert (sources >= 0).sum() > len(sources) // 2  # the pool is active after its first 4 patches
    # occluders come from earlier batches too, not only from the batch itself
    earlier = [bool(set(b["patch_sources"].tolist()) - set(b["indices"].tolist()) - {-1}) for b in uninterrupted]
    assert sum(earlier) >= len(earlier) // 2
    assert indices.numel() == 9 * 8
    # a resumed run: a fresh loader (empty pools) that starts at epoch 2 sees the very same pixels
    resumed = _epochs(manifest, cfg, [2])
    for a, b in zip(uninterrupted[6:], resumed):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["patch_sources"], b["patch_sources"])


def test_occluders_mostly_come_from_other_identities(tmp_path: Path) -> None:
    """With the official pool (1000 patches, active after 100) an image rarely gets a patch of its own
    identity; the former per-chunk pool (4 identities) gave one in about a quarter of the pastes."""
    manifest = make_dataset(tmp_path, register=False, train_ids=40, per_id=4, test_ids=1, size=(16, 32))
    cfg = load_config("demo-cpu", [*TINY, "input.size_train=[32,16]", "input.size_test=[32,16]",
                                   "input.random_patch_prob=1.0", "input.padding=0", "input.random_erasing_prob=0"])
    batches = _epochs(manifest, cfg, range(4))  # 4 epochs of 20 steps x 8 images
    pid_of = {i: r.pid for i, r in enumerate(manifest.train)}
    pasted = [(pid_of[int(s)], int(t)) for b in batches for s, t in zip(b["patch_sources"], b["targets"]) if s >= 0]
    assert len(pasted) > 150  # active from the 101st image on, then with probability 1
    same = sum(src == target for src, target in pasted) / len(pasted)
    assert same < 0.08, same


def test_accumulation_steps_match_the_processes_of_the_same_update(tmp_path: Path) -> None:
    """1 process with 2 accumulation steps sees, per update, exactly the images (pixels included, patch
    pools too) that 2 processes see: the same parts of the same global batch, each with its own pool."""
    manifest = make_dataset(tmp_path, register=False, train_ids=8, per_id=3)
    base = ["dataloader.batch_size=8", "dataloader.num_instances=2", "dataloader.process_batch=4", *POOL]
    single = _epochs(manifest, _cfg(*base), range(2))
    ranks = [_epochs(manifest, _cfg(*base), range(2), rank=r, world_size=2) for r in range(2)]
    loader, sampler = _loader(manifest, _cfg(*base))
    assert sampler.accumulation_steps == 2 and sampler.layout.chunks_per_update == 2 and len(loader) == 3
    assert len(single) == 6 and all(b["images"].shape[0] == 8 for b in single)
    for update, batch in enumerate(single):
        both = torch.cat([ranks[0][update]["images"], ranks[1][update]["images"]])
        assert torch.equal(batch["images"], both)
        halves = batch["targets"][:4].tolist(), batch["targets"][4:].tolist()
        assert not set(halves[0]) & set(halves[1])  # the two accumulation steps hold different identities
    assert any((b["patch_sources"] >= 0).any() for b in single)


def test_loader_workers_are_capped_at_the_usable_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More workers than usable cores only queue for the same cores: the loader starts at most one per core."""
    import mdpr.runtime

    monkeypatch.setattr(mdpr.runtime, "usable_cpu_count", lambda: 2)
    assert [mdpr.runtime.cap_num_workers(n) for n in (0, 1, 2, 64)] == [0, 1, 2, 2]
    manifest = make_dataset(tmp_path / "data", train_ids=4, per_id=4)
    loader, _ = _loader(manifest, _cfg("dataloader.num_workers=64"))
    assert loader.process_steps.num_workers == 2
