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

Run: .venv/bin/python bench/deep_compression.py [--quick] [--epochs N] [--retrain-epochs N] [--reuse]
     [--threads 1] [--only lenet-300-100|lenet5] [--prune-mlp 0.95] [--prune-lenet 0.94] [--fc-bits 5]
     [--conv-bits 8]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.compression.pipeline import compress_run  # noqa: E402
from behemoth.config import load_config  # noqa: E402
from behemoth.pipeline import run_training  # noqa: E402
from behemoth.pipeline.config import resolve_config  # noqa: E402
from behemoth.runs import open_run  # noqa: E402

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


def baseline(key: str, args) -> Path:
    name = f"bench-dc-{key}" + ("-quick" if args.quick else "")
    run_dir = Path(args.runs_dir) / name
    if args.reuse and (run_dir / "model.safetensors").is_file():
        print(f"  reusing baseline {run_dir}", flush=True)
        return run_dir
    epochs = args.epochs or BASELINE_EPOCHS[key]
    overrides = [
        f"name={name}",
        f"runs_dir={args.runs_dir!r}",
        f"train.epochs={epochs}",
        "data.val_fraction=0.0",
    ]
    if args.quick:
        overrides += ["data.train_limit=6000", "train.warmup=0"]
    cfg = load_config(resolve_config(PAPER[key]["recipe"]), overrides)
    started = time.perf_counter()
    run_training(cfg, overwrite=True, progress=args.progress)
    print(f"  trained baseline {name}: {epochs} epochs in {time.perf_counter() - started:.0f}s", flush=True)
    return run_dir


def compress(key: str, run_dir: Path, args) -> dict:
    amount = args.prune_mlp if key == "lenet-300-100" else args.prune_lenet
    recipe = [
        f"compress.prune={amount}",
        "compress.scope='global'",
        "compress.schedule='gradual'",
        f"compress.retrain_epochs={args.retrain_epochs or RETRAIN_EPOCHS[key]}",
        f"compress.retrain_lr_scale={args.lr_scale}",
        f"compress.quant='kmeans{args.fc_bits}'",
        f"compress.conv_bits={args.conv_bits}",
        f"compress.finetune_epochs={args.finetune_epochs}",
        "compress.code='huffman'",
        f"compress.output={str(run_dir / 'compressed' / 'model.bhm')!r}",
        "compress.latency_repeats=10",
    ]
    if args.self_distill:  # retraining distils from the uncompressed run (T = 4, alpha = 0.7 by default)
        recipe += [
            f"compress.teacher={str(run_dir)!r}",
            f"compress.temperature={args.temperature}",
            f"compress.alpha={args.alpha}",
        ]
    _, cfg = open_run(run_dir, recipe)
    started = time.perf_counter()
    result = compress_run(
        run_dir, cfg, say=lambda text: print("  " + text, flush=True), show_progress=args.progress
    )
    print(f"  compressed in {time.perf_counter() - started:.0f}s", flush=True)
    return {"rows": result.rows, "layers": result.layers, "artifact": str(result.artifact), "recipe": recipe}


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
        help="pruning retraining (default 40 for LeNet-300-100, 12 for LeNet-5; quick 1)",
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
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--prune-mlp", type=float, default=0.95, help="global sparsity for LeNet-300-100")
    parser.add_argument("--prune-lenet", type=float, default=0.94, help="global sparsity for LeNet-5")
    parser.add_argument("--fc-bits", type=int, default=5)
    parser.add_argument("--conv-bits", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--reuse", action="store_true", help="reuse trained baselines if present")
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    args = parser.parse_args()
    args.epochs = args.epochs or (1 if args.quick else None)
    args.retrain_epochs = args.retrain_epochs or (1 if args.quick else None)
    args.finetune_epochs = args.finetune_epochs or (1 if args.quick else 2)
    torch.set_num_threads(args.threads)
    verdicts = []
    for key in args.only or list(PAPER):
        print(f"{key}:", flush=True)
        run_dir = baseline(key, args)
        verdicts.append(report(key, compress(key, run_dir, args)))
    print("\nreproduce: .venv/bin/python bench/deep_compression.py " + " ".join(sys.argv[1:]))
    sys.exit(0 if all(verdicts) else 1)


if __name__ == "__main__":
    main()
