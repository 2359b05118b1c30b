"""Wall time until MNIST test accuracy >= 99.0%: behemoth's default recipe vs a faithful
re-implementation of the pytorch/examples MNIST script (bench/reference_mnist.py), both on the
same cores, both evaluated on the test set after every epoch. Target: behemoth >= 10x faster.

Run: .venv/bin/python bench/time_to_accuracy.py [--threads 2] [--skip-reference]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from behemoth.config import load_config  # noqa: E402
from behemoth.pipeline.config import resolve_config  # noqa: E402
from behemoth.training import BaseHook, evaluate, train  # noqa: E402
from behemoth.training.assembly import prepare  # noqa: E402

TARGET = 0.99


class TestEveryEpoch(BaseHook):
    """Evaluates on the test set after each epoch (timed, as in the reference) and stops at the target."""

    def __init__(self, data, eval_batch_size: int) -> None:
        self.data, self.eval_batch_size, self.history = data, eval_batch_size, []

    def on_train_start(self, ctx) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, ctx, metrics) -> None:
        acc = evaluate(
            ctx.model,
            self.data.test,
            self.data.spec,
            self.eval_batch_size,
            ctx.cfg.precision,
            ctx.device,
            ctx.cfg.channels_last,
        )["acc"]
        self.history.append(
            {"epoch": ctx.epoch, "seconds": time.perf_counter() - self.start, "test_acc": acc}
        )
        print(
            f"behemoth epoch {ctx.epoch}: {self.history[-1]['seconds']:.1f}s test acc {acc:.4f}", flush=True
        )
        if acc >= TARGET:
            ctx.stop_reason = "target reached"


def run_behemoth(recipe: str, overrides: list[str]) -> dict:
    cfg = load_config(resolve_config(recipe), overrides)
    setup = time.perf_counter()
    data, model = prepare(cfg)
    setup = time.perf_counter() - setup
    hook = TestEveryEpoch(data, cfg.data.eval_batch_size)
    cfg.train.epochs = max(cfg.train.epochs, 1)
    train(model, data, cfg.train, cfg.data.batch_size, cfg.data.eval_batch_size, hooks=[hook])
    reached = next((h for h in hook.history if h["test_acc"] >= TARGET), None)
    return {
        "seconds_to_target": reached["seconds"] if reached else None,
        "setup_seconds": setup,
        "history": hook.history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", default="mnist-cnn")
    parser.add_argument("--skip-reference", action="store_true", help="time behemoth only")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for the behemoth recipe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours = run_behemoth(args.recipe, args.overrides)
    print(
        f"behemoth ({args.recipe}): {ours['seconds_to_target']}s to {TARGET:.1%} "
        f"(+{ours['setup_seconds']:.1f}s data loading and model build)"
    )
    if args.skip_reference:
        return
    from reference_mnist import train_reference

    ref = train_reference(target_acc=TARGET, threads=args.threads)
    print(f"reference (pytorch/examples mnist): {ref['seconds_to_target']}s to {TARGET:.1%}")
    if ours["seconds_to_target"] and ref["seconds_to_target"]:
        ratio = ref["seconds_to_target"] / ours["seconds_to_target"]
        print(f"speed-up reference / behemoth = {ratio:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
