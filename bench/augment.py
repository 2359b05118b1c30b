"""Batched augmentation throughput (images/s) on MNIST: behemoth vs kornia vs a per-sample Python loop.

The same ops with the same ranges, probabilities and per-sample random parameters:
  geometry: horizontal flip (p 0.5) + rotation +-15 deg, scale 0.9-1.1, translation +-10%, shear +-10 deg
            (p 1) + Gaussian blur sigma 0.1-1.5, 11x11 (p 0.5)
  all:      geometry + brightness +-0.2, contrast 0.8-1.2 (p 0.5 each) + erasing 2-25% (p 0.5)
            + mixup and cutmix (p 0.5 each; not in the per-sample loop, which has no batch to mix with)
Each round times every implementation on the same batches, one after the other (interleaved, so all three
see the same machine load); the medians over rounds are compared (target: behemoth >= 3x kornia).

Run: .venv/bin/python bench/augment.py [--ops geometry|all] [--batch 256] [--rounds 15] [--threads N]
Writes bench/results/augment-<ops>.json (every round's images/s).
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.config import DataConfig  # noqa: E402
from behemoth.config.data import AugmentConfig  # noqa: E402
from behemoth.data import load_data  # noqa: E402
from behemoth.data.augment import Augment  # noqa: E402
from bench.results import spread, write_result  # noqa: E402

GEOMETRY = dict(
    hflip={"p": 0.5},
    rotate={"p": 1.0, "degrees": 15},
    scale={"p": 1.0, "range": [0.9, 1.1]},
    translate={"p": 1.0, "fraction": 0.1},
    shear={"p": 1.0, "degrees": 10},
    blur={"p": 0.5, "sigma": [0.1, 1.5], "kernel": 11},
)
EXTRA = dict(
    brightness={"p": 0.5, "range": 0.2},
    contrast={"p": 0.5, "range": [0.8, 1.2]},
    erase={"p": 0.5, "area": [0.02, 0.25], "ratio": [0.3, 3.3]},
    mixup={"p": 0.5, "alpha": 1.0},
    cutmix={"p": 0.5, "alpha": 1.0},
)


def kornia_pipeline(ops: str):
    import kornia.augmentation as K

    geometry = [
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=(-10, 10, -10, 10), p=1.0),
        K.RandomGaussianBlur((11, 11), sigma=(0.1, 1.5), p=0.5),
    ]
    if ops == "geometry":
        sequence = torch.nn.Sequential(*geometry)
        return lambda x, y: (sequence(x), y)
    photometric = torch.nn.Sequential(
        *geometry,
        K.RandomBrightness((0.8, 1.2), p=0.5),
        K.RandomContrast((0.8, 1.2), p=0.5),
        K.RandomErasing(scale=(0.02, 0.25), ratio=(0.3, 3.3), p=0.5),
    )
    mix = K.RandomMixUpV2(p=0.5, data_keys=["input", "class"])
    cut = K.RandomCutMixV2(p=0.5, data_keys=["input", "class"])

    def run(x, y):
        x, mixed = mix(photometric(x), y)
        return cut(x, y)  # kornia returns (x, label pairs + lambdas) rather than soft targets

    return run


def per_sample_loop(augment: Augment):
    """What a Dataset.__getitem__ transform does: one image at a time, its own random parameters."""

    def run(x, y, generator):
        out = [
            augment.apply(x[i : i + 1], y[i : i + 1], augment.draw(1, tuple(x.shape[1:]), generator))[0]
            for i in range(len(x))
        ]
        return torch.cat(out), y

    return run


def timed(fn, batches) -> float:
    """Images per second over `batches`."""
    start = time.perf_counter()
    for x, y in batches:
        fn(x, y)
    return sum(len(x) for x, _ in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", choices=["geometry", "all"], default="geometry")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10, help="batches per implementation per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(DataConfig(name="mnist", val_fraction=0.0, train_limit=args.batch * args.batches))
    mean, std = data.meta["mean"][0], data.meta["std"][0]
    images = data.train.x * std + mean  # back to [0, 1] pixels: kornia's photometric ops expect that range
    batches = list(zip(images.split(args.batch), data.train.y.split(args.batch)))
    ops = dict(GEOMETRY, **(EXTRA if args.ops == "all" else {}))
    ours = Augment(AugmentConfig.model_validate(ops), torch.zeros(1), torch.ones(1), num_classes=10)
    loop_ops = {k: v for k, v in ops.items() if k not in ("mixup", "cutmix")}
    loop = per_sample_loop(Augment(AugmentConfig.model_validate(loop_ops), torch.zeros(1), torch.ones(1), 10))
    generator = torch.Generator().manual_seed(0)
    runners = {
        "behemoth": lambda x, y: ours(x, y, generator),
        "kornia": kornia_pipeline(args.ops),
        "per-sample loop": lambda x, y: loop(x, y, generator),
    }
    for fn in runners.values():  # warm-up
        timed(fn, batches[:2])
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, fn in runners.items():
            speeds[name].append(timed(fn, batches[:1] if name == "per-sample loop" else batches))
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    print(
        f"ops: {args.ops} ({', '.join(ops)}); batch {args.batch} of 1x28x28 MNIST; "
        f"{torch.get_num_threads()} torch threads; {args.rounds} interleaved rounds, medians"
    )
    for name, value in medians.items():
        span = f"{min(speeds[name]):,.0f}-{max(speeds[name]):,.0f}"
        print(f"  {name:16s} {value:>10,.0f} images/s   (rounds: {span})")
    print(f"behemoth / kornia          = {medians['behemoth'] / medians['kornia']:.2f}x  (target >= 3)")
    print(f"behemoth / per-sample loop = {medians['behemoth'] / medians['per-sample loop']:.1f}x")
    write_result(
        f"augment-{args.ops}",
        {
            "behemoth": medians["behemoth"],
            "kornia": medians["kornia"],
            "ratio": medians["behemoth"] / medians["kornia"],
            "loop_ratio": medians["behemoth"] / medians["per-sample loop"],
            "images_per_second": {name: spread(values) for name, values in speeds.items()},
        },
        {
            "training_precision": "n/a (float32 images)",
            "evaluation_precision": "n/a",
            "repeats": f"{args.rounds} interleaved rounds, medians",
            "deviations": ["kornia's mixup/cutmix return label pairs, ours soft targets"]
            if args.ops == "all"
            else [],
        },
        reduced=None if args.rounds >= 15 else f"{args.rounds} rounds",
    )
    print(
        f"reproduce: .venv/bin/python bench/augment.py --ops {args.ops} --batch {args.batch} "
        f"--rounds {args.rounds}" + (f" --threads {args.threads}" if args.threads else "")
    )


if __name__ == "__main__":
    main()
