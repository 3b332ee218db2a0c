"""mdpr.config: one validation step for every source, strict keys, coercion rules, recipe inheritance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdpr.config import (
    Config,
    InputConfig,
    SolverConfig,
    available_recipes,
    config_keys,
    field_rules,
    load_config,
    load_run_config,
    load_yaml,
    parse_overrides,
    read_recipe,
)
from mdpr.errors import MdprError


def _one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith((".", "?")), message
    assert "Traceback" not in message and len(message) < 600, message


def _refused(overrides, match: str | None = None, recipe: str | None = "demo-cpu") -> str:
    with pytest.raises(MdprError) as info:
        load_config(recipe, overrides)
    message = str(info.value)
    _one_sentence(message)
    if match is not None:
        assert match in message, message
    return message


# --------------------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("solver.base_lf=1e-4", "did you mean solver.base_lr?"),
        ("slover.base_lr=1e-4", "did you mean solver.base_lr?"),
        ("batch_size=32", "did you mean dataloader.batch_size?"),
        ("dataloader.batchsize=32", "did you mean dataloader.batch_size?"),
        ("input.size=[96,48]", "did you mean input.size_test?"),
        ("modle.depth=18", "did you mean model.depth?"),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_key(override: str, suggestion: str) -> None:
    message = _refused([override], suggestion)
    assert message.startswith("Unknown config key ")


def test_unknown_keys_without_a_close_match_list_the_valid_ones() -> None:
    message = _refused(["train.zzzzzz=1"])
    assert "train.zzzzzz" in message and "seed" in message and "eval_period" in message
    with pytest.raises(MdprError, match="Unknown config key model.colour"):
        Config.from_dict({"model": {"colour": "red"}})
    with pytest.raises(MdprError, match="mapping"):
        Config.from_dict(["model"])  # type: ignore[arg-type]


def test_overrides_that_are_not_key_value_are_refused() -> None:
    for bad in ("solver.base_lr", "=3", "solver..base_lr=1", "solver. base_lr=1"):
        with pytest.raises(MdprError, match="section.key=value"):
            parse_overrides([bad])
    with pytest.raises(MdprError, match="another override"):
        parse_overrides(["solver.base_lr=1", "solver.base_lr.x=2"])


# --------------------------------------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.seed=3", "train.seed", 3),
        ("train.seed='3'", "train.seed", 3),  # a quoted number for an int field
        ("train.seed=1e3", "train.seed", 1000),  # a whole float
        ("dataloader.num_workers=2.0", "dataloader.num_workers", 2),
        ("solver.base_lr=1e-4", "solver.base_lr", 1e-4),  # YAML 1.2: 1e-4 is a number
        ("solver.base_lr=3", "solver.base_lr", 3.0),
        ("solver.base_lr='2.5e-4'", "solver.base_lr", 2.5e-4),
        ("model.ibn=true", "model.ibn", True),
        ("model.ibn=False", "model.ibn", False),
        ("model.ibn=1", "model.ibn", True),
        ("model.ibn=0", "model.ibn", False),
        ("model.ibn='TRUE'", "model.ibn", True),
        ("dataset=2024", "dataset", "2024"),  # numbers become text for str fields
        ("dataset=on", "dataset", "on"),  # YAML 1.1's on/off/yes/no stay strings
        ("model.pretrained=", "model.pretrained", None),
        ("model.pretrained=null", "model.pretrained", None),
        ("model.pretrained=~", "model.pretrained", None),
        ("model.pretrained=w.pth", "model.pretrained", "w.pth"),
        ("input.size_train=[96, 48]", "input.size_train", (96, 48)),
        ("input.pixel_std=[1, 2, 3]", "input.pixel_std", (1.0, 2.0, 3.0)),
        ("solver.steps=[]", "solver.steps", ()),
        ("solver.steps=[10]", "solver.steps", (10,)),
    ],
)
def test_coercion_rules(override: str, key: str, expected) -> None:
    cfg = load_config("demo-cpu", [override])
    section, _, name = key.rpartition(".")
    value = getattr(getattr(cfg, section), name) if section else getattr(cfg, name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "override",
    [
        "model.ibn=yes",  # only true/false/1/0
        "model.ibn=on",
        "model.ibn=2",
        "model.ibn='maybe'",
        "train.seed=3.5",  # fractional for an int field
        "train.seed=true",  # a bool is not an int
        "train.seed='three'",
        "solver.base_lr=true",
        "solver.base_lr=.nan",
        "solver.base_lr=.inf",
        "solver.base_lr=1e999",
        "solver.base_lr=abc",
        "model.branches=[both]",
        "model.branches=true",
        "input.size_train=96",
        "input.size_train=[96, 48, 3]",
        "input.size_train=[96.5, 48]",
        "input.size_train=[96, true]",
        "input.size_train={a: 1}",
        "solver.steps=40",
        "model.pretrained=[a]",
    ],
)
def test_values_outside_the_coercion_rules_are_refused(override: str) -> None:
    key = override.partition("=")[0]
    message = _refused([override])
    assert message.startswith(f"{key} must be "), message


def test_yaml_is_read_with_yaml_12_scalars() -> None:
    assert load_yaml("a: yes\nb: 1e-4\nc: 1:30\nd: 2024-01-01\ne: true\nf: 0x10\ng: 010") == {
        "a": "yes", "b": 1e-4, "c": "1:30", "d": "2024-01-01", "e": True, "f": "0x10", "g": 10}


# --------------------------------------------------------------------------------------------- range rules

#: a refused value for every config key (the test below checks that none is missing)
BAD = {
    "recipe": "[1]",
    "dataset": "{a: 1}",
    "model.backbone": "'no spaces please'",
    "model.depth": "0",
    "model.ibn": "yes",
    "model.last_stride": "3",
    "model.embedding_dim": "0",
    "model.num_parts": "0",
    "model.num_attention": "-1",
    "model.num_classes": "-1",
    "model.attention_guidance": "2",
    "model.fusion": "maybe",
    "model.distillation": "[]",
    "model.branches": "all",
    "model.classifier": "arcface",
    "model.cls_scale": "0",
    "model.cls_margin": "1.0",
    "model.pretrained": "{path: a}",
    "model.init": "{name: imagenet}",
    "input.size_train": "[96]",
    "input.size_test": "[0, 0]",
    "input.interpolation": "cubic",
    "input.pixel_mean": "[1, 2]",
    "input.pixel_std": "[1, 0, 1]",
    "input.flip_prob": "1.5",
    "input.padding": "-1",
    "input.random_erasing_prob": "-0.1",
    "input.random_patch_prob": "2",
    "input.random_patch_pool": "0",
    "input.random_patch_min_pool": "-1",
    "input.autoaug_prob": "1.01",
    "dataloader.batch_size": "0",
    "dataloader.process_batch": "-4",
    "dataloader.num_instances": "0",
    "dataloader.num_workers": "-1",
    "dataloader.test_batch_size": "0",
    "dataloader.steps_per_epoch": "-1",
    "loss.ce_epsilon": "1",
    "loss.triplet_margin": "-0.1",
    "loss.triplet_hard_mining": "'no'",
    "loss.triplet_norm_feat": "3",
    "loss.diversity_scale": "-1",
    "loss.diversity": "nope",
    "solver.optimizer": "Lion",
    "solver.base_lr": "-1e-4",
    "solver.weight_decay": "-1",
    "solver.weight_decay_norm": "-0.5",
    "solver.bias_lr_factor": "0",
    "solver.momentum": "1",
    "solver.max_epochs": "0",
    "solver.warmup_iters": "-1",
    "solver.warmup_factor": "1.5",
    "solver.delay_epochs": "-1",
    "solver.scheduler": "poly",
    "solver.eta_min_lr": "-1e-7",
    "solver.steps": "[90, 40]",
    "solver.gamma": "0",
    "solver.amp": "'fp16'",
    "solver.grad_clip": "-1",
    "solver.grad_accumulation": "0",
    "train.seed": "-1",
    "train.eval_period": "-2",
    "train.checkpoint_period": "-1",
    "train.log_period": "0",
    "train.sync_bn": "'sync'",
    "train.eval_flip": "0.5",
}

#: values that are out of bounds although of the right type
HUGE = {
    "dataloader.batch_size": "99999999999999999999",
    "dataloader.test_batch_size": "10000000",
    "dataloader.num_workers": "100000",
    "input.size_train": "[100000, 100000]",
    "train.seed": "18446744073709551616",
    "solver.max_epochs": "10000000",
}


def test_every_config_key_has_a_rule_and_a_refused_value() -> None:
    assert set(field_rules()) == set(config_keys()) == set(BAD)
    fields = {f.name for f in dataclasses.fields(Config) if f.name in ("recipe", "dataset")}
    for f in dataclasses.fields(Config):
        if f.name not in fields:
            fields |= {f"{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)}  # type: ignore[arg-type]
    assert fields == set(config_keys())


@pytest.mark.parametrize("key", sorted(BAD))
def test_every_range_rule_refuses_its_bad_value_naming_the_key(key: str) -> None:
    message = _refused([f"{key}={BAD[key]}"])
    assert message.startswith(f"{key} must be "), message
    assert field_rules()[key] in message


@pytest.mark.parametrize("key", sorted(HUGE))
def test_numbers_have_upper_bounds(key: str) -> None:
    assert _refused([f"{key}={HUGE[key]}"]).startswith(f"{key} must be ")


def test_the_issue_examples() -> None:
    assert _refused(["input.size_train=[96]"]) == (
        "input.size_train must be two positive integers [height, width] up to 8192, got [96].")
    _refused(["input.size_train=[0,0]"], "input.size_train must be two positive integers")
    _refused(["input.size_test=[-96,48]"], "input.size_test must be two positive integers")
    _refused(["solver.base_lr=-0.1"], "solver.base_lr must be a learning rate > 0")
    _refused(["dataloader.steps_per_epoch=-1"], "dataloader.steps_per_epoch must be 0")
    _refused(["dataloader.test_batch_size=0"], "dataloader.test_batch_size must be")


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["dataloader.batch_size=10", "dataloader.num_instances=4"], "multiple of dataloader.num_instances (4)"),
        (["dataloader.batch_size=64", "dataloader.num_instances=16", "dataloader.process_batch=24"],
         "dataloader.process_batch (24) must be a multiple of dataloader.num_instances (16)"),
        (["dataloader.batch_size=64", "dataloader.num_instances=16", "dataloader.process_batch=48"],
         "whole number of process steps"),
        (["dataloader.batch_size=64", "dataloader.num_instances=16", "dataloader.process_batch=128"],
         "whole number of process steps"),
        (["dataloader.batch_size=16", "dataloader.num_instances=4", "dataloader.process_batch=8",
          "solver.grad_accumulation=2"], "solver.grad_accumulation and dataloader.process_batch"),
        (["dataloader.batch_size=12", "dataloader.num_instances=4", "solver.grad_accumulation=2"],
         "solver.grad_accumulation (2) must divide the 3 identities"),
        (["input.random_patch_pool=50", "input.random_patch_min_pool=100"], "input.random_patch_min_pool (100)"),
        (["solver.base_lr=1e-4", "solver.eta_min_lr=1e-3"], "solver.eta_min_lr"),
        (["solver.max_epochs=5", "solver.delay_epochs=5"], "solver.delay_epochs (5)"),
        (["input.size_train=[16,8]"], "input.size_train height 16 is too low for model.num_parts=2"),
        (["input.size_test=[32,16]", "model.num_parts=3"], "input.size_test height 32 is too low for model.num_parts=3"),
        (["input.size_train=[64,32]", "model.last_stride=2", "model.num_parts=3"], "at least 96"),
    ],
)
def test_cross_field_rules(overrides, match: str) -> None:
    _refused(overrides, match)


def test_cross_field_rules_accept_valid_layouts() -> None:
    cfg = load_config("demo-cpu", ["dataloader.batch_size=256", "dataloader.num_instances=16",
                                   "dataloader.process_batch=64"])
    assert cfg.dataloader.process_batch == 64
    load_config("demo-cpu", ["solver.base_lr=1e-4", "solver.eta_min_lr=1e-4", "input.random_patch_min_pool=1000"])


# --------------------------------------------------------------------------------------------- every source


def test_every_source_is_validated(tmp_path: Path) -> None:
    with pytest.raises(MdprError, match="solver.base_lr must be"):
        SolverConfig(base_lr=-1.0)  # direct construction
    with pytest.raises(MdprError, match="input.size_train must be"):
        InputConfig(size_train=(96,))  # type: ignore[arg-type]
    with pytest.raises(MdprError, match="input.size_train height"):
        Config(input=InputConfig(size_train=(16, 8)))
    with pytest.raises(MdprError, match="dataloader.steps_per_epoch must be"):
        Config.from_dict({"dataloader": {"steps_per_epoch": -1}})  # a checkpoint's stored dict
    run = tmp_path / "config.yaml"
    load_config("demo-cpu").save_yaml(run)
    assert load_run_config(run) == load_config("demo-cpu")
    with pytest.raises(MdprError, match="dataloader.test_batch_size must be"):
        load_run_config(run, ["dataloader.test_batch_size=0"])
    run.write_text("model: [1, 2\n")
    with pytest.raises(MdprError, match="not valid YAML"):
        load_run_config(run)
    cfg = load_config("demo-cpu")
    cfg.solver.max_epochs = 0  # changed in place: validate() catches it
    with pytest.raises(MdprError, match="solver.max_epochs must be"):
        cfg.validate()


def test_python_callers_get_normalised_values() -> None:
    cfg = InputConfig(size_train=[64, 32])  # type: ignore[arg-type]
    assert cfg.size_train == (64, 32)
    assert Config(model={"depth": 18}).model.depth == 18  # type: ignore[arg-type]


@pytest.mark.parametrize("name", available_recipes())
def test_recipes_round_trip_through_their_stored_form(name: str, tmp_path: Path) -> None:
    cfg = load_config(name)
    assert cfg.recipe == name
    assert Config.from_dict(cfg.to_dict()) == cfg
    cfg.save_yaml(tmp_path / "c.yaml")
    assert load_run_config(tmp_path / "c.yaml") == cfg


def test_stored_configs_of_older_versions_keep_loading() -> None:
    """A config stored before process_batch, delay_epochs and the patch-pool keys existed."""
    old = load_config("dukemtmc").to_dict()
    for section, key in [("dataloader", "process_batch"), ("solver", "delay_epochs"),
                         ("input", "random_patch_pool"), ("input", "random_patch_min_pool")]:
        del old[section][key]
    old["dataloader"]["batch_size"] = 64
    cfg = Config.from_dict(old)
    assert cfg.dataloader.process_batch == 0 and cfg.solver.delay_epochs == 0
    assert cfg.input.random_patch_pool == 1000 and cfg.input.random_patch_min_pool == 100


# --------------------------------------------------------------------------------------------- _base_


def test_relative_base_is_resolved_against_the_recipe_file(tmp_path: Path, monkeypatch) -> None:
    recipes = tmp_path / "recipes"
    (recipes / "common").mkdir(parents=True)
    (recipes / "common" / "base.yaml").write_text("model:\n  depth: 34\nsolver:\n  base_lr: 0.002\n  max_epochs: 7\n")
    # mid.yaml names its base relative to its own folder, child.yaml names mid relative to its own
    (recipes / "common" / "mid.yaml").write_text("_base_: base.yaml\nsolver:\n  max_epochs: 9\n")
    (recipes / "child.yaml").write_text("_base_: common/mid.yaml\nmodel:\n  ibn: false\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "base.yaml").write_text("model:\n  depth: 152\n")  # a decoy in the working directory
    (elsewhere / "common").mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(str(recipes / "child.yaml"))
    assert (cfg.model.depth, cfg.model.ibn, cfg.solver.base_lr, cfg.solver.max_epochs) == (34, False, 0.002, 9)
    assert cfg.recipe == "child"  # a recipe's name is its own, not its base's
    monkeypatch.chdir(recipes)
    assert load_config("child.yaml") == cfg  # the top-level path itself is relative to the working directory


def test_base_by_name_missing_base_and_cycles(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("_base_: market1501\nrecipe: mine\nsolver:\n  max_epochs: 3\n")
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert cfg.model.depth == 101 and cfg.solver.max_epochs == 3 and cfg.recipe == "mine"
    assert read_recipe("synergyreid")["solver"]["warmup_iters"] == 200
    assert load_config("synergyreid").recipe == "synergyreid"

    (tmp_path / "orphan.yaml").write_text("_base_: ../nowhere/base.yaml\n")
    message = str(pytest.raises(MdprError, load_config, str(tmp_path / "orphan.yaml")).value)
    assert str(tmp_path.parent / "nowhere" / "base.yaml") in message and "orphan.yaml" in message
    _one_sentence(message)
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(MdprError, match="inherits from itself"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "list.yaml").write_text("_base_: [a.yaml, b.yaml]\n")
    with pytest.raises(MdprError, match="_base_ in recipe"):
        load_config(str(tmp_path / "list.yaml"))
    with pytest.raises(MdprError, match="Unknown recipe 'nope'"):
        load_config("nope")
    with pytest.raises(MdprError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "list_top.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(MdprError, match="must be a YAML mapping"):
        load_config(str(tmp_path / "list_top.yaml"))


# --------------------------------------------------------------------------------------------- property

_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "yes", "null", "~", "", "[]", "[96]", "[0, 0]", "[384, 192]", "[1, 2, 3]",
                     "{a: 1}", "[[1]]", "'3'", "1e3", "-1", "0", ".nan", "cosine", "Adam", "both", "[", "]", "{",
                     "!!binary aGk=", "!!python/object:os.system x", "&a [*a]", "*x", "? [a]: 1", "@x", "%x",
                     "a: b: c", "1:30", "0x1F", "2024-01-01"]),
    st.text(max_size=20),
    st.lists(st.integers(-5, 600), max_size=4).map(str),
)
_KEYS = st.one_of(st.sampled_from(config_keys()), st.sampled_from(["solver", "model", "x", "solver.base_lr.x", "a.b.c"]),
                  st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=20))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(_KEYS, _VALUES), min_size=1, max_size=4), recipe=st.sampled_from([None, "demo-cpu"]))
def test_random_overrides_give_a_config_or_one_sentence(pairs, recipe) -> None:
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(recipe, overrides)
    except MdprError as exc:
        _one_sentence(str(exc))
        return
    assert isinstance(cfg, Config)
    assert Config.from_dict(cfg.to_dict()) == cfg  # what was accepted stays valid when stored and read back
