"""Dataset names: every alias ``prepare`` accepts finds the registered dataset in every command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
from fakes import build_market, build_msmt17
from storekit import tiny_checkpoint
from typer.testing import CliRunner

import mdpr.cli.evaluate  # noqa: F401  (registers the subcommands)
import mdpr.cli.extract  # noqa: F401
import mdpr.cli.prepare  # noqa: F401
import mdpr.cli.train  # noqa: F401
from mdpr.cli import app
from mdpr.data.datasets import ALIASES, DATASETS, VARIANT_ALIASES, closest_known, resolve_name
from mdpr.data.records import Record, build_manifest, load_dataset, register
from mdpr.errors import MdprError
from mdpr.store import FeatureStore

runner = CliRunner()

#: What users type, in the spellings of papers and download pages, and the dataset it means.
TYPED = {
    "duke": "dukemtmc",
    "DukeMTMC-reID": "dukemtmc",
    "dukemtmc_reid": "dukemtmc",
    "DUKEMTMC": "dukemtmc",
    "market": "market1501",
    "Market-1501": "market1501",
    "Market1501": "market1501",
    "msmt": "msmt17",
    "MSMT17": "msmt17",
    "cuhk03": "cuhk03",
    "CUHK03": "cuhk03",
    "synergy": "synergyreid",
    "SynergyReID": "synergyreid",
    "synergy-reid": "synergyreid",
    "custom": "folder",
    "Demo": "demo",
}


def _register(tmp_path: Path, name: str, dataset: str, options: Dict[str, str] = {}) -> None:  # noqa: B006
    rec = Record("a.jpg", 0, 0, "train", 1)
    register(build_manifest(name, dataset, tmp_path, [rec], [rec._replace(split="query")],
                            [rec._replace(split="gallery")], options=dict(options)))


@pytest.mark.parametrize("typed, canonical", sorted(TYPED.items()))
def test_typed_names_resolve(typed: str, canonical: str) -> None:
    meaning = resolve_name(typed)
    assert meaning is not None and meaning.canonical == canonical


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_alias_loads_the_canonical_registration_in_any_case(tmp_path: Path, alias: str) -> None:
    canonical = ALIASES[alias]
    _register(tmp_path, canonical, canonical)
    for spelling in (alias, alias.upper(), alias.title(), alias.replace("-", "_")):
        assert load_dataset(spelling).name == canonical


@pytest.mark.parametrize("alias", sorted(VARIANT_ALIASES))
def test_every_variant_alias_loads_a_registration_with_that_variant(tmp_path: Path, alias: str) -> None:
    canonical, implied = VARIANT_ALIASES[alias]
    _register(tmp_path, canonical, canonical, implied)
    assert load_dataset(alias).name == canonical
    assert load_dataset(alias.upper().replace("-", "_")).name == canonical


def test_every_canonical_name_is_known() -> None:
    for name in DATASETS:
        meaning = resolve_name(name)
        assert meaning is not None and meaning.canonical == name and not meaning.implied


def test_variant_alias_refuses_a_registration_of_another_variant(tmp_path: Path) -> None:
    _register(tmp_path, "cuhk03", "cuhk03", {"variant": "labeled", "protocol": "new"})
    assert load_dataset("cuhk03-labeled").name == "cuhk03"
    with pytest.raises(MdprError, match=r"registered cuhk03 has variant labeled.*--name cuhk03-detected"):
        load_dataset("cuhk03-detected")
    # prepared under its own name, as the message says: both are then found
    _register(tmp_path, "cuhk03-detected", "cuhk03", {"variant": "detected", "protocol": "new"})
    assert load_dataset("CUHK03_detected").name == "cuhk03-detected"
    assert load_dataset("cuhk03").name == "cuhk03"


def test_a_registration_under_an_alias_is_found_by_the_other_aliases(tmp_path: Path) -> None:
    _register(tmp_path, "duke", "dukemtmc")  # `mdpr prepare dukemtmc ROOT --name duke`
    assert load_dataset("DukeMTMC-reID").name == "duke"
    _register(tmp_path, "dukemtmc", "dukemtmc")
    assert load_dataset("dukemtmc-reid").name == "dukemtmc"  # the canonical registration wins


def test_exact_registered_name_wins_over_an_alias(tmp_path: Path) -> None:
    _register(tmp_path, "market", "folder")  # a custom dataset someone called "market"
    _register(tmp_path, "market1501", "market1501")
    assert load_dataset("market").dataset == "folder"


def test_suggestions(tmp_path: Path) -> None:
    assert closest_known("dukee") == "dukemtmc" and closest_known("markett") == "market1501"
    assert closest_known("zzzz") is None
    with pytest.raises(MdprError, match=r"Unknown dataset 'dukee'; did you mean dukemtmc \(not prepared yet: "
                                        r"`mdpr prepare dukemtmc ROOT`\)\? No dataset is registered yet"):
        load_dataset("dukee")
    _register(tmp_path, "dukemtmc", "dukemtmc")
    _register(tmp_path, "tiny", "folder")
    with pytest.raises(MdprError, match=r"Unknown dataset 'dukee'; did you mean dukemtmc\? "
                                        r"Registered datasets: dukemtmc, tiny"):
        load_dataset("dukee")
    with pytest.raises(MdprError, match=r"did you mean tiny\?"):
        load_dataset("tiyn")
    with pytest.raises(MdprError, match=r"Unknown dataset 'zzzz': not a registered name nor a manifest file"):
        load_dataset("zzzz")


def test_known_but_not_prepared_names_the_prepare_command() -> None:
    with pytest.raises(MdprError, match=r"Dataset 'Market-1501' \(market1501\) is not prepared yet; "
                                        r"run `mdpr prepare Market-1501 ROOT` first"):
        load_dataset("Market-1501")


def test_prepare_accepts_variant_names(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "cuhk03-detected", str(tmp_path), "--variant", "labeled"])
    assert result.exit_code == 2 and "contradicts --variant labeled" in result.output
    v2 = build_msmt17(tmp_path / "msmt", version=2)
    result = runner.invoke(app, ["prepare", "msmt17_v1", str(v2)])
    assert result.exit_code == 2 and "holds MSMT17 V2" in result.output
    result = runner.invoke(app, ["prepare", "MSMT17_V2", str(v2), "--json"])
    assert result.exit_code == 0, result.output
    assert load_dataset("msmt17_v2").options["version"] == "V2"


# ------------------------------------------------------------------------- through the commands


@pytest.fixture
def duke(tmp_path: Path) -> Path:
    """A fake DukeMTMC-reID prepared as typed in the README (`mdpr prepare duke ROOT`)."""
    build_market(tmp_path / "data", folder="DukeMTMC-reID", duke=True)
    result = runner.invoke(app, ["prepare", "duke", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset"] == "dukemtmc"
    return tmp_path


def test_train_accepts_an_alias(duke: Path) -> None:
    # the dataset is loaded before the config is checked: with a name that resolves, the error is the config's
    bad_lr = ["--recipe", "demo-cpu", "--set", "solver.base_lr=-1"]
    for typed in ("duke", "DukeMTMC-reID", "dukemtmc_reid"):
        result = runner.invoke(app, ["train", "--dataset", typed, *bad_lr])
        assert result.exit_code == 2 and "solver.base_lr must be" in result.output, (typed, result.output)
    wrong = runner.invoke(app, ["train", "--dataset", "dukee", *bad_lr])
    assert wrong.exit_code == 2 and "did you mean dukemtmc?" in " ".join(wrong.output.split())
    assert "base_lr" not in wrong.output


def test_evaluate_and_extract_accept_an_alias(duke: Path) -> None:
    weights = tiny_checkpoint(duke / "tiny.pt")
    result = runner.invoke(app, ["evaluate", "--dataset", "duke", "--weights", str(weights), "--device", "cpu",
                                 "--num-workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_queries"] == len(load_dataset("dukemtmc").query)
    out = duke / "q.h5"
    result = runner.invoke(app, ["extract", "--dataset", "Duke", "--split", "query", "--weights", str(weights),
                                 "--output", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        assert len(store) == len(load_dataset("dukemtmc").query)
    wrong = runner.invoke(app, ["evaluate", "--dataset", "dukee", "--weights", str(weights)])
    assert wrong.exit_code == 2 and "did you mean dukemtmc?" in " ".join(wrong.stderr.split())


def test_export_measures_int8_accuracy_on_an_alias(duke: Path) -> None:
    pytest.importorskip("onnxruntime")
    from storekit import make_crops

    weights = tiny_checkpoint(duke / "tiny.pt")
    make_crops(duke / "calib", 8, size=(64, 32))
    common = ["export", "-w", str(weights), "--int8", "--calibrate", str(duke / "calib"), "--max-map-drop", "100",
              "--batch-sizes", "1"]
    result = runner.invoke(app, [*common, "-o", str(duke / "m.onnx"), "--dataset", "Duke", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["int8"]["dataset"] == "dukemtmc"  # reported under its registered name
    wrong = runner.invoke(app, [*common, "-o", str(duke / "w.onnx"), "--dataset", "dukee"])
    assert wrong.exit_code == 2 and "did you mean dukemtmc?" in " ".join(wrong.stderr.split())
    assert not (duke / "w.onnx").exists()


def test_list_datasets_shows_the_registered_name_and_marks_a_deleted_root_missing(duke: Path) -> None:
    import shutil

    listed = runner.invoke(app, ["list", "datasets", "--json"])
    assert listed.exit_code == 0, listed.output
    entry = next(e for e in json.loads(listed.stdout)["entries"] if e["name"] == "dukemtmc")
    assert entry["missing"] is False
    table = runner.invoke(app, ["list", "datasets"])
    assert table.exit_code == 0 and "dukemtmc" in table.stdout and "present" in table.stdout
    shutil.rmtree(duke / "data")
    gone = next(e for e in json.loads(runner.invoke(app, ["list", "datasets", "--json"]).stdout)["entries"]
                if e["name"] == "dukemtmc")
    assert gone["missing"] is True
    assert "missing" in runner.invoke(app, ["list", "datasets"]).stdout
