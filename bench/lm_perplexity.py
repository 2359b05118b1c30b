"""Perplexity cost of weight-only quantization on a trained language model (issue #21): behemoth's GPT
trained by the gpt-text recipe (4 x 128, KJV bytes, 2000 steps), packed as int8 (one scale per output
channel) and int4 (asymmetric, groups of 32, 64 and 128), each .bhm reloaded and scored on the KJV
validation text in fp32 activations for the float row (bf16 for the low-bit kernels, which take bf16).

Targets: int8 within +1% and int4 (group 128) within +5% of the unquantized model's perplexity (relative).
The low-bit rows run on the kernels this CPU gets, so each CPU kind keeps its own file (bench/cpu_kind.py):
lm_perplexity.json on AVX-512 BF16 (bf16 x), lm_perplexity_avx2.json on AVX2 + FMA without it (x rounded to
int16 for int8 weights and to int8 for int4 ones). There the GPT trains in fp32 (the recipe's bf16 is slow
without bf16 instructions: pipeline/config.precision_for_this_cpu).
Every row is the same trained weights; nothing is chosen, so the validation split is the one reported (the
test split is never read: compress_run(measure_split="val")). Seeds: --seeds trains one GPT per seed and
reports the median relative change with the range.

Run: .venv/bin/python bench/lm_perplexity.py [--seeds 0] [--steps 2000] [--threads 2] [--runs-dir DIR]
     [--reuse]   (keep a trained run of the same seed and steps instead of training it again)
Writes bench/results/lm_perplexity.json (lm_perplexity_avx2.json on an AVX2 CPU, ...).
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.compression.pipeline import compress_run  # noqa: E402
from behemoth.pipeline.config import load_run_config, precision_for_this_cpu  # noqa: E402
from behemoth.pipeline.train import run_training  # noqa: E402
from behemoth.runs import RunDir, open_run  # noqa: E402
from bench.cpu_kind import cpu_kind_suffix, low_bit_kernels  # noqa: E402
from bench.results import spread, write_result  # noqa: E402

RECIPES = {  # row: compress overrides
    "int8 (per channel)": ["compress.quant='int8w'"],
    "int4 g32": ["compress.quant='int4w'", "compress.group=32"],
    "int4 g64": ["compress.quant='int4w'", "compress.group=64"],
    "int4 g128": ["compress.quant='int4w'", "compress.group=128"],
}
TARGETS = {"int8 (per channel)": 0.01, "int4 g128": 0.05}


def trained_run(seed: int, steps: int, threads: int, runs_dir: Path, reuse: bool) -> Path:
    name = f"lm-ppl-seed{seed}-{steps}"
    run_dir = runs_dir / name
    if reuse and RunDir(run_dir).weights.is_file():
        return run_dir
    cfg = load_run_config(
        "gpt-text",
        [
            f"runs_dir={str(runs_dir)!r}",
            f"name={name}",
            f"train.seed={seed}",
            f"train.max_steps={steps}",
            f"train.warmup={min(100, steps // 10)}",
            f"train.eval_every_steps={min(500, steps)}",
            f"train.threads={threads}",
            *precision_for_this_cpu(),
        ],
    )
    run_training(cfg, overwrite=True, progress=False)
    return run_dir


def perplexities(run_dir: Path) -> dict[str, float]:
    """The float model's and every recipe's validation perplexity, each from its reloaded .bhm."""
    out: dict[str, float] = {}
    for row, overrides in RECIPES.items():
        tag = row.split()[0] + row.split()[-1].strip("()")
        _, cfg = open_run(
            run_dir, [*overrides, f"compress.output={str(run_dir / 'ppl' / tag / 'model.bhm')!r}"]
        )
        rows = compress_run(run_dir, cfg, measure_latency=False, measure_split="val").rows
        out.setdefault("fp32", rows[0]["perplexity"])
        out[row] = rows[-1]["perplexity"]
        print(f"  {row:20s} val perplexity {out[row]:.4f} (fp32 {out['fp32']:.4f})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (the recipe's 2000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs-dir", default=None, help="where the trained runs go (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="keep an already trained run of that seed")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="lm-ppl-"))
    per_seed = {}
    for seed in seeds:
        print(f"seed {seed}: training gpt-text for {args.steps} steps in {runs_dir}", flush=True)
        run_dir = trained_run(seed, args.steps, args.threads, runs_dir, args.reuse)
        per_seed[seed] = perplexities(run_dir)
    rows = {}
    for row in ["fp32", *RECIPES]:
        values = [per_seed[s][row] for s in seeds]
        change = [per_seed[s][row] / per_seed[s]["fp32"] - 1 for s in seeds]
        rows[row] = {
            "perplexity": spread(values),
            "relative_change": spread(change),
            "target": TARGETS.get(row),
            "meets_target": None if row not in TARGETS else statistics.median(change) <= TARGETS[row],
        }
        median = statistics.median(change)
        print(f"{row:20s} perplexity {statistics.median(values):.4f}  change {median:+.3%}")
    figures = {"rows": rows, "per_seed": {str(s): v for s, v in per_seed.items()}, "steps": args.steps}
    write_result(
        "lm_perplexity" + cpu_kind_suffix(),
        figures | low_bit_kernels(),
        {
            "training_precision": "fp32 (this CPU has no bf16 instructions)"
            if precision_for_this_cpu()
            else "bf16 autocast (the gpt-text recipe)",
            "evaluation_precision": "fp32 for the float row; bf16 activations into the int8/int4 kernels "
            "(which round them further on an AVX2 CPU: see int4_kernel / int8_kernel)",
            "selection": "nothing chosen: every row is the same trained weights, scored on validation text",
            "seeds": seeds,
            "deviations": [] if len(seeds) >= 3 else [f"{len(seeds)} training seed(s)"],
        },
        reduced=None if args.steps == 2000 else f"{args.steps} training steps",
    )


if __name__ == "__main__":
    main()
