"""MDPR-R50 vs torchvision ResNet-50 on the CPU: eval throughput, one training step, FLOP ratio.

Both models see the same input (384x192, batch 16 by default) in the same run; their measurements are
interleaved (MDPR, ResNet-50, MDPR, ...) so that load from other processes hits both alike, and the median is
reported. The goal: MDPR's throughput relative to ResNet-50 is at least the inverse of its FLOP ratio, i.e.
``efficiency = (throughput ratio) x (FLOP ratio) >= 1`` -- the implementation adds no overhead beyond its
arithmetic. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products; elementwise work is not counted, for either model).

    python benchmarks/model_speed.py                       # paper setting, batch 16, 384x192
    python benchmarks/model_speed.py --repeats 5 --json    # more repeats, machine-readable output
    python benchmarks/model_speed.py --depth 18 --embedding-dim 64 --batch 4 --no-train   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from typing import Callable

import torch
import torchvision
from timing import interleaved
from torch.utils.flop_counter import FlopCounterMode

from mdpr.config import LossConfig, ModelConfig
from mdpr.losses import MDPRLoss
from mdpr.model import build_model


def count_flops(fn: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=50, help="MDPR backbone depth (ResNet-50 stays the reference)")
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=702)
    parser.add_argument("--repeats", type=int, default=3, help="timed eval rounds")
    parser.add_argument("--train-repeats", type=int, default=2, help="timed training-step rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--contiguous", action="store_true", help="keep NCHW memory format instead of channels-last")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    memory_format = torch.contiguous_format if args.contiguous else torch.channels_last

    mdpr = build_model(ModelConfig(depth=args.depth, embedding_dim=args.embedding_dim, num_classes=args.num_classes))
    resnet = torchvision.models.resnet50(num_classes=args.num_classes)
    mdpr, resnet = mdpr.to(memory_format=memory_format), resnet.to(memory_format=memory_format)
    images = (torch.rand(args.batch, 3, args.height, args.width) * 255).contiguous(memory_format=memory_format)
    # torchvision expects normalised input; MDPR normalises itself (included in its time, a negligible cost)
    normalised = ((images - 118.0) / 58.0).contiguous(memory_format=memory_format)
    targets = torch.arange(args.batch) // 2 % args.num_classes

    def mdpr_eval() -> None:
        with torch.inference_mode():
            mdpr(images)

    def resnet_eval() -> None:
        with torch.inference_mode():
            resnet(normalised)

    mdpr.eval()
    resnet.eval()
    flops = {"mdpr_eval": count_flops(mdpr_eval), "resnet50_eval": count_flops(resnet_eval)}
    eval_times = interleaved({"mdpr": mdpr_eval, "resnet50": resnet_eval}, args.repeats)

    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "batch": args.batch, "size": [args.height, args.width], "memory_format": str(memory_format).split(".")[-1],
        "mdpr": f"ResNet-{args.depth}-IBN, E={args.embedding_dim}, {sum(p.numel() for p in mdpr.parameters()) / 1e6:.1f}M params",
        "resnet50_params_M": round(sum(p.numel() for p in resnet.parameters()) / 1e6, 1),
        "eval_gflops_per_image": {"mdpr": flops["mdpr_eval"] / args.batch / 1e9,
                                  "resnet50": flops["resnet50_eval"] / args.batch / 1e9},
        "eval_images_per_s": {name: args.batch / statistics.median(t) for name, t in eval_times.items()},
    }
    flop_ratio = flops["mdpr_eval"] / flops["resnet50_eval"]
    throughput_ratio = results["eval_images_per_s"]["mdpr"] / results["eval_images_per_s"]["resnet50"]
    results["eval_flop_ratio"] = flop_ratio
    results["eval_throughput_ratio"] = throughput_ratio
    results["eval_efficiency"] = throughput_ratio * flop_ratio

    if not args.no_train:
        mdpr.train()
        resnet.train()
        criterion = MDPRLoss(LossConfig())
        optimizers = {"mdpr": torch.optim.Adam([p for p in mdpr.parameters() if p.requires_grad], lr=1e-5),
                      "resnet50": torch.optim.Adam(resnet.parameters(), lr=1e-5)}

        def mdpr_step() -> None:
            optimizers["mdpr"].zero_grad(set_to_none=True)
            sum(criterion(mdpr(images), targets).values()).backward()
            optimizers["mdpr"].step()

        def resnet_step() -> None:
            optimizers["resnet50"].zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(resnet(normalised), targets).backward()
            optimizers["resnet50"].step()


        # counting the FLOPs runs one real step of each model, which doubles as the warm-up
        train_flops = {"mdpr": count_flops(mdpr_step), "resnet50": count_flops(resnet_step)}
        train_times = interleaved({"mdpr": mdpr_step, "resnet50": resnet_step}, args.train_repeats, warmup=False)
        results["train_step_s"] = {name: statistics.median(t) for name, t in train_times.items()}
        results["train_gflops_per_step"] = {k: v / 1e9 for k, v in train_flops.items()}
        train_flop_ratio = train_flops["mdpr"] / train_flops["resnet50"]
        time_ratio = results["train_step_s"]["mdpr"] / results["train_step_s"]["resnet50"]
        results["train_flop_ratio"] = train_flop_ratio
        results["train_time_ratio"] = time_ratio
        results["train_efficiency"] = train_flop_ratio / time_ratio

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"# MDPR vs ResNet-50 -- {results['machine']}")
    print(f"batch {args.batch}, {args.height}x{args.width}, {results['memory_format']}; MDPR: {results['mdpr']}; "
          f"ResNet-50: {results['resnet50_params_M']}M params; median of {args.repeats} (eval) / "
          f"{args.train_repeats} (train) interleaved runs")
    print(f"eval   GFLOPs/image   MDPR {results['eval_gflops_per_image']['mdpr']:7.2f}   "
          f"ResNet-50 {results['eval_gflops_per_image']['resnet50']:7.2f}   ratio {flop_ratio:.2f}")
    print(f"eval   images/s       MDPR {results['eval_images_per_s']['mdpr']:7.2f}   "
          f"ResNet-50 {results['eval_images_per_s']['resnet50']:7.2f}   ratio {throughput_ratio:.3f} "
          f"(goal >= 1/FLOP ratio = {1 / flop_ratio:.3f}; efficiency {results['eval_efficiency']:.2f})")
    if "train_step_s" in results:
        print(f"train  GFLOPs/step    MDPR {results['train_gflops_per_step']['mdpr']:7.1f}   "
              f"ResNet-50 {results['train_gflops_per_step']['resnet50']:7.1f}   ratio {results['train_flop_ratio']:.2f}")
        print(f"train  s/step         MDPR {results['train_step_s']['mdpr']:7.2f}   "
              f"ResNet-50 {results['train_step_s']['resnet50']:7.2f}   ratio {results['train_time_ratio']:.2f} "
              f"(efficiency {results['train_efficiency']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
