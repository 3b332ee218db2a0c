"""mdpr reproduces the official MDPR implementation (ResNet-50-IBN, 702 classes) from an official checkpoint.

The reference (``tests/data/oracle_r50``) was produced by running the authors' code: eval features of 2 images and
the 19 training-loss terms of an 8-image batch, for deterministic weights regenerated here by ``oracle_weights``.
Attention bugs are invisible in eval features, which is why the loss terms are checked too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from mdpr.config import LossConfig
from mdpr.losses import MDPRLoss
from mdpr.model import load_model

ORACLE_DIR = Path(__file__).parents[1] / "data" / "oracle_r50"
FEATURE_REL_MAX_TOL = 1e-3
FEATURE_MIN_COS = 0.99999
LOSS_RTOL, LOSS_ATOL = 5e-4, 1e-4


@pytest.fixture(autouse=True, scope="module")
def two_torch_threads():
    """Two threads, like the run that produced the oracle: the closest floating-point reduction order.

    Measured here: the official code and ours agree bit for bit at any thread count, and both differ from the
    stored losses by up to 0.14x the tolerance with 2 threads, 0.63x with 1 (``loss_hard_part_1_triplet``).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _oracle_weights_module():
    spec = importlib.util.spec_from_file_location("oracle_weights", ORACLE_DIR / "oracle_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    """Regenerate the weights, write them as an official fast-reid checkpoint, load with mdpr, run once."""
    ow = _oracle_weights_module()
    path = tmp_path_factory.mktemp("oracle") / "official_r50.pth"
    ow.save_fastreid_checkpoint(str(path), ow.load_oracle_state_dict(str(ORACLE_DIR)))
    with np.load(ORACLE_DIR / "oracle.npz") as npz:
        ref = {k: npz[k].copy() for k in ("images", "features", "train_images", "train_targets", "loss_names",
                                          "loss_values", "loss_total", "pixel_mean", "pixel_std")}
    model, config = load_model(path)
    loaded_in_eval_mode = not model.training
    images = _to_tensor(ref["images"])
    images_copy = images.clone()
    with torch.inference_mode():
        features = model(images).numpy()
    untouched = torch.equal(images, images_copy)
    model.train()
    loss_dict = MDPRLoss(LossConfig())(model(_to_tensor(ref["train_images"])),
                                       torch.from_numpy(ref["train_targets"]))
    losses = {k: float(v.detach()) for k, v in loss_dict.items()}
    return {"model": model, "config": config, "features": features, "losses": losses, "ref": ref,
            "input_untouched": untouched, "loaded_in_eval_mode": loaded_in_eval_mode}


def test_architecture_is_inferred_from_the_official_keys(oracle_run):
    cfg = oracle_run["config"]
    assert (cfg.model.depth, cfg.model.ibn, cfg.model.embedding_dim) == (50, True, 512)
    assert (cfg.model.num_parts, cfg.model.num_attention, cfg.model.num_classes) == (2, 2, 702)
    assert cfg.model.attention_guidance and cfg.model.fusion and cfg.model.distillation
    assert tuple(cfg.input.size_test) == (384, 192) and cfg.input.interpolation == "bicubic"
    np.testing.assert_allclose(cfg.input.pixel_mean, oracle_run["ref"]["pixel_mean"], rtol=1e-6)
    np.testing.assert_allclose(cfg.input.pixel_std, oracle_run["ref"]["pixel_std"], rtol=1e-6)
    assert oracle_run["loaded_in_eval_mode"]
    assert oracle_run["model"].feature_dim == 4608


def test_eval_features_match_the_official_model(oracle_run):
    feats, ref = oracle_run["features"].astype(np.float64), oracle_run["ref"]["features"].astype(np.float64)
    assert feats.shape == ref.shape == (2, 4608)
    rel = np.abs(feats - ref).max() / np.abs(ref).max()
    cos = (feats * ref).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(ref, axis=1))
    assert rel <= FEATURE_REL_MAX_TOL, rel
    assert cos.min() >= FEATURE_MIN_COS, cos
    assert oracle_run["input_untouched"], "the model normalised the caller's tensor in place"


def test_training_losses_match_the_official_model(oracle_run):
    names = [str(n) for n in oracle_run["ref"]["loss_names"]]
    values = oracle_run["ref"]["loss_values"]
    got = oracle_run["losses"]
    assert list(got) == names  # same 19 names, same order
    for name, ref in zip(names, values):
        assert abs(got[name] - ref) <= LOSS_RTOL * abs(ref) + LOSS_ATOL, (name, got[name], ref)
    total = float(oracle_run["ref"]["loss_total"])
    assert abs(sum(got.values()) - total) <= LOSS_RTOL * abs(total) + LOSS_ATOL
