"""Named backbone initialisations (issue 13, item 1): resolved in a temporary weights cache, never silently random,
never touching the network (every download goes through an injected downloader)."""

from __future__ import annotations

import hashlib
import io
import urllib.error
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torchvision

from mdpr.config import ModelConfig, load_config
from mdpr.errors import MdprError
from mdpr.model import build_model, zoo
from mdpr.model.resnet import ResNet
from mdpr.model.zoo import LUPERSON_PAGE, InitChoice, resolve_init, weights_cache_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache per test, and a default downloader that fails the test if anything downloads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(url: str, destination: Path) -> None:
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(zoo, "default_downloader", no_network)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def tiny(**overrides) -> ModelConfig:
    base = dict(depth=18, ibn=True, embedding_dim=16, num_classes=4)
    base.update(overrides)
    return ModelConfig(**base)


def serialised(state: Dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def meta_resnet(depth: int) -> OrderedDict[str, torch.Tensor]:
    """A torchvision ResNet's keys and shapes without its weights (layout checks run on the meta device)."""
    with torch.device("meta"):
        return OrderedDict(getattr(torchvision.models, f"resnet{depth}")().state_dict())


def luperson_layout(query: Dict[str, torch.Tensor]) -> dict:
    """LUPerson's MoCo checkpoint layout: DataParallel-prefixed query and key encoders, the queue, training state."""
    state = OrderedDict((f"module.encoder_q.{k}", v) for k, v in query.items())
    state.update((f"module.encoder_k.{k}", v) for k, v in list(query.items())[:4])
    state["module.encoder_q.fc.0.weight"] = torch.zeros(8, 4)
    state["module.queue"] = torch.zeros(8, 16)
    return {"state_dict": state, "epoch": 200, "arch": "resnet"}


def test_the_cache_is_torch_hubs_checkpoint_folder(cache: Path) -> None:
    assert weights_cache_dir() == cache


def test_imagenet_offline_with_an_empty_cache_is_one_sentence_naming_url_and_path(cache: Path) -> None:
    def offline(url: str, destination: Path) -> None:
        destination.write_bytes(b"partial")
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    with pytest.raises(MdprError) as error:
        resolve_init("imagenet", tiny(), downloader=offline)
    message = str(error.value)
    url = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet18_ibn_a-2f571257.pth"
    assert url in message and str(cache / "resnet18_ibn_a-2f571257.pth") in message
    assert "\n" not in message and message.count("; ") <= 1 and message.endswith(".")
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial file left behind


def test_a_corrupt_download_is_one_sentence_and_removed(cache: Path) -> None:
    def corrupt(url: str, destination: Path) -> None:
        destination.write_bytes(b"<html>rate limited</html>")

    with pytest.raises(MdprError, match=r"corrupt \(SHA-256 .*expected 94bc1577.*removed") as error:
        resolve_init("imagenet", tiny(depth=34), downloader=corrupt)
    assert "\n" not in str(error.value)
    assert list(cache.iterdir()) == []


def test_imagenet_download_is_checked_cached_and_then_read_offline(cache: Path, monkeypatch) -> None:
    backbone = ResNet(18, ibn=True).state_dict()
    release = OrderedDict(backbone)  # IBN-Net's release layout: the ResNet keys plus an ImageNet classifier
    release["fc.weight"], release["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    payload = serialised(release)
    name = f"resnet18_ibn_a-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    monkeypatch.setitem(zoo.IBN_NET_FILES, 18, name)
    calls: List[str] = []

    def serve(url: str, destination: Path) -> None:
        calls.append(url)
        destination.write_bytes(payload)

    notes: List[str] = []
    choice = resolve_init("imagenet", tiny(), downloader=serve, note=notes.append)
    assert choice.path == cache / name and calls == [zoo.IBN_NET_RELEASE + name]
    assert len(notes) == 1 and str(cache / name) in notes[0]
    assert choice.line == f"Backbone initialised from {cache / name} (imagenet: ImageNet IBN-Net ResNet-18-IBN-a)."
    again = resolve_init("imagenet", tiny())  # offline now: the default downloader fails the test if called
    assert again.path == choice.path and len(calls) == 1
    cfg = tiny()
    choice.apply(cfg)
    assert cfg.pretrained == str(cache / name) and cfg.init == "imagenet"
    net = build_model(cfg)
    own = net.state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.IN.weight", "layer2.1.bn2.running_var"):
        torch.testing.assert_close(own[f"stem.{key}"], backbone[key], rtol=0, atol=0)
    for branch in ("hard_branch", "soft_branch"):
        torch.testing.assert_close(own[f"{branch}.layer3.0.bn1.BN.weight"], backbone["layer3.0.bn1.BN.weight"])
    assert "fc.weight" in net.pretrained_report.ignored


def test_plain_resnets_get_torchvisions_file_and_its_layout_loads(cache: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    choice = resolve_init("imagenet", tiny(ibn=False))
    assert choice.path == cache / "resnet18-f37072fd.pth" and "torchvision" in choice.description
    net = build_model(ModelConfig(depth=18, ibn=False, embedding_dim=16, pretrained=str(choice.path)))
    torch.testing.assert_close(net.state_dict()["soft_branch.layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_urls_and_checksums_are_torchvisions_own() -> None:
    for depth, filename in zoo.TORCHVISION_FILES.items():
        weights = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
        assert weights.url == zoo.TORCHVISION_MODELS + filename
    assert zoo.init_file("imagenet", tiny(depth=50, ibn=True)).sha256_prefix == "d9d0bb7b"
    assert zoo.init_file("imagenet", tiny(depth=101, ibn=False)).url == \
        "https://download.pytorch.org/models/resnet101-63fe2227.pth"


def test_missing_lup_moco_r101_says_where_to_get_it_where_to_put_it_and_the_alternatives(cache: Path) -> None:
    cfg = load_config("dukemtmc").model
    assert cfg.init == "lup_moco_r101"
    with pytest.raises(MdprError) as error:
        resolve_init(None, cfg)
    message = str(error.value)
    assert LUPERSON_PAGE in message and str(cache / "lup_moco_r101.pth") in message
    assert "model.init=imagenet" in message and "model.init=none" in message
    assert "\n" not in message and message.endswith(".")


def test_lup_moco_r101_in_the_cache_is_verified_against_the_architecture(cache: Path) -> None:
    cfg = load_config("market1501").model  # ResNet-101-IBN-a; LUPerson's plain BatchNorms are split into IBN halves
    cache.mkdir(parents=True)
    torch.save(luperson_layout(meta_resnet(101)), cache / "lup_moco_r101.pth")
    choice = resolve_init(None, cfg)
    assert (choice.name, choice.path, choice.pretrained_reference) == ("lup_moco_r101", cache / "lup_moco_r101.pth", True)
    assert choice.warning is None
    torch.save(luperson_layout(meta_resnet(50)), cache / "lup_moco_r101.pth")  # the wrong file at the right path
    with pytest.raises(MdprError) as error:
        resolve_init(None, cfg)
    message = str(error.value)
    assert str(cache / "lup_moco_r101.pth") in message and "ResNet-50" in message and "ResNet-101-IBN-a" in message
    assert "model.depth=50" in message and len(message) < 400 and "layer" not in message


def test_a_file_of_another_architecture_is_one_sentence_not_a_key_dump(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(meta_resnet(34), path)
    with pytest.raises(MdprError) as error:
        resolve_init(str(path), tiny(ibn=False))
    message = str(error.value)
    assert message.startswith(f"Initialisation file {path} holds a ResNet-34 backbone") and "expects a ResNet-18" in message
    assert "set model.depth=34" in message and "\n" not in message


def test_none_warns_only_when_the_reference_run_was_pretrained() -> None:
    paper = resolve_init("none", load_config("dukemtmc").model)
    assert paper.path is None and paper.pretrained_reference
    assert paper.line == "Backbone initialised at random (model.init=none)."
    assert "lup_moco_r101" in paper.warning and "paper's numbers" in paper.warning
    demo = resolve_init(None, load_config("demo-cpu").model)
    assert demo == InitChoice("none", None, False, "none") and demo.warning is None


def test_files_names_and_bad_choices(tmp_path: Path) -> None:
    path = tmp_path / "init.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    choice = resolve_init(str(path), tiny())
    assert (choice.name, choice.path) == ("file", path)
    cfg = tiny(pretrained=str(path))
    assert resolve_init(None, cfg).path == path  # an explicit model.pretrained wins over the recipe's model.init
    with pytest.raises(MdprError, match="give only one"):
        resolve_init("imagenet", cfg)
    with pytest.raises(MdprError, match="neither a file nor one of imagenet"):
        resolve_init(str(tmp_path / "missing.pth"), tiny())
    with pytest.raises(MdprError, match="ResNet-101 but the model is a ResNet-50.*model.depth=101"):
        resolve_init("lup_moco_r101", tiny(depth=50))
    with pytest.raises(MdprError, match="IBN-Net released no ImageNet ResNet-152-IBN-a"):
        resolve_init("imagenet", tiny(depth=152))


def test_recipes_name_the_initialisation_of_their_reference_run() -> None:
    assert {name: load_config(name).model.init for name in ("dukemtmc", "market1501", "synergyreid", "demo-cpu")} == {
        "dukemtmc": "lup_moco_r101", "market1501": "lup_moco_r101", "synergyreid": "lup_moco_r101", "demo-cpu": "none"}
