"""``FeatureExtractor.embed_boxes``: crops from a full frame for trackers, never a crash on bad boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from storekit import TINY_DIM, tiny_checkpoint

from mdpr.errors import MdprError


@pytest.fixture(scope="module")
def extractor(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None):
    from mdpr import FeatureExtractor

    return FeatureExtractor(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt"), device="cpu")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)


def test_boxes_in_order_normalised_and_equal_to_crops(extractor, frame) -> None:
    boxes = np.array([[10, 5, 50, 100], [100.4, 20.6, 150.2, 110.9], [0, 0, 200, 120]])
    feats = extractor.embed_boxes(frame, boxes)
    assert feats.shape == (3, TINY_DIM) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    # box 2 rounds to x 100..150, y 21..111; crops are BGR -> RGB before the model sees them
    crops = [frame[5:100, 10:50], frame[21:111, 100:150], frame]
    ref = extractor([c[:, :, ::-1].copy() for c in crops])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(feats, ref, atol=1e-5)
    # the same frame in RGB order with bgr=False gives the same features
    np.testing.assert_allclose(extractor.embed_boxes(frame[:, :, ::-1].copy(), boxes, bgr=False), feats, atol=1e-5)


def test_boxes_clipped_and_degenerate_ones_reported(extractor, frame) -> None:
    boxes = [
        [-30, -30, 40, 60],  # partly outside: clipped to 0..40, 0..60
        [250, 10, 300, 50],  # entirely right of the frame
        [30, 30, 30, 80],  # zero width
        [60, 80, 20, 10],  # negative size
        [np.nan, 0, 10, 10],  # not finite
        [150, 100, 400, 400],  # clipped to the frame's corner
    ]
    feats, valid = extractor.embed_boxes(frame, boxes, return_valid=True)
    assert valid.tolist() == [True, False, False, False, False, True]
    assert np.all(feats[~valid] == 0)
    clipped = extractor.embed_boxes(frame, [[0, 0, 40, 60], [150, 100, 200, 120]])
    np.testing.assert_allclose(feats[valid], clipped, atol=1e-6)
    detections = np.array([[-30, -30, 40, 60, 0.9, 0], [150, 100, 400, 400, 0.5, 0]])  # score, class ignored
    np.testing.assert_allclose(extractor.embed_boxes(frame, detections), clipped, atol=1e-6)


def test_no_boxes(extractor, frame) -> None:
    assert extractor.embed_boxes(frame, np.zeros((0, 4))).shape == (0, TINY_DIM)
    feats, valid = extractor.embed_boxes(frame, [], return_valid=True)
    assert feats.shape == (0, TINY_DIM) and valid.shape == (0,)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((20, 20, 3), np.float32), "dtype float32"),
    (np.zeros((20, 20), np.uint8), "shape (20, 20)"),
    (np.zeros((20, 20, 4), np.uint8), "shape (20, 20, 4)"),
    ([[0, 0, 0]], "is a list"),
])
def test_bad_frames_refused_in_one_sentence(extractor, bad, message) -> None:
    with pytest.raises(MdprError, match="HxWx3 uint8") as info:
        extractor.embed_boxes(bad, [[0, 0, 5, 5]])
    assert message in str(info.value)


@pytest.mark.parametrize("boxes", [[[0, 0, 5]], np.zeros((2, 2, 4)), [["a", "b", "c", "d"]]])
def test_bad_boxes_refused(extractor, frame, boxes) -> None:
    with pytest.raises(MdprError, match="boxes_xyxy"):
        extractor.embed_boxes(frame, boxes)


def test_tracking_loop_of_the_python_api_doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             frame: np.ndarray) -> None:
    """docs/python-api.md's tracker loop runs as written: the same person in two frames keeps one track."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "python-api.md").read_text()
    section = text.split("## Tracking", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    tiny_checkpoint(tmp_path / "runs" / "tracker" / "model.pt")
    monkeypatch.chdir(tmp_path)
    person = np.random.default_rng(1).integers(0, 256, (60, 30, 3), dtype=np.uint8)
    frames = []
    for x in (10, 60, 120):  # one person walking right
        f = np.zeros_like(frame)
        f[20:80, x : x + 30] = person
        frames.append(f)
    boxes = {id(f): [[x, 20, x + 30, 80], [500, 500, 520, 540]] for f, x in zip(frames, (10, 60, 120))}
    namespace = {"frames": frames, "detect": lambda f: np.array(boxes[id(f)], dtype=np.float32)}
    exec(compile(code, "docs/python-api.md", "exec"), namespace)
    tracks = namespace["tracks"]
    assert len(tracks) == 1  # the box outside the frame is skipped, the person keeps one id
    assert all(abs(np.linalg.norm(t) - 1) < 1e-5 for t in tracks.values())
