"""Every parser against the statistics torchreid (or, for SynergyReID, the MDPR code) reports on the same tree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest
from fakes import (
    STAT_KEYS,
    build_cuhk03_config,
    build_cuhk03_mat,
    build_folder_dataset,
    build_market,
    build_market_distractors,
    build_msmt17,
    build_synergyreid,
    cuhk03_images,
    fastreid_synergy_stats,
    torchreid_cuhk03_new_stats,
    torchreid_market_stats,
    torchreid_msmt17_stats,
)
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.data import load_dataset

runner = CliRunner()


def prepare_json(*args: str) -> Dict[str, Any]:
    result = runner.invoke(app, ["prepare", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def numbers(stats: Dict[str, Any]) -> Dict[str, int]:
    return {k: stats[k] for k in STAT_KEYS}


# ------------------------------------------------------------------------------------------- Market


def test_market_matches_torchreid_and_hand_count(tmp_path: Path) -> None:
    root = build_market(tmp_path)
    stats = prepare_json("market1501", str(tmp_path))
    assert stats["dataset"] == "market1501"
    assert numbers(stats) == torchreid_market_stats(root)
    # by hand: 5 train ids x 4 cams x 2; query 4 ids x 2 cams; gallery 4 x 6 x 2 + 4 distractors (id 0)
    assert numbers(stats) == {
        "train_ids": 5,
        "train_images": 40,
        "query_ids": 4,
        "query_images": 8,
        "gallery_ids": 5,
        "gallery_images": 52,
        "cameras": 6,
    }


def test_market_relabel_orig_pid_distractors_and_cameras(tmp_path: Path) -> None:
    build_market(tmp_path, train_pids=(10, 2, 7))  # 10 before 2 in string order: relabel must be numeric
    prepare_json("market", str(tmp_path))
    m = load_dataset("market1501")
    assert {(r.orig_pid, r.pid) for r in m.train} == {(2, 0), (7, 1), (10, 2)}
    assert all(r.pid == r.orig_pid for r in m.query + m.gallery)
    assert any(r.pid == 0 for r in m.gallery) and all(r.pid != -1 for r in m.records())
    assert {r.camid for r in m.gallery} == {0, 1, 2, 3, 4, 5}
    r = next(r for r in m.train if r.orig_pid == 10)
    assert r.path.startswith("bounding_box_train/0010_c") and m.root.name == "Market-1501-v15.09.15"


@pytest.mark.parametrize("layout", ["dataset-folder", "torchreid-parent", "digits-and-_c-in-root"])
def test_market_root_forms_and_file_name_only(tmp_path: Path, layout: str) -> None:
    if layout == "dataset-folder":
        root = build_market(tmp_path)
        arg = root
    elif layout == "torchreid-parent":  # ROOT/market1501/Market-1501-v15.09.15
        root = build_market(tmp_path / "market1501")
        arg = tmp_path
    else:  # folder names with digits and "_c1" must not change ids or cameras
        root = build_market(tmp_path / "run_c9_0042" / "1234_c7", folder="5555_c3s3")
        arg = root
    assert numbers(prepare_json("market1501", str(arg))) == torchreid_market_stats(root)


def test_market_with_distractors(tmp_path: Path) -> None:
    root = build_market(tmp_path)
    build_market_distractors(root, count=8)
    stats = prepare_json("market1501", str(tmp_path), "--with-distractors", "--name", "m500k")
    assert numbers(stats) == torchreid_market_stats(root, distractors=True)
    assert stats["gallery_images"] == 52 + 6  # 2 of the 8 are junk (-1)
    assert load_dataset("m500k").options == {"with_distractors": True}


def test_dukemtmc(tmp_path: Path) -> None:
    root = build_market(tmp_path, folder="DukeMTMC-reID", cams=(1, 2, 3, 4, 5, 6, 7, 8), duke=True)
    stats = prepare_json("duke", str(tmp_path))
    assert stats["dataset"] == "dukemtmc"
    assert numbers(stats) == torchreid_market_stats(root, drop_junk=False)
    assert stats["cameras"] == 8 and stats["gallery_images"] == 4 * 8 * 2


# ------------------------------------------------------------------------------------------- MSMT17


@pytest.mark.parametrize("version", [1, 2])
def test_msmt17_versions_and_val(tmp_path: Path, version: int) -> None:
    root = build_msmt17(tmp_path, version=version)
    stats = prepare_json("msmt17", str(tmp_path))
    assert numbers(stats) == torchreid_msmt17_stats(root)
    assert numbers(stats) == {
        "train_ids": 5,
        "train_images": 25,  # 5 ids x 3 cams x 2, minus one val image per id
        "query_ids": 3,
        "query_images": 3,
        "gallery_ids": 3,
        "gallery_images": 9,
        "cameras": 4,
    }
    with_val = prepare_json("msmt17", str(root), "--with-val")
    assert numbers(with_val) == torchreid_msmt17_stats(root, with_val=True)
    assert with_val["train_images"] == 30


def test_msmt17_test_pids_offset_past_train(tmp_path: Path) -> None:
    build_msmt17(tmp_path)
    prepare_json("msmt17", str(tmp_path))
    m = load_dataset("msmt17")
    assert m.options["version"] == "V1"
    assert {r.pid for r in m.query} == {5, 6, 7} and {r.orig_pid for r in m.query} == {0, 1, 2}
    assert {r.camid for r in m.query} == {0} and {r.camid for r in m.gallery} == {1, 6, 14}


def test_msmt17_missing_listed_image(tmp_path: Path) -> None:
    root = build_msmt17(tmp_path)
    next((root / "test").rglob("*.jpg")).unlink()
    result = runner.invoke(app, ["prepare", "msmt17", str(root)])
    assert result.exit_code == 2 and "missing" in result.output


# ------------------------------------------------------------------------------------------- CUHK03

TEST_LABELS = (1, 5, 9, 12)


def _cuhk03(tmp_path: Path, variant: str = "labeled", with_mat: bool = True) -> tuple:
    root = tmp_path / "cuhk03"
    if with_mat:
        build_cuhk03_mat(root / "cuhk03_release" / "cuhk-03.mat")
    configs = {}
    for v in ("labeled", "detected"):
        configs[v] = build_cuhk03_config(root / f"cuhk03_new_protocol_config_{v}.mat", cuhk03_images(variant=v), TEST_LABELS)
    return root, configs[variant]


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03_new_protocol_from_mat(tmp_path: Path, variant: str) -> None:
    root, config = _cuhk03(tmp_path, variant)
    args = ["cuhk03", str(tmp_path)] + (["--variant", variant] if variant == "detected" else [])
    stats = prepare_json(*args)
    assert numbers(stats) == torchreid_cuhk03_new_stats(config)
    extracted = sorted(p.name for p in (root / f"images_{variant}").iterdir())
    assert extracted == sorted(name for name, _ in cuhk03_images(variant=variant))
    m = load_dataset("cuhk03")
    assert m.options == {"variant": variant, "protocol": "new"}
    assert {r.orig_pid for r in m.query} == set(TEST_LABELS) and {r.camid for r in m.records()} == {0, 1}
    from PIL import Image

    with Image.open(m.image_path(m.query[0])) as img:
        assert img.mode == "RGB" and img.height >= 12


def test_cuhk03_extracted_folders_without_mat(tmp_path: Path) -> None:
    first, config = _cuhk03(tmp_path / "a")
    prepare_json("cuhk03", str(first))  # extracts images_labeled/
    root, _ = _cuhk03(tmp_path / "b", with_mat=False)
    shutil.copytree(first / "images_labeled", root / "images_labeled")
    stamp = {p.name: p.stat().st_mtime_ns for p in (root / "images_labeled").iterdir()}
    assert numbers(prepare_json("cuhk03", str(root))) == torchreid_cuhk03_new_stats(config)
    assert {p.name: p.stat().st_mtime_ns for p in (root / "images_labeled").iterdir()} == stamp
    # an incomplete folder with no cuhk-03.mat to complete it is a clear error
    next((root / "images_labeled").iterdir()).unlink()
    result = runner.invoke(app, ["prepare", "cuhk03", str(root)])
    assert result.exit_code == 2 and "missing" in result.output


def test_cuhk03_classic_protocol(tmp_path: Path) -> None:
    _cuhk03(tmp_path)
    stats = prepare_json("cuhk03", str(tmp_path), "--protocol", "classic", "--name", "cuhk03-classic")
    images = cuhk03_images()
    # split 0 tests persons (pair, person) (1,2), (1,5), (2,1), (4,2) = labels 2, 5, 7, 15
    test = {2, 5, 7, 15}
    n_test = sum(label in test for _, label in images)
    assert numbers(stats) == {
        "train_ids": 17 - 4,
        "train_images": len(images) - n_test,
        "query_ids": 4,
        "query_images": n_test,
        "gallery_ids": 4,
        "gallery_images": n_test,  # torchreid: query and gallery are the same test images
        "cameras": 2,
    }
    m = load_dataset("cuhk03-classic")
    assert {r.orig_pid for r in m.query} == test


# -------------------------------------------------------------------------------------- SynergyReID


@pytest.mark.parametrize("challenge", [False, True])
def test_synergyreid(tmp_path: Path, challenge: bool) -> None:
    root = build_synergyreid(tmp_path)
    stats = prepare_json("synergyreid", str(tmp_path), *(["--challenge"] if challenge else []))
    assert numbers(stats) == fastreid_synergy_stats(root, challenge=challenge)
    expected_test = (3, 3, 7, 7) if challenge else (3, 3, 3, 12)
    assert (stats["query_ids"], stats["query_images"], stats["gallery_ids"], stats["gallery_images"]) == expected_test
    assert stats["train_ids"] == 4 and stats["train_images"] == 24 and stats["cameras"] == 2


def test_synergyreid_challenge_zip_layout_name(tmp_path: Path) -> None:
    root = build_synergyreid(tmp_path, folder="data_reid")
    assert numbers(prepare_json("synergyreid", str(tmp_path))) == fastreid_synergy_stats(root)


# ------------------------------------------------------------------------------------------- folder


def test_folder_dataset_with_cameras(tmp_path: Path) -> None:
    build_folder_dataset(tmp_path)
    stats = prepare_json("folder", str(tmp_path), "--name", "custom")
    assert numbers(stats) == {
        "train_ids": 3,
        "train_images": 9,
        "query_ids": 2,
        "query_images": 6,
        "gallery_ids": 3,
        "gallery_images": 9,
        "cameras": 3,
    }
    m = load_dataset("custom")
    assert {r.camid for r in m.query} == {0} and {r.camid for r in m.gallery} == {1, 2}
    assert {r.orig_pid for r in m.train} == {5, 17, 40} and 0 in {r.pid for r in m.gallery}


def test_folder_dataset_named_identities_without_cameras(tmp_path: Path) -> None:
    names = {"train": ["alice", "bob"], "query": ["carol"], "gallery": ["carol", "dave"]}
    build_folder_dataset(tmp_path, with_cameras=False, names=names)
    prepare_json("folder", str(tmp_path / "custom"))
    m = load_dataset("folder")
    # names numbered 1..K in sorted order over all splits
    assert {r.orig_pid for r in m.train} == {1, 2} and {r.pid for r in m.query} == {3}
    assert {r.camid for r in m.query} == {0} and {r.camid for r in m.gallery} == {1}


def test_folder_dataset_csv(tmp_path: Path) -> None:
    build_folder_dataset(tmp_path)
    rows: List[str] = ["path,pid,split,camid"]
    for p in sorted((tmp_path / "custom").rglob("*.png")):
        rel = p.relative_to(tmp_path / "custom").as_posix()
        rows.append(f"{rel},{p.parent.name},{rel.split('/')[0]},{int(p.stem[-1]) - 1}")
    csv_path = tmp_path / "custom" / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    assert numbers(prepare_json("folder", str(csv_path))) == numbers(prepare_json("folder", str(tmp_path)))
