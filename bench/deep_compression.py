"""Deep Compression (Han, Mao, Dally, ICLR 2016), Table 1, on MNIST: pruning + k-means weight sharing +
Huffman coding, measured as the bytes of the .bhm file on disk, beside the paper's figures.

  paper: LeNet-300-100        1070 KB -> 27 KB (40x), test error 1.64% -> 1.58%
         LeNet-5 (Caffe, 431K) 1720 KB -> 44 KB (39x), test error 0.80% -> 0.74%
  target: >= 50x and >= 45x, with test error no worse than the paper's compressed error.

Our baseline size is the trained run's model.safetensors (float32 weights + a small header). Each model:
train the baseline through behemoth (recipe mnist-mlp / lenet-caffe, all 60,000 training images), then
`compress_run`: gradual magnitude pruning (Zhu & Gupta cubic schedule, global threshold, retraining at
0.3 x the learning rate, distilling from the uncompressed run: T = 4, alpha = 0.7), k-means weight
sharing (fc bits / conv bits) with centroid fine-tuning, Huffman coding of codebook indices and relative
sparse indices. (Han et al. retrain with the task loss alone: --no-self-distill.)

Protocol (issue #19). Choose on validation, report on test once:
  --sweep   trains each baseline with seed 100 on 90% of the training images (data.val_fraction = 0.1)
            and compresses it with every recipe in the grid (--grid-prune-mlp / --grid-prune-lenet,
            --grid-fc-bits, --grid-conv-bits, --grid-temperature, --grid-alpha, --grid-retrain-epochs),
            scoring each step on the validation split only (compress_run(measure_split="val"): the test
            split is never read). The chosen
            recipe per model is the highest compression whose validation error is at most the uncompressed
            baseline's validation error + --tolerance points; it is written to
            bench/results/deep_compression_sweep.json.
  report    (the default) reads that choice, trains a baseline per --seeds (default 0,1,2; same 90% split),
            compresses it once and scores the test set once; figures are medians with the range.
Deviations stated beside the row: retraining distils from the uncompressed model (Han et al. retrain on the
task loss; --no-self-distill turns it off); the baselines train on 54,000 images, not 60,000.

Run: .venv/bin/python bench/deep_compression.py --sweep [--quick] [--only lenet-300-100|lenet5]
     .venv/bin/python bench/deep_compression.py [--seeds 0,1,2] [--quick] [--epochs N] [--reuse] [--threads 1]
     [--only ...] [--prune-mlp 0.95 --prune-lenet 0.94 --fc-bits 5 --conv-bits 8]  (given: not validated)
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.compression.pipeline import compress_run  # noqa: E402
from behemoth.config import load_config  # noqa: E402
from behemoth.files import atomic_write_text  # noqa: E402
from behemoth.pipeline import run_training  # noqa: E402
from behemoth.pipeline.config import resolve_config  # noqa: E402
from behemoth.runs import open_run  # noqa: E402
from bench.results import RESULTS, kept_rows_note, merge_rows, spread, write_result  # noqa: E402

SWEEP_SEED = 100  # the sweep's seed: outside every reported seed set
SWEEP_FILE = RESULTS / "deep_compression_sweep.json"
OUTCOME_FILE = "bench_outcome.json"  # beside each compressed artifact: what --reuse reads back

BASELINE_EPOCHS = {"lenet-300-100": 20, "lenet5": 12}
RETRAIN_EPOCHS = {"lenet-300-100": 40, "lenet5": 16}  # pruning retraining; the MLP's epochs are cheap
PAPER = {  # Table 1 of Han et al. 2016
    "lenet-300-100": {
        "recipe": "mnist-mlp",
        "kb_before": 1070,
        "kb_after": 27,
        "ratio": 40,
        "err_before": 1.64,
        "err_after": 1.58,
        "target_ratio": 50,
    },
    "lenet5": {
        "recipe": "lenet-caffe",
        "kb_before": 1720,
        "kb_after": 44,
        "ratio": 39,
        "err_before": 0.80,
        "err_after": 0.74,
        "target_ratio": 45,
    },
}


def baseline(key: str, args, seed: int) -> Path:
    name = f"bench-dc-{key}-seed{seed}" + ("-quick" if args.quick else "")
    run_dir = Path(args.runs_dir) / name
    if args.reuse and (run_dir / "model.safetensors").is_file():
        print(f"  reusing baseline {run_dir}", flush=True)
        return run_dir
    epochs = args.epochs or BASELINE_EPOCHS[key]
    overrides = [
        f"name={name}",
        f"runs_dir={args.runs_dir!r}",
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        f"data.val_fraction={args.val_fraction}",  # the held-out images choose the recipe (--sweep)
    ]
    if args.quick:
        overrides += ["data.train_limit=6000", "train.warmup=0"]
    cfg = load_config(resolve_config(PAPER[key]["recipe"]), overrides)
    started = time.perf_counter()
    run_training(cfg, overwrite=True, progress=args.progress)
    print(f"  trained baseline {name}: {epochs} epochs in {time.perf_counter() - started:.0f}s", flush=True)
    return run_dir


def recipe_overrides(run_dir: Path, args, settings: dict, tag: str) -> list[str]:
    recipe = [
        f"compress.prune={settings['prune']}",
        "compress.scope='global'",
        "compress.schedule='gradual'",
        f"compress.retrain_epochs={settings['retrain_epochs']}",
        f"compress.retrain_lr_scale={args.lr_scale}",
        f"compress.quant='kmeans{settings['fc_bits']}'",
        f"compress.conv_bits={settings['conv_bits']}",
        f"compress.finetune_epochs={args.finetune_epochs}",
        "compress.code='huffman'",
        f"compress.output={str(run_dir / ('compressed' + tag) / 'model.bhm')!r}",
        "compress.latency_repeats=10",
    ]
    if args.self_distill:  # retraining distils from the uncompressed run (T = 4, alpha = 0.7 by default)
        recipe += [
            f"compress.teacher={str(run_dir)!r}",
            f"compress.temperature={settings['temperature']}",
            f"compress.alpha={settings['alpha']}",
        ]
    return recipe


def compress(run_dir: Path, args, settings: dict, split: str = "test", tag: str = "") -> dict:
    """Compress the baseline with one recipe and score it on `split`. With --reuse, a recipe already
    compressed with the same overrides is read back instead: a sweep of hours (LeNet-5: six recipes of
    ~20 min) then resumes where a stopped session left it."""
    recipe = recipe_overrides(run_dir, args, settings, tag)
    saved = run_dir / ("compressed" + tag) / OUTCOME_FILE
    if args.reuse and saved.is_file():
        outcome = json.loads(saved.read_text())
        if outcome["recipe"] == recipe and outcome.get("split") == split:
            print(f"  reusing {saved.parent.name}: {settings}", flush=True)
            return outcome
    _, cfg = open_run(run_dir, recipe)
    started = time.perf_counter()
    result = compress_run(
        run_dir,
        cfg,
        say=lambda text: print("  " + text, flush=True),
        show_progress=args.progress,
        measure_latency=split == "test",
        measure_split=split,
    )
    print(f"  compressed in {time.perf_counter() - started:.0f}s", flush=True)
    outcome = {
        "rows": result.rows,
        "layers": result.layers,
        "artifact": str(result.artifact),
        "recipe": recipe,
        "split": split,
    }
    atomic_write_text(saved, json.dumps(outcome, indent=1))
    return outcome


def report(key: str, outcome: dict) -> bool:
    paper, rows = PAPER[key], outcome["rows"]
    base, final = rows[0], rows[-1]
    print(f"\n{key}: {outcome['artifact']}")
    print(
        f"{'step':<12}{'params':>9}{'nonzeros':>10}{'bytes':>11}{'x':>7}{'test error':>12}{'errors':>8}"
        f"{'ms b=1':>8}{'ms b=256':>10}"
    )
    for row in rows:
        print(
            f"{row['step']:<12}{row['parameters']:>9,}{row['nonzeros']:>10,}{row['bytes']:>11,}"
            f"{row['compression']:>7.1f}{row['error']:>12.2%}{row['errors']:>8}"
            f"{row.get('latency_ms_b1', float('nan')):>8.3f}{row.get('latency_ms_b256', float('nan')):>10.2f}"
        )
    print(
        "per layer: "
        + ", ".join(
            f"{n} {1 - layer['sparsity']:.1%} kept, {layer.get('bits', 32)} bits"
            for n, layer in outcome["layers"].items()
        )
    )
    print(f"{'':<10}{'size before':>14}{'size after':>13}{'ratio':>8}{'error before':>14}{'error after':>13}")
    print(
        f"{'paper':<10}{paper['kb_before']:>11} KB{paper['kb_after']:>10} KB{paper['ratio']:>7}x"
        f"{paper['err_before']:>13.2f}%{paper['err_after']:>12.2f}%"
    )
    print(
        f"{'ours':<10}{base['bytes'] / 1000:>11.0f} KB{final['bytes'] / 1000:>10.1f} KB"
        f"{final['compression']:>7.1f}x"
        f"{100 * base['error']:>13.2f}%{100 * final['error']:>12.2f}%"
    )
    ok = final["compression"] >= paper["target_ratio"] and 100 * final["error"] <= paper["err_after"] + 1e-9
    print(
        f"target >= {paper['target_ratio']}x with error <= {paper['err_after']}%: {'PASS' if ok else 'FAIL'}"
    )
    return ok


def given_settings(key: str, args) -> dict | None:
    """The recipe from the command line, when any of its values was given (then it is not validated)."""
    prune = args.prune_mlp if key == "lenet-300-100" else args.prune_lenet
    values = (prune, args.fc_bits, args.conv_bits, args.temperature, args.alpha, args.retrain_epochs)
    if all(value is None for value in values):
        return None
    return {
        "prune": prune if prune is not None else (0.95 if key == "lenet-300-100" else 0.94),
        "fc_bits": args.fc_bits or 5,
        "conv_bits": args.conv_bits or 8,
        "temperature": args.temperature or 4.0,
        "alpha": args.alpha if args.alpha is not None else 0.7,
        "retrain_epochs": args.retrain_epochs or RETRAIN_EPOCHS[key],
    }


def grid(key: str, args) -> list[dict]:
    prunes = args.grid_prune_mlp if key == "lenet-300-100" else args.grid_prune_lenet
    retrain = args.grid_retrain_epochs or [RETRAIN_EPOCHS[key]]
    return [
        {"prune": p, "fc_bits": f, "conv_bits": c, "temperature": t, "alpha": a, "retrain_epochs": r}
        for p, f, c, t, a, r in itertools.product(
            prunes, args.grid_fc_bits, args.grid_conv_bits, args.grid_temperature, args.grid_alpha, retrain
        )
    ]


def sweep(keys: list[str], args) -> None:
    """Every grid recipe on seed 100's baseline, scored on the validation split (test is not read)."""
    chosen = {}
    for key in keys:
        print(f"{key}: sweep on the validation split (seed {SWEEP_SEED})", flush=True)
        run_dir = baseline(key, args, SWEEP_SEED)
        candidates = []
        for number, settings in enumerate(grid(key, args)):
            rows = compress(run_dir, args, settings, split="val", tag=f"-sweep{number}")["rows"]
            candidates.append(
                {
                    **settings,
                    "ratio": rows[-1]["compression"],
                    "val_error_percent": 100 * rows[-1]["error"],
                    "baseline_val_error_percent": 100 * rows[0]["error"],
                }
            )
            print(f"  {settings}: {rows[-1]['compression']:.1f}x, val error {100 * rows[-1]['error']:.2f}%")
        limit = candidates[0]["baseline_val_error_percent"] + args.tolerance
        fit = [c for c in candidates if c["val_error_percent"] <= limit + 1e-9] or candidates
        best = max(fit, key=lambda c: (c["ratio"], -c["val_error_percent"]))
        print(f"  chosen: {best}", flush=True)
        chosen[key] = {"chosen": best, "candidates": candidates, "val_error_limit_percent": limit}
    write_result(
        "deep_compression_sweep",
        merge_rows("deep_compression_sweep", chosen, under=None),  # --only keeps the other model's choice
        protocol(
            args,
            [SWEEP_SEED],
            f"validation split ({args.val_fraction:.0%} of training images); test not read",
        ),
        reduced="--quick: 6000 training images, 1 epoch per stage" if args.quick else None,
    )


def protocol(args, seeds: list[int], selection: str) -> dict:
    deviations = [
        f"baselines train on {1 - args.val_fraction:.0%} of the training images (the rest chooses the recipe)"
    ]
    if args.self_distill:
        deviations.insert(
            0, "retraining distils from the uncompressed model (Han et al. retrain on the task loss)"
        )
    return {
        "training_precision": "recipe default (mnist-mlp / lenet-caffe)",
        "evaluation_precision": "fp32 (int8 steps on their kernels)",
        "seeds": seeds,
        "selection": selection,
        "tolerance_points": args.tolerance,
        "deviations": deviations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="6000 training images, 1 epoch each stage")
    parser.add_argument(
        "--only", choices=list(PAPER), action="append", help="run only this model (repeatable)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="baseline training epochs (default 20 for LeNet-300-100, 12 for LeNet-5; quick 1)",
    )
    parser.add_argument(
        "--retrain-epochs",
        type=int,
        default=None,
        help="pruning retraining (default: the sweep's choice)",
    )
    parser.add_argument(
        "--finetune-epochs", type=int, default=None, help="centroid fine-tuning (default 2; quick 1)"
    )
    parser.add_argument("--lr-scale", type=float, default=0.3, help="retraining lr = baseline lr * this")
    parser.add_argument(
        "--no-self-distill",
        dest="self_distill",
        action="store_false",
        help="retrain with the plain task loss instead of distilling from the uncompressed run",
    )
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--prune-mlp", type=float, default=None, help="global sparsity for LeNet-300-100")
    parser.add_argument("--prune-lenet", type=float, default=None, help="global sparsity for LeNet-5")
    parser.add_argument("--fc-bits", type=int, default=None)
    parser.add_argument("--conv-bits", type=int, default=None)
    parser.add_argument("--seeds", default="0,1,2", help="reported seeds (the sweep uses seed 100)")
    parser.add_argument("--sweep", action="store_true", help="choose the recipe on the validation split")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="training images held out to choose")
    parser.add_argument("--tolerance", type=float, default=0.1, help="val error points allowed over baseline")
    parser.add_argument("--grid-prune-mlp", default="0.92,0.95,0.97")
    parser.add_argument("--grid-prune-lenet", default="0.92,0.94,0.96")
    parser.add_argument("--grid-fc-bits", default="4,5")
    parser.add_argument("--grid-conv-bits", default="8")
    parser.add_argument("--grid-temperature", default="4")
    parser.add_argument("--grid-alpha", default="0.7")
    parser.add_argument("--grid-retrain-epochs", default=None, help="default: 40 (MLP), 16 (LeNet-5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse trained baselines, and recipes already compressed with the same overrides, if present",
    )
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    args = parser.parse_args()
    if not 0 < args.val_fraction < 1:
        raise SystemExit("--val-fraction must be in (0, 1): the recipe is chosen on held-out training images")
    args.epochs = args.epochs or (1 if args.quick else None)
    args.finetune_epochs = args.finetune_epochs or (1 if args.quick else 2)
    for name in ("grid_prune_mlp", "grid_prune_lenet", "grid_temperature", "grid_alpha"):
        setattr(args, name, [float(v) for v in getattr(args, name).split(",")])
    for name in ("grid_fc_bits", "grid_conv_bits"):
        setattr(args, name, [int(v) for v in getattr(args, name).split(",")])
    args.grid_retrain_epochs = (
        [1]
        if args.quick
        else [int(v) for v in args.grid_retrain_epochs.split(",")]
        if args.grid_retrain_epochs
        else None
    )
    torch.set_num_threads(args.threads)
    keys = args.only or list(PAPER)
    if args.sweep:
        sweep(keys, args)
        return
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if SWEEP_SEED in seeds:
        raise SystemExit(f"seed {SWEEP_SEED} chose the recipe: report other seeds")
    swept = json.loads(SWEEP_FILE.read_text())["figures"] if SWEEP_FILE.is_file() else {}
    verdicts, figures, selections = [], {}, []
    for key in keys:
        settings = given_settings(key, args)
        if settings is None and key not in swept:
            raise SystemExit(
                f"{key}: no recipe chosen yet: run --sweep first (or give the recipe, unvalidated)"
            )
        if settings is None:
            settings = {k: swept[key]["chosen"][k] for k in grid(key, args)[0]}
            selections.append(f"{key}: from bench/results/deep_compression_sweep.json (validation, seed 100)")
        else:
            selections.append(f"{key}: given on the command line (not validated)")
        ratios, errors, base_errors = [], [], []
        for seed in seeds:
            print(f"{key}, seed {seed}: {settings}", flush=True)
            outcome = compress(baseline(key, args, seed), args, settings)
            verdicts.append(report(key, outcome))
            ratios.append(outcome["rows"][-1]["compression"])
            errors.append(100 * outcome["rows"][-1]["error"])
            base_errors.append(100 * outcome["rows"][0]["error"])
        figures[key] = {
            "ratio": spread(ratios),
            "error_percent": spread(errors),
            "baseline_error_percent": spread(base_errors),
            "settings": settings,
        }
    # --only re-runs one model: the other keeps its row, saying which run measured it
    rows = merge_rows("deep_compression", figures, under=None)
    record = protocol(args, seeds, "; ".join(selections))
    record["deviations"] += kept_rows_note(rows, list(figures))
    write_result(
        "deep_compression",
        rows,
        record,
        reduced="--quick: 6000 training images, 1 epoch per stage" if args.quick else None,
    )
    print("\nreproduce: .venv/bin/python bench/deep_compression.py " + " ".join(sys.argv[1:]))
    sys.exit(0 if all(verdicts) else 1)


if __name__ == "__main__":
    main()
