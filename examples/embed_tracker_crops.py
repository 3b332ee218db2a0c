"""Embed person crops coming from a tracker and look them up in a gallery feature store.

A tracker hands over frames and boxes; crops are numpy arrays (H, W, 3) uint8 in RGB order (convert OpenCV's
BGR with ``frame[:, :, ::-1]``). ``mdpr.FeatureExtractor`` embeds them with exactly the preprocessing of
`mdpr extract`, and ``mdpr.search.search`` ranks the gallery store in chunks (bounded memory).

    mdpr demo                                   # or any trained checkpoint and store
    python examples/embed_tracker_crops.py --weights mdpr-demo/run/model.pt --gallery mdpr-demo/gallery.h5 \
        --frame mdpr-demo/data/query/0001_c3s5_001556_01.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

import mdpr
from mdpr.search import search
from mdpr.store import FeatureStore

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels


def crops_from_frame(frame: np.ndarray, boxes: List[Box]) -> List[np.ndarray]:
    """Cut the tracker's boxes out of an RGB frame (H, W, 3) uint8."""
    return [frame[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="checkpoint that wrote the gallery store")
    parser.add_argument("--gallery", required=True, help="feature store written by `mdpr extract`")
    parser.add_argument("--frame", required=True, help="an image standing in for a video frame")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args()

    frame = np.asarray(Image.open(args.frame).convert("RGB"))
    h, w = frame.shape[:2]
    # two "detections": the whole frame and its upper two thirds (a partially occluded person)
    boxes: List[Box] = [(0, 0, w, h), (0, 0, w, 2 * h // 3)]

    extractor = mdpr.FeatureExtractor(args.weights, device="auto", normalize=True)
    features = extractor(crops_from_frame(frame, boxes))  # (len(boxes), D) float32
    print(f"embedded {len(boxes)} crops into {features.shape[1]}-d features")

    with FeatureStore.open(args.gallery) as store:
        if store.fingerprint != extractor.fingerprint:
            raise SystemExit(f"{args.gallery} was written by other weights than {args.weights}")
        result = search(store, features, top_k=args.top_k)
        for box, rows, dists in zip(boxes, result.indices, result.distances):
            print(f"box {box}:")
            for rank, (row, dist) in enumerate(zip(rows, dists), 1):
                path = store.paths_at([int(row)])[0]
                print(f"  {rank}. {Path(path).name}  pid {int(store.pids[row])}  distance {float(dist):.4f}")


if __name__ == "__main__":
    main()
