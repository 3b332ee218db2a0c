"""The tracker-grade recipe: a small MDPR (ResNet-18-IBN, 256x128, <= 512-d) that trains like the paper recipes."""

from __future__ import annotations

from pathlib import Path

from trainkit import make_dataset

from mdpr.config import load_config


def test_tracker_recipe_is_small_and_tracker_sized() -> None:
    from mdpr.model import build_model

    cfg = load_config("tracker-r18")
    paper = load_config("market1501")
    assert (cfg.model.depth, cfg.model.ibn) == (18, True)
    assert tuple(cfg.input.size_test) == (256, 128) and tuple(cfg.input.size_train) == (256, 128)
    assert build_model(cfg).feature_dim == 504 <= 512
    # the paper's method: same branches, losses and augmentation, only the backbone and sizes differ
    for key in ("branches", "fusion", "distillation", "attention_guidance", "classifier", "num_parts"):
        assert getattr(cfg.model, key) == getattr(paper.model, key), key
    assert cfg.loss == paper.loss
    assert (cfg.input.random_erasing_prob, cfg.input.random_patch_prob) == (0.5, 0.5)


def test_tracker_recipe_trains_on_a_registered_dataset(tmp_path: Path, one_torch_thread: None) -> None:
    from mdpr.model import load_model
    from mdpr.workflows.train import TrainOptions, train_run

    make_dataset(tmp_path / "data", name="tiny")
    overrides = ["input.size_train=[64,32]", "input.size_test=[64,32]", "dataloader.batch_size=8",
                 "dataloader.num_instances=2", "dataloader.num_workers=0", "solver.amp=false", "solver.warmup_iters=2"]
    result = train_run(TrainOptions(dataset="tiny", recipe="tracker-r18", overrides=overrides, epochs=1,
                                    output=tmp_path / "run", device="cpu"))
    assert result is not None and "mAP" in str(result.summary)
    model, cfg = load_model(result.run_dir / "model.pt")
    assert cfg.recipe == "tracker-r18" and (cfg.model.depth, cfg.model.embedding_dim) == (18, 56)
    assert model.feature_dim == 504
