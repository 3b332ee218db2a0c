"""Classes 4, 5, 8 through the CLI: hostile stores, unusual images, stale state after a refused or killed run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from robustkit import cli, one_sentence

from mdpr.store import FeatureStore


@pytest.fixture
def store(tiny_weights, crops, tmp_path) -> Path:
    out = tmp_path / "g.h5"
    result = cli("extract", "--images", crops, "--weights", tiny_weights, "--output", out)
    assert result.exit_code == 0, result.output
    return out


def _probe(crops: Path) -> Path:
    return sorted(crops.rglob("*.jpg"))[0]


# ------------------------------------------------------------------------------------------- class 4: stores


@pytest.mark.parametrize("mutate, expected", [
    (lambda h5: (h5.__delitem__("features"), h5.__setitem__("features", np.zeros(8, np.float32))), "not (rows, dim)"),
    (lambda h5: h5.attrs.__setitem__("normalized", np.array([1, 0])), "is an array"),
    (lambda h5: (h5.__delitem__("pids"), h5.__setitem__("pids", np.zeros(3, np.int32))), "'pids' has 3 rows"),
    (lambda h5: h5.attrs.__setitem__("model_config", "{oops"), "not valid JSON"),
    (lambda h5: (h5.__delitem__("paths"), h5.__setitem__("paths", h5py.ExternalLink("other.h5", "/paths"))),
     "external link"),
])
def test_hostile_store_is_one_sentence(tiny_weights, crops, store, mutate, expected) -> None:
    with h5py.File(store, "r+") as h5:
        if "segments" in h5.attrs.get("layout", ""):
            pytest.skip("segmented store")
        mutate(h5)
    one_sentence(cli("query", _probe(crops), "--gallery", store, "--weights", tiny_weights), expected)


def test_nan_rows_are_left_out_and_json_stays_valid(tiny_weights, crops, store) -> None:
    with FeatureStore.open(store) as s:
        target = 0
        victim = s.paths[target]
    with h5py.File(store, "r+") as h5:
        feats = h5["features"]
        row = feats[target]
        row[:] = np.nan
        feats[target] = row
    result = cli("query", _probe(crops), "--gallery", store, "--weights", tiny_weights, "--json", "--top-k", "8")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # strict JSON: no NaN
    paths = [r["path"] for r in payload[0]["results"]]
    assert len(paths) == 7 and not any(p.endswith(victim) for p in paths)
    assert "NaN or infinite" in result.stderr
    evaluated = cli("evaluate", "--query-features", store, "--gallery-features", store, "--json",
                    "--no-cross-camera-only")
    assert evaluated.exit_code == 0, evaluated.output
    json.loads(evaluated.stdout)
    assert "left out of the evaluation" in evaluated.stderr


# ------------------------------------------------------------------------------------------- class 5: images


def _extract_one(tiny_weights, folder: Path, out: Path, *extra) -> np.ndarray:
    result = cli("extract", "--images", folder, "--weights", tiny_weights, "--output", out, *extra)
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as s:
        return s.read_features(dtype=np.float32)


def _pair(tmp_path: Path, name: str, reference: Image.Image, unusual: Image.Image, **save: object):
    a, b = tmp_path / f"{name}-a", tmp_path / f"{name}-b"
    a.mkdir()
    b.mkdir()
    if "exif" in save:  # both JPEG: only the orientation differs
        reference.save(a / "x.jpg", quality=100)
        unusual.save(b / "x.jpg", **save)
    else:
        reference.save(a / "x.png")
        unusual.save(b / "x.png", **save)
    return a, b


def _person(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.repeat(np.repeat(rng.integers(0, 256, (8, 4, 3), dtype=np.uint8), 8, 0), 8, 1)
    return Image.fromarray(arr)


def test_sixteen_bit_png_is_read_like_its_eight_bit_copy(tiny_weights, tmp_path) -> None:
    grey = _person().convert("L")
    wide = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # I;16
    a, b = _pair(tmp_path, "g16", grey, wide)
    fa, fb = _extract_one(tiny_weights, a, tmp_path / "a.h5"), _extract_one(tiny_weights, b, tmp_path / "b.h5")
    assert float(fa[0] @ fb[0]) > 0.999


def test_exif_rotated_photo_is_read_upright(tiny_weights, tmp_path) -> None:
    arr = np.zeros((128, 64, 3), np.uint8)
    arr[:64, :, 0] = 230  # red top, blue bottom: a 90-degree turn moves the colours sideways
    arr[64:, :, 2] = 230
    upright = Image.fromarray(arr)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone stores with orientation 6 (turn it 90° clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    a, b = _pair(tmp_path, "exif", upright, stored, exif=exif, quality=100)
    c = tmp_path / "no-exif"
    c.mkdir()
    stored.save(c / "x.jpg", quality=100)
    fa, fb = _extract_one(tiny_weights, a, tmp_path / "a.h5"), _extract_one(tiny_weights, b, tmp_path / "b.h5")
    fc = _extract_one(tiny_weights, c, tmp_path / "c.h5")
    assert float(fa[0] @ fb[0]) > 0.97 and float(fa[0] @ fb[0]) > float(fa[0] @ fc[0]) + 0.01


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK", "LA"])
def test_palette_alpha_cmyk_images_are_embedded(tiny_weights, tmp_path, mode) -> None:
    rgb = _person(2)
    other = rgb.convert(mode)
    a, b = _pair(tmp_path, mode, rgb.convert("RGB") if mode != "LA" else rgb.convert("L"), other) if mode != "CMYK" \
        else _pair(tmp_path, mode, rgb, rgb)
    if mode == "CMYK":
        (b / "x.png").unlink()
        other.save(b / "x.jpg", quality=100)
        rgb.save(a / "x.png")
    fa, fb = _extract_one(tiny_weights, a, tmp_path / "a.h5"), _extract_one(tiny_weights, b, tmp_path / "b.h5")
    assert float(fa[0] @ fb[0]) > 0.95


def test_non_utf8_file_name_survives_append(tiny_weights, crops, tmp_path) -> None:
    folder = tmp_path / "names"
    folder.mkdir()
    _person(3).save(folder / "plain.png")
    _person(4).save(os.path.join(os.fsencode(folder), b"caf\xe9.png").decode("utf-8", "surrogateescape"))
    out = tmp_path / "n.h5"
    first = _extract_one(tiny_weights, folder, out)
    assert first.shape[0] == 2
    _person(5).save(folder / "later.png")
    again = _extract_one(tiny_weights, folder, out, "--append")
    assert again.shape[0] == 3


def test_a_symlinked_duplicate_is_a_row_of_its_own_with_its_own_camera(tiny_weights, tmp_path) -> None:
    folder = tmp_path / "linked"
    folder.mkdir()
    target = folder / "0003_c3s1_000001_00.jpg"
    _person(6).save(target, quality=95)
    (folder / "0003_c6s1_000002_00.jpg").symlink_to(target.name)
    out = tmp_path / "l.h5"
    feats = _extract_one(tiny_weights, folder, out)
    with FeatureStore.open(out) as s:
        assert sorted(zip(s.paths, s.camids.tolist())) == [("0003_c3s1_000001_00.jpg", 2), ("0003_c6s1_000002_00.jpg", 5)]
    np.testing.assert_allclose(feats[0], feats[1], atol=1e-6)


@pytest.mark.parametrize("link", ["self", "cycle"])
def test_a_symlink_loop_among_the_images_is_skipped_with_its_reason(tiny_weights, tmp_path, link) -> None:
    folder = tmp_path / f"loop-{link}"
    folder.mkdir()
    _person(7).save(folder / "real.png")
    if link == "self":
        (folder / "loop.jpg").symlink_to("loop.jpg")
    else:
        (folder / "a.jpg").symlink_to("b.jpg")
        (folder / "b.jpg").symlink_to("a.jpg")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..")  # a folder loop: never walked into
    out = tmp_path / "loop.h5"
    result = cli("extract", "--images", folder, "--weights", tiny_weights, "--output", out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "skipped" in result.output.lower()
    with FeatureStore.open(out) as s:
        assert list(s.paths) == ["real.png"]


def test_a_decompression_bomb_is_skipped_before_it_is_decoded(tiny_weights, tmp_path, monkeypatch) -> None:
    import mdpr.data.images

    monkeypatch.setattr(mdpr.data.images, "MAX_IMAGE_PIXELS", 100 * 100)
    folder = tmp_path / "bomb"
    folder.mkdir()
    _person(8).save(folder / "small.png")
    Image.new("RGB", (400, 300)).save(folder / "huge.png")
    out = tmp_path / "bomb.h5"
    result = cli("extract", "--images", folder, "--weights", tiny_weights, "--output", out)
    assert result.exit_code == 0, result.output
    assert "huge.png" in result.output and "pixels" in result.output
    with FeatureStore.open(out) as s:
        assert list(s.paths) == ["small.png"]


# ------------------------------------------------------------------------------------------- class 8: stale state


def test_refused_extract_leaves_no_journal_and_the_store_unchanged(tiny_weights, crops, store, tmp_path) -> None:
    from storekit import make_crops

    make_crops(crops / "new", 1, seed=9)
    before = store.read_bytes()
    try:
        one_sentence(cli("extract", "--images", crops, "--weights", tiny_weights, "--output", store), "--append")
    finally:
        for p in (crops / "new").rglob("*"):
            if p.is_file():
                p.unlink()
    assert store.read_bytes() == before
    assert not Path(str(store) + ".journal").exists()
    result = cli("query", _probe(crops), "--gallery", store, "--weights", tiny_weights)
    assert result.exit_code == 0 and "incomplete" not in result.output


def test_a_store_being_written_is_refused_in_one_sentence(tiny_weights, crops, store) -> None:
    from mdpr.store.journal import Journal

    journal = Journal(Path(str(store) + ".journal"))
    assert journal.lock()
    try:
        one_sentence(cli("extract", "--images", crops, "--weights", tiny_weights, "--output", store, "--append"),
                     "nother process")
    finally:
        journal.close(delete=True)


def test_forked_children_do_not_hold_a_journal(tmp_path) -> None:
    from mdpr.store.journal import Journal

    journal = Journal(tmp_path / "x.journal")
    assert journal.lock()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if journal.fd == -1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    journal.close(delete=True)
    assert not (tmp_path / "x.journal").exists()


def test_kill_9_with_loader_workers_then_the_same_command_at_once(tiny_weights, tmp_path) -> None:
    """Orphaned loader workers of a killed extract never hold its journal: the re-run starts at once and the
    store ends with every image exactly once."""
    import signal
    import subprocess
    import sys
    import time

    from storekit import make_crops

    images = tmp_path / "many"
    make_crops(images, 400, seed=4)
    out = tmp_path / "k.h5"
    journal = Path(str(out) + ".journal")
    args = ["extract", "--images", str(images), "--weights", str(tiny_weights), "--output", str(out), "--workers", "2",
            "--batch-size", "8", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "mdpr", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.stat().st_size > 4096):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "extract wrote no rows"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    result = cli(*args)
    assert result.exit_code == 0, result.output
    with FeatureStore.open(out) as store:
        assert len(store) == 400 and len(set(store.paths)) == 400
    assert not journal.exists()


def test_append_with_other_weights_is_refused_leaving_no_journal(tiny_weights, crops, store, tmp_path) -> None:
    from storekit import make_crops, tiny_checkpoint

    other = tiny_checkpoint(tmp_path / "other.pt", seed=5)
    extra = tmp_path / "extra"
    make_crops(extra, 2, seed=11)
    before = store.read_bytes()
    one_sentence(cli("extract", "--images", extra, "--weights", other, "--output", store, "--append"))
    assert store.read_bytes() == before and not Path(str(store) + ".journal").exists()
    result = cli("query", _probe(crops), "--gallery", store, "--weights", tiny_weights)
    assert result.exit_code == 0 and "incomplete" not in result.output


def test_a_refused_first_extract_leaves_nothing_behind(tiny_weights, tmp_path) -> None:
    empty = tmp_path / "no-images"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    out = tmp_path / "fresh.h5"
    one_sentence(cli("extract", "--images", empty, "--weights", tiny_weights, "--output", out), "No images")
    assert not out.exists() and not Path(str(out) + ".journal").exists()
