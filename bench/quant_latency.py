"""int8 vs fp32 latency on this CPU (batch 256 and 1), MLP (LeNet-300-100) and LeNet (Caffe 20-50-500),
plus structurally pruned vs dense. Target: int8 >= 2x faster than fp32 at batch 256 with <= 0.3 points
accuracy drop.

int8 = post-training static quantization on torch.ao's quantized modules, x86 engine (fbgemm / oneDNN int8
GEMM and conv, VNNI here), calibrated on 1024 training images; also dynamic int8 (weights int8, activations
quantized per batch). fp32 = the same model in eager PyTorch (MKL / oneDNN), inference mode. Every model is
timed interleaved with the others in one process (medians), so machine noise hits all alike.

Protocol (issue #19): each model is trained once per --seeds (default 0,1,2); speed-ups and accuracy drops are
the medians over seeds with the range. fp32 and int8 are both scored on the test set once, at the end; the
int8 calibration uses 1024 training images. Writes bench/results/quant_latency.json.

Run: .venv/bin/python bench/quant_latency.py [--quick] [--epochs N] [--repeats N] [--threads 2] [--reuse]
     [--seeds 0,1,2] [--mlp-run runs/x --lenet-run runs/y]  (trained runs instead of training here)
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.compression import quantize, structured  # noqa: E402
from behemoth.compression.measure import accuracy, count_parameters, latencies  # noqa: E402
from behemoth.compression.pipeline import calibration_batches, retrain  # noqa: E402
from behemoth.config import load_config  # noqa: E402
from behemoth.data import load_data  # noqa: E402
from behemoth.pipeline import run_training
from behemoth.pipeline.config import resolve_config  # noqa: E402
from behemoth.runs import open_run  # noqa: E402
from behemoth.training.assembly import load_trained_model  # noqa: E402
from bench.results import spread, write_result  # noqa: E402

MODELS = {"LeNet-300-100 (mlp)": "mnist-mlp", "LeNet Caffe 20-50-500 (lenet_caffe)": "lenet-caffe"}


def trained(recipe: str, args, seed: int) -> tuple[Path, object]:
    """Train the recipe (or reuse an earlier bench run of it, or a run given on the command line)."""
    given = args.mlp_run if recipe == "mnist-mlp" else args.lenet_run
    if given:
        return open_run(given)
    name = f"bench-quant-{recipe}-seed{seed}" + ("-quick" if args.quick else "")
    overrides = [
        f"name={name}",
        f"runs_dir={args.runs_dir!r}",
        f"train.epochs={args.epochs}",
        f"train.seed={seed}",
    ]
    if args.quick:
        overrides += ["data.train_limit=6000", "train.warmup=0"]
    cfg = load_config(resolve_config(recipe), overrides)
    run_dir = Path(args.runs_dir) / name
    if not (args.reuse and (run_dir / "model.safetensors").is_file()):
        started = time.perf_counter()
        run_training(cfg, overwrite=True, progress=False)
        print(
            f"  trained {recipe} for {args.epochs} epochs in {time.perf_counter() - started:.0f}s", flush=True
        )
    return run_dir, cfg


def bench_model(label: str, recipe: str, args, seed: int) -> dict:
    print(f"{label}, seed {seed}:", flush=True)
    run_dir, cfg = trained(recipe, args, seed)
    data = load_data(cfg.data)
    fp32 = load_trained_model(run_dir, cfg)
    static = quantize.quantize_static(fp32, calibration_batches(data.train, 1024), "x86", per_channel=True)
    dynamic = quantize.quantize_dynamic(fp32, "x86")
    pruned = load_trained_model(run_dir, cfg)
    changes = structured.prune_units(pruned, args.structured, data.test.x[:2])
    if args.retrain_epochs:
        retrain(
            pruned,
            data,
            cfg.model_copy(update={"compress": cfg.compress.model_copy(update={"retrain_lr_scale": 0.1})}),
            args.retrain_epochs,
        )
    models = {
        "fp32": fp32,
        "int8 static": static,
        "int8 dynamic": dynamic,
        f"structured {args.structured:.0%} fp32": pruned,
    }
    timing = latencies(models, data.test.x[:256], (1, 256), args.repeats)
    rows = {}
    for name, model in models.items():
        acc = accuracy(model, data.test, data.spec)["acc"]
        rows[name] = {
            "acc": acc,
            "b1": timing[name][1],
            "b256": timing[name][256],
            "params": count_parameters(model),
        }
    rows["changes"] = changes
    return rows


def print_rows(label: str, rows: dict, args, seed: int) -> tuple[float, float]:
    """One seed's table; returns (int8 static speed-up at batch 256, accuracy drop in points)."""
    base = rows["fp32"]
    print(f"\n{label}, seed {seed}  (median ms over {args.repeats} interleaved rounds)")
    print(
        f"{'model':<26}{'params':>10}{'test acc':>10}{'Δ points':>10}{'ms b=1':>9}{'ms b=256':>10}"
        f"{'speed-up b=256':>16}"
    )
    for name, row in rows.items():
        if name == "changes":
            continue
        print(
            f"{name:<26}{row['params']:>10,}{row['acc']:>10.4f}{100 * (row['acc'] - base['acc']):>+10.2f}"
            f"{row['b1']:>9.3f}{row['b256']:>10.3f}{base['b256'] / row['b256']:>15.2f}x"
        )
    print(
        "structured pruning kept units: "
        + ", ".join(f"{k} {a}->{b}" for k, (a, b) in rows["changes"].items())
    )
    static = rows["int8 static"]
    return base["b256"] / static["b256"], 100 * (base["acc"] - static["acc"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="6000 training images, 1 epoch, 10 repeats")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 4; quick 1)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per model (default 50; quick 10)"
    )
    parser.add_argument("--structured", type=float, default=0.5, help="fraction of units removed")
    parser.add_argument(
        "--retrain-epochs", type=int, default=None, help="after structured pruning (default 1)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2", help="one trained model per seed")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--reuse", action="store_true", help="reuse trained bench runs if present")
    parser.add_argument("--mlp-run", help="a trained LeNet-300-100 run to use instead of training one")
    parser.add_argument("--lenet-run", help="a trained lenet_caffe run to use instead of training one")
    args = parser.parse_args()
    args.epochs = args.epochs or (1 if args.quick else 4)
    args.repeats = args.repeats or (10 if args.quick else 50)
    args.retrain_epochs = 1 if args.retrain_epochs is None else args.retrain_epochs
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, quantized engine x86 (fbgemm + oneDNN), {args.threads} threads")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    verdicts, figures = [], {}
    for (label, recipe), key in zip(MODELS.items(), ("mlp", "lenet")):
        speedups, drops = [], []
        for seed in seeds:
            rows = bench_model(label, recipe, args, seed)
            speedup, drop = print_rows(label, rows, args, seed)
            speedups.append(speedup)
            drops.append(drop)
        ok = statistics.median(speedups) >= 2.0 and statistics.median(drops) <= 0.3
        verdicts.append(ok)
        print(
            f"{label}: int8 static vs fp32 at batch 256, medians over seeds {args.seeds}: "
            f"{statistics.median(speedups):.2f}x faster, drop {statistics.median(drops):+.2f} points "
            f"(target >= 2x, <= 0.3): {'PASS' if ok else 'FAIL'}"
        )
        figures[f"{key}_speedup_spread"] = spread(speedups)
        figures[f"{key}_speedup"] = statistics.median(speedups)
        figures[f"{key}_drop_points"] = spread(drops)
    figures["max_drop_points"] = max(
        figures["mlp_drop_points"]["median"], figures["lenet_drop_points"]["median"]
    )
    write_result(
        "quant_latency",
        figures,
        {
            "training_precision": "recipe default (mnist-mlp / lenet-caffe)",
            "evaluation_precision": "fp32 model in fp32; int8 model on its int8 kernels",
            "seeds": seeds,
            "repeats": f"{args.repeats} interleaved timing rounds per model, medians",
            "deviations": [],
        },
        reduced=f"--quick: 6000 training images, {args.epochs} epoch(s), {args.repeats} repeats"
        if args.quick
        else None,
    )
    print("\nreproduce: .venv/bin/python bench/quant_latency.py " + " ".join(sys.argv[1:]))
    sys.exit(0 if all(verdicts) else 1)


if __name__ == "__main__":
    main()
