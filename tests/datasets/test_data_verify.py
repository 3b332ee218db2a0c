from __future__ import annotations

import json
from pathlib import Path

from fakes import build_market, tiny_jpeg
from typer.testing import CliRunner

from mdpr.cli import app
from mdpr.data import load_dataset
from mdpr.data.verify import verify_images

runner = CliRunner()


def _damage(root: Path) -> tuple:
    truncated = sorted((root / "bounding_box_test").glob("0003_*.jpg"))[0]
    truncated.write_bytes(tiny_jpeg((1, 2, 3), (64, 128))[:200])
    garbage = sorted((root / "bounding_box_train").glob("0007_*.jpg"))[0]
    garbage.write_bytes(b"this is not an image")
    return truncated, garbage


def test_verify_images_reports_bad_files_in_order(tmp_path: Path) -> None:
    root = build_market(tmp_path)
    truncated, garbage = _damage(root)
    paths = sorted(root.rglob("*.jpg")) + [root / "missing.jpg"]
    seen = []
    bad = verify_images(paths, workers=3, progress=lambda d, t: seen.append((d, t)))
    assert [p for p, _ in bad] == sorted([truncated, garbage]) + [root / "missing.jpg"]
    assert all(reason for _, reason in bad)
    assert seen[-1] == (len(paths), len(paths))


def test_prepare_verify_reports_by_name_and_leaves_them_out(tmp_path: Path) -> None:
    root = build_market(tmp_path)
    truncated, garbage = _damage(root)
    result = runner.invoke(app, ["prepare", "market1501", str(tmp_path), "--verify", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)  # stdout stays one JSON object; the report goes to stderr
    assert stats["gallery_images"] == 52 - 1 and stats["train_images"] == 40 - 1
    assert truncated.name in result.stderr and garbage.name in result.stderr
    m = load_dataset("market1501")
    paths = {r.path for r in m.records()}
    assert f"bounding_box_test/{truncated.name}" not in paths
    assert sorted({r.pid for r in m.train}) == list(range(m.num_train_pids))


def test_prepare_verify_all_good(tmp_path: Path) -> None:
    build_market(tmp_path)
    result = runner.invoke(app, ["prepare", "market1501", str(tmp_path), "--verify"])
    assert result.exit_code == 0 and "All images decode" in result.stdout
