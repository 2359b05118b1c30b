"""behemoth's train step vs a hand-written PyTorch loop: same model, data, batch, optimizer, precision.

Both run the same number of optimizer steps on MNIST, interleaved, several repeats; the ratio of
medians is printed (target <= 1.03). Both sides train in the same precision (--precision, default bf16);
nothing is evaluated. Writes bench/results/loop_overhead.json (every repeat's seconds).
Run: .venv/bin/python bench/loop_overhead.py [--steps 200 --repeats 5]
"""

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.config import DataConfig, TrainConfig  # noqa: E402
from behemoth.data import load_data  # noqa: E402
from behemoth.models import build_model  # noqa: E402
from behemoth.training import train  # noqa: E402
from behemoth.training.batching import epoch_order  # noqa: E402
from bench.results import spread, write_result  # noqa: E402

MODEL = {"channels": [16, 32], "hidden": 128, "norm": "batch"}


def fresh_model(spec):
    torch.manual_seed(0)
    return build_model("cnn", MODEL, spec).to(memory_format=torch.channels_last)


def hand_written(model, x_all, y_all, steps: int, batch: int, precision: str) -> float:
    """The loop a PyTorch user would write: index a batch, forward, loss, backward, step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = epoch_order(len(x_all), 0, 0)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch : (step + 1) * batch]
        x = x_all[idx].contiguous(memory_format=torch.channels_last)
        y = y_all[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()
    return time.perf_counter() - start


def behemoth_loop(model, data, steps: int, batch: int, precision: str) -> float:
    cfg = TrainConfig(
        epochs=1,
        max_steps=steps,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        precision=precision,
        channels_last=True,
        log_every=10**9,
    )
    result = train(model, data, cfg, batch_size=batch)
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    data = load_data(DataConfig(name="mnist", val_fraction=0.0))
    data = replace(data, val=None, test=None)  # time the training steps only
    x_all, y_all = data.train.x, data.train.y
    hand_written(fresh_model(data.spec), x_all, y_all, 20, args.batch, args.precision)  # warm-up both
    behemoth_loop(fresh_model(data.spec), data, 20, args.batch, args.precision)
    hand, ours = [], []
    for repeat in range(args.repeats):
        hand.append(
            hand_written(fresh_model(data.spec), x_all, y_all, args.steps, args.batch, args.precision)
        )
        ours.append(behemoth_loop(fresh_model(data.spec), data, args.steps, args.batch, args.precision))
        print(f"repeat {repeat + 1}: hand-written {hand[-1]:.3f}s  behemoth {ours[-1]:.3f}s", flush=True)
    ratio = statistics.median(ours) / statistics.median(hand)
    print(f"\n{args.steps} steps, batch {args.batch}, {args.precision}, {torch.get_num_threads()} threads")
    print(f"median hand-written {statistics.median(hand):.3f}s, behemoth {statistics.median(ours):.3f}s")
    print(f"ratio behemoth / hand-written = {ratio:.3f}  (target <= 1.03)")
    write_result(
        "loop_overhead",
        {"ratio": ratio, "hand_seconds": spread(hand), "behemoth_seconds": spread(ours), "steps": args.steps},
        {
            "training_precision": f"{args.precision} (both sides)",
            "evaluation_precision": "n/a (time only)",
            "repeats": f"{args.repeats} interleaved repeats, ratio of medians",
            "deviations": [],
        },
        reduced=None
        if (args.steps, args.repeats) == (200, 5)
        else f"{args.steps} steps, {args.repeats} repeats",
    )


if __name__ == "__main__":
    main()
