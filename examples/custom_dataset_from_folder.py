"""Turn a folder of person crops into an mdpr dataset, then train and evaluate on it.

Expected layout (see docs/datasets.md, "folder"): ``ROOT/{train,query,gallery}/<identity>/<image>``, with an
optional camera in each file name (``..._c2_...`` or ``cam2-...``). ``--make-sample`` first writes such a folder
from the synthetic demo generator so the script can be tried without data of your own.

    python examples/custom_dataset_from_folder.py my-crops --make-sample
    python examples/custom_dataset_from_folder.py my-crops --name shop-cams --train --epochs 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from mdpr.data.images import find_images, parse_market_name
from mdpr.data.prepare import prepare_dataset


def make_sample(root: Path, num_ids: int = 16) -> None:
    """Write a small folder dataset: demo crops regrouped as ROOT/<split>/<identity>/<camera>-<n>.jpg."""
    from mdpr.data.synthetic import generate_demo

    with tempfile.TemporaryDirectory() as tmp:
        generate_demo(tmp, num_ids=num_ids, images_per_id=6, size=(96, 48), seed=1)
        market_split = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}
        for market_folder, split in market_split.items():
            for i, path in enumerate(find_images(Path(tmp) / market_folder)):
                pid, camid = parse_market_name(path)
                if pid <= 0:  # keep the example simple: no junk / distractors
                    continue
                target = root / split / f"person{pid:03d}" / f"cam{camid + 1}-{i:04d}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="ROOT/{train,query,gallery}/<identity>/<image>")
    parser.add_argument("--name", default="my-crops", help="name to register the dataset under")
    parser.add_argument("--make-sample", action="store_true", help="first write a sample folder dataset at ROOT")
    parser.add_argument("--train", action="store_true", help="then train the demo-cpu recipe on it")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    if args.make_sample:
        make_sample(args.root)
    result = prepare_dataset("folder", args.root, name=args.name)
    stats = result.manifest.stats()
    print(f"registered '{args.name}': {stats['train_ids']} train ids / {stats['train_images']} images, "
          f"{stats['query_images']} query, {stats['gallery_images']} gallery, {stats['cameras']} cameras")

    if args.train:
        from mdpr.workflows.train import TrainOptions, train_run

        result = train_run(TrainOptions(dataset=args.name, recipe="demo-cpu", output=Path("runs") / args.name,
                                        epochs=args.epochs, device="cpu",
                                        overrides=["input.size_train=[96,48]", "input.size_test=[96,48]"]))
        assert result is not None  # one process: always the main one
        metrics = result.summary.get("final_metrics", {})
        print("final metrics:", {k: metrics[k] for k in ("mAP", "rank1") if k in metrics})
        print(f"evaluate again with: mdpr evaluate --dataset {args.name} --weights {result.run_dir / 'model.pt'}")


if __name__ == "__main__":
    main()
