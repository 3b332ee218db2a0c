"""Reproduce the paper's numbers from the authors' released checkpoint, through the Python API.

The authors released fast-reid checkpoints (``DukeMTMC-reID.pth``, ``Market1501.pth``); ``mdpr.model.load_model``
reads them as they are and infers the architecture (depth, IBN, embedding size, parts, attention maps) from the
keys. This script does what ``mdpr evaluate --dataset dukemtmc --weights DukeMTMC-reID.pth [--rerank]`` does,
step by step, so each piece can be reused:

    mdpr prepare duke ~/datasets/DukeMTMC-reID
    python examples/evaluate_official_checkpoint.py DukeMTMC-reID.pth --dataset dukemtmc
    python examples/evaluate_official_checkpoint.py DukeMTMC-reID.pth --dataset dukemtmc --rerank
"""

from __future__ import annotations

import argparse

import numpy as np

from mdpr.data import load_dataset
from mdpr.evaluation import compute_distance, evaluate, re_rank
from mdpr.inference import FeatureExtractor
from mdpr.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="official MDPR / fast-reid checkpoint, or one written by `mdpr train`")
    parser.add_argument("--dataset", required=True, help="a dataset registered with `mdpr prepare`")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking as the official evaluator")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    model, config = load_model(args.weights)
    m = config.model
    print(f"ResNet-{m.depth}{'-IBN' if m.ibn else ''}, {m.num_parts} parts, {m.num_attention} attention maps, "
          f"{model.feature_dim}-d feature, input {config.input.size_test[0]}x{config.input.size_test[1]}")

    manifest = load_dataset(args.dataset)
    extractor = FeatureExtractor.from_model(model, config, device=args.device)
    sides = {}
    for split, records in (("query", manifest.query), ("gallery", manifest.gallery)):
        features, ok, failed = extractor.extract_paths([manifest.image_path(r) for r in records])
        if failed:
            print(f"{len(failed)} unreadable {split} images skipped")
        kept = [records[i] for i in ok]
        sides[split] = (features, np.array([r.pid for r in kept]), np.array([r.camid for r in kept]))
    (qf, q_pids, q_cams), (gf, g_pids, g_cams) = sides["query"], sides["gallery"]

    # the paper's protocol: cosine distance on L2-normalised features (re-ranking: fast-reid's jaccard variant)
    distmat = re_rank(qf, gf) if args.rerank else compute_distance(qf, gf, "cosine")
    result = evaluate(distmat, q_pids, g_pids, q_cams, g_cams)
    cmc = result["cmc"]

    def rank(k: int) -> float:  # a gallery may be shorter than k
        return float(cmc[min(k, len(cmc)) - 1])

    print(f"{manifest.name}: Rank-1 {rank(1):.4f}  Rank-5 {rank(5):.4f}  Rank-10 {rank(10):.4f}  "
          f"mAP {result['mAP']:.4f}  mINP {result['mINP']:.4f}  ({result['num_valid']} queries)")


if __name__ == "__main__":
    main()
