"""Checkpoint formats: official/fast-reid, mdpr, backbone initialisations; strictness; fingerprints."""

from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision

from mdpr.config import Config, ModelConfig
from mdpr.errors import MdprError
from mdpr.model import MDPR, build_model, load_model, save_checkpoint, state_dict_fingerprint
from mdpr.model.formats import official_to_ours, ours_to_official, to_official_state_dict
from mdpr.model.loading import infer_model_config, read_checkpoint
from mdpr.model.resnet import ResNet

ORACLE_KEYS = Path(__file__).parents[1] / "data" / "oracle_r50" / "keys.json"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**overrides) -> ModelConfig:
    base = dict(depth=18, ibn=True, embedding_dim=16, num_parts=3, num_attention=3, num_classes=7)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def model() -> MDPR:
    torch.manual_seed(1)
    net = build_model(tiny())
    # non-trivial BN statistics so that a wrongly mapped buffer changes the features
    with torch.no_grad():
        for name, buffer in net.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 96, 32, generator=torch.Generator().manual_seed(3)) * 255


def features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(images)


# ---------------------------------------------------------------------------------------------- key translation


def test_every_official_key_translates_and_round_trips():
    spec = json.loads(ORACLE_KEYS.read_text())
    official = {k: tuple(shape) for k, shape, _ in spec["keys"]}
    ours = {official_to_ours(k): shape for k, shape in official.items()}
    assert None not in ours
    assert {ours_to_official(k) for k in ours} == set(official)
    with torch.device("meta"):
        reference = MDPR(infer_model_config({k: torch.empty(s, device="meta") for k, s in official.items()}))
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == ours
    # parameter count of the paper's ResNet-50-IBN model (702 classes) is the official one
    assert sum(v.numel() for v in reference.state_dict().values()) == spec["num_elements"]


def test_official_names_are_readable_in_ours():
    assert official_to_ours("generate.backbone.4.0.bn1.IN.weight") == "stem.layer1.0.bn1.IN.weight"
    assert official_to_ours("generate.em3_1024.embedding.weight") == "soft_branch.layer3_refine.conv.weight"
    assert official_to_ours("hard_part_head.1.weight") == "hard_branch.part_heads.1.classifier.weight"
    assert official_to_ours("attn_bap_feature3_head.bottleneck.0.running_var") == \
        "soft_branch.layer3_bap_head.bnneck.running_var"
    assert official_to_ours("fusion.output.1.weight") == "fusion.joint.conv3x3.weight"
    assert official_to_ours("predictor2.3.bias") == "predictors.soft.fc2.bias"
    assert official_to_ours("generate.unknown.weight") is None


@pytest.mark.parametrize("overrides", [
    dict(), dict(attention_guidance=False, fusion=False, distillation=False), dict(branches="hard"),
    dict(branches="soft", num_attention=1, embedding_dim=8), dict(depth=34, ibn=False, num_classes=0),
])
def test_architecture_is_inferred_from_official_keys(overrides):
    cfg = tiny(**overrides)
    with torch.device("meta"):
        net = MDPR(cfg)
    inferred = infer_model_config(to_official_state_dict(net.state_dict()))
    # a missing branch leaves its own sizes undetermined (and irrelevant)
    irrelevant = {"hard": {"num_attention"}, "soft": {"num_parts"}}.get(cfg.branches, set())
    expected = {k: v for k, v in dataclasses.asdict(net.config).items() if k not in irrelevant}
    assert {k: v for k, v in dataclasses.asdict(inferred).items() if k not in irrelevant} == expected


# ---------------------------------------------------------------------------------------------- official format


def test_official_checkpoint_loads_without_hints(tmp_path, model, x):
    official = to_official_state_dict(model.state_dict())
    # fast-reid's Checkpointer layout, saved from a DistributedDataParallel model
    payload = {"model": OrderedDict((f"module.{k}", v) for k, v in official.items()),
               "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 3}, "epoch": 59}
    path = tmp_path / "DukeMTMC-reID.pth"
    torch.save(payload, path)
    loaded, config = load_model(path)
    assert not loaded.training
    assert config.model == model.config
    assert tuple(config.input.size_test) == (384, 192) and config.input.interpolation == "bicubic"
    torch.testing.assert_close(features(loaded, x), features(model, x), rtol=0, atol=0)


def test_export_to_official_names_round_trips(model):
    official = to_official_state_dict(model.state_dict())
    assert all(k.startswith(("generate.", "hard_", "attn_", "fusion", "predictor")) for k in official)
    assert list(official) != list(model.state_dict())


# ---------------------------------------------------------------------------------------------- mdpr format


def test_mdpr_checkpoint_round_trip(tmp_path, model, x):
    cfg = Config(recipe="demo-cpu", dataset="demo", model=model.config)
    path = save_checkpoint(tmp_path / "run" / "model.pth", model, cfg, classes=["0002", "0007"], epoch=3,
                           metrics={"mAP": 0.5})
    assert [p.name for p in path.parent.iterdir()] == ["model.pth"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "mdpr" and raw["format_version"] == 1 and raw["epoch"] == 3
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg.recipe == "demo-cpu" and loaded_cfg.model == model.config
    assert loaded.classes == ["0002", "0007"]
    torch.testing.assert_close(features(loaded, x), features(model, x), rtol=0, atol=0)
    assert state_dict_fingerprint(loaded.state_dict()) == state_dict_fingerprint(model.state_dict())


def test_save_checkpoint_unwraps_wrappers_and_rejects_reserved_keys(tmp_path, model):
    class Wrapper(torch.nn.Module):  # the shape of DistributedDataParallel
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    path = save_checkpoint(tmp_path / "wrapped.pth", Wrapper(model), Config(model=model.config))
    assert all(not k.startswith("module.") for k in torch.load(path, weights_only=True)["model"])
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "bad.pth", model, Config(model=model.config), **{"format": "other"})


def test_bare_mdpr_state_dict_loads(tmp_path, model, x):
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    loaded, config = load_model(path)
    assert config.model == model.config
    torch.testing.assert_close(features(loaded, x), features(model, x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- strictness, errors


def test_strict_loading_lists_missing_unexpected_and_mismatched_keys(tmp_path, model):
    state = OrderedDict(to_official_state_dict(model.state_dict()))
    del state["generate.em3_1024.bn.running_mean"]
    state["generate.extra_layer.weight"] = torch.zeros(3)
    state["generate.attn_bap3.pool.p"] = torch.ones(2)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(MdprError) as error:
        load_model(path)
    message = str(error.value)
    assert "soft_branch.layer3_refine.bn.running_mean" in message
    assert "generate.extra_layer.weight" in message
    assert "soft_branch.layer3_bap.pool.p [2]" in message and "strict=False" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, _ = load_model(path, strict=False)
    assert any("loaded partially" in str(w.message) for w in caught)
    assert loaded.load_report.missing == ["soft_branch.layer3_refine.bn.running_mean"]
    assert loaded.load_report.unexpected == ["generate.extra_layer.weight"]
    assert [k for k, _, _ in loaded.load_report.mismatched] == ["soft_branch.layer3_bap.pool.p"]


def test_long_key_lists_are_truncated(tmp_path, model):
    state = to_official_state_dict(model.state_dict())
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("generate.backbone_attn."))
    state.update({k: v for k, v in to_official_state_dict(model.state_dict()).items()
                  if k.startswith("generate.backbone_attn.0.")})  # keep the soft branch detectable
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with pytest.raises(MdprError, match=r"more\)") as error:
        load_model(path)
    assert len(str(error.value)) < 1500


@pytest.mark.parametrize("content, message", [
    (b"this is not a checkpoint\n", "not a readable PyTorch checkpoint"),
    (pickle.dumps({"weights": [1, 2, 3]}, protocol=2), "not a readable PyTorch checkpoint"),
])
def test_files_that_are_not_checkpoints_are_reported(tmp_path, content, message):
    path = tmp_path / "file.pth"
    path.write_bytes(content)
    with pytest.raises(MdprError, match=message):
        load_model(path)


def test_checkpoint_without_tensors_or_unknown_keys_is_reported(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "notes": "hello"}, path)
    with pytest.raises(MdprError, match="no state dict"):
        load_model(path)
    torch.save({"model": {"linear.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(MdprError, match="neither an MDPR checkpoint nor a backbone"):
        load_model(path)
    with pytest.raises(MdprError, match="does not exist"):
        load_model(tmp_path / "missing.pth")


def test_newer_mdpr_format_is_reported(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pth", model, Config(model=model.config))
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, path)
    with pytest.raises(MdprError, match="upgrade mdpr"):
        load_model(path)


def test_backbone_file_is_not_a_model(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(MdprError, match="model.pretrained"):
        load_model(path)


# ---------------------------------------------------------------------------------------------- backbone init


def assert_backbone_copied(net: MDPR, backbone: dict) -> None:
    own = net.state_dict()
    for key, value in backbone.items():
        if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.")):
            torch.testing.assert_close(own[f"stem.{key}"], value, rtol=0, atol=0)
        elif key.startswith(("layer3.", "layer4.")):
            for branch in ("hard_branch", "soft_branch"):
                torch.testing.assert_close(own[f"{branch}.{key}"], value, rtol=0, atol=0)


def test_torchvision_resnet_initialises_both_branches(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    net = build_model(tiny(ibn=False, pretrained=str(path)))
    assert_backbone_copied(net, {k: v for k, v in state.items() if not k.startswith("fc.")})
    assert "fc.weight" in net.pretrained_report.ignored


def test_plain_resnet_norms_are_split_into_ibn_halves(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    with torch.no_grad():
        state["layer1.0.bn1.weight"].uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    net = build_model(tiny(ibn=True, pretrained=str(path)))
    own = net.state_dict()
    weight = state["layer1.0.bn1.weight"]
    torch.testing.assert_close(own["stem.layer1.0.bn1.IN.weight"], weight[:32])
    torch.testing.assert_close(own["stem.layer1.0.bn1.BN.weight"], weight[32:])
    torch.testing.assert_close(own["hard_branch.layer3.0.bn1.BN.running_var"], state["layer3.0.bn1.running_var"][128:])


def test_ibn_net_release_loads_into_ibn_model(tmp_path):
    backbone = ResNet(18, ibn=True)
    state = backbone.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18_ibn_a-2f571257.pth"
    torch.save(state, path)
    net = build_model(tiny(ibn=True, pretrained=str(path)))
    assert_backbone_copied(net, {k: v for k, v in state.items() if not k.startswith("fc.")})


def test_luperson_moco_checkpoint_uses_the_query_encoder(tmp_path):
    query = ResNet(18).state_dict()
    state = OrderedDict((f"module.encoder_q.{k}", v) for k, v in query.items())
    state.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in query.items()})
    state["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 512)
    state["module.queue"] = torch.zeros(128, 16)
    path = tmp_path / "lup_moco_r18.pth"
    torch.save({"state_dict": state, "epoch": 200, "arch": "resnet18"}, path)
    net = build_model(tiny(ibn=False, pretrained=str(path)))
    assert_backbone_copied(net, query)
    assert "module.queue" not in net.pretrained_report.unexpected


def test_fastreid_baseline_backbone_loads(tmp_path):
    backbone = ResNet(34, ibn=True).state_dict()
    state = OrderedDict((f"backbone.{k}", v) for k, v in backbone.items())
    state["heads.bottleneck.0.weight"] = torch.ones(512)
    path = tmp_path / "bagtricks_R34-ibn.pth"
    torch.save({"model": state, "iteration": 100}, path)
    net = build_model(tiny(depth=34, ibn=True, embedding_dim=8, pretrained=str(path)))
    assert_backbone_copied(net, backbone)


def test_wrong_backbone_depth_is_reported(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(MdprError, match="ResNet-34.*model.depth"):
        build_model(tiny(depth=18, ibn=False, pretrained=str(path)))
    relaxed = build_model(tiny(depth=18, ibn=False, pretrained=str(path)), pretrained_strict=False)
    assert relaxed.pretrained_report.unexpected


def test_full_mdpr_checkpoint_initialises_a_model_with_other_classes(tmp_path, model, x):
    path = tmp_path / "official.pth"
    torch.save({"model": to_official_state_dict(model.state_dict())}, path)
    net = build_model(tiny(num_classes=3, pretrained=str(path)))
    assert net.hard_branch.global_head.classifier.weight.shape == (3, 16)
    assert "hard_branch.global_head.classifier.weight" in net.pretrained_report.ignored
    torch.testing.assert_close(features(net, x), features(model, x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_identifies_the_weights(model):
    state = model.state_dict()
    fingerprint = state_dict_fingerprint(state)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert state_dict_fingerprint(to_official_state_dict(state)) == fingerprint  # naming does not matter
    as_double = OrderedDict((k, v.double() if v.is_floating_point() else v) for k, v in state.items())
    assert state_dict_fingerprint(as_double) == fingerprint  # nor the storage dtype of float32 values
    counters = OrderedDict((k, v + 5 if k.endswith("num_batches_tracked") else v) for k, v in state.items())
    assert state_dict_fingerprint(counters) == fingerprint
    changed = OrderedDict(state)
    changed["fusion.joint.bn.bias"] = changed["fusion.joint.bn.bias"] + 1e-3
    assert state_dict_fingerprint(changed) != fingerprint


def test_read_checkpoint_reports_kind(tmp_path, model):
    path = tmp_path / "o.pth"
    torch.save({"model": to_official_state_dict(model.state_dict())}, path)
    assert read_checkpoint(path).kind == "official"
