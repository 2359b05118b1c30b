"""Peak training memory per parameter of a GPT: plain fp32 AdamW vs behemoth's best memory setting.

Anchor (ZeRO, Rajbhandari et al. 2020): mixed-precision Adam holds 16 bytes per parameter of model state
(2 fp16 weights + 2 grads + 12 fp32 master weights and moments); plain fp32 Adam holds 4 + 4 + 8 = 16 too.
8-bit Adam (Dettmers et al. 2021) cuts the moments from 8 to 2 bytes. behemoth's best setting stores
parameters and gradients in bf16 (train.param_dtype = "bf16": 2 + 2), keeps 8-bit AdamW moments
(train.optimizer = "adamw8bit": ~2.03), checkpoints activations per block and has glibc unmap freed
tensors at once (train.release_freed_memory; "best, glibc default" shows it without): target <= 8 bytes/param.

Method. Every measurement is a fresh subprocess (bench/memory_probe.py) that
  1. loads the data and trains a one-block GPT for a step with the same settings, so every lazily loaded
     library (oneDNN, torch.compile for torchao's optimizer) is in memory before the baseline;
  2. reads its resident set size (the baseline) and resets the kernel's peak counter (/proc/self/clear_refs);
  3. builds the GPT (directly in bf16 when param_dtype is bf16) and trains 2 steps through
     behemoth.training.train;
  4. reports the peak RSS of building + step 1 and of step 2 (steady state: optimizer state allocated,
     compilation done).
Two figures per run (issue #19: the step-2 peak alone left out building and step 1):
  whole-run bytes/param = (max peak over building, step 1 and step 2 - baseline) / parameters: what must fit;
  steady bytes/param    = (step-2 peak RSS - baseline) / parameters: what each later step needs.
The baseline is the process after the warm-up (libraries loaded, data loaded), before the model exists. Both
include activations and temporaries, not only
model state; the model-state column (parameters + gradients + optimizer state, counted from the tensors)
is the ZeRO accounting. GPT family: n_embd = 64 k, n_layer = k, n_head = k (head size 64), byte vocabulary,
4 sequences of 128 tokens per step.

The search for the largest GPT that trains a step within 20 GiB runs real subprocesses only while the
predicted peak stays under --cap-gib (default 18: the machine is shared) and what the machine has free;
beyond that the 20 GiB size is extrapolated from the measured bytes per parameter, and says so.

Run: .venv/bin/python bench/memory.py            (sizes k = 8, 12, 16; every saver at k = 12; the search)
     .venv/bin/python bench/memory.py --quick    (k = 4, 6, 8; no search; about a minute)
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.memory_probe import BATCH, GIB, SEQ, SETTINGS, gpt_params, measure, mem_available  # noqa: E402
from bench.results import write_result  # noqa: E402

SIZE_SETTINGS = ("plain", "best, glibc default", "best")
ZERO_MODEL_STATE = {"plain": 16.0, "best": 2 + 2 + 2 + 8 / 256}  # bytes/param: 2 moments x (1 + 4/256 scale)


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def size_table(results: dict[tuple[str, int], dict], sizes: list[int]) -> None:
    print(
        "\nPeak training memory per parameter (whole run: building + steps 1-2 / steady state: step 2; RSS "
        "above the process baseline; state = parameters + gradients + optimizer state, from the tensors)"
    )
    head = f"{'k':>3} {'layers x width':>15} {'params':>8}"
    for setting in SIZE_SETTINGS:
        head += f" | {setting[:20]:>20} {'whole':>6} {'GiB':>5} {'state':>5}"
    print(head + f" | {'plain/best':>10}")
    for k in sizes:
        row = f"{k:>3} {f'{k} x {64 * k}':>15} {gpt_params(k) / 1e6:>7.1f}M"
        for setting in SIZE_SETTINGS:
            r = results[(setting, k)]
            row += (
                f" | {'failed':>20} {'':>6} {'':>5} {'':>5}"
                if "failed" in r
                else f" | {r['bytes_per_param']:>14.2f} B/par {r['whole_bytes_per_param']:>6.2f} "
                f"{gib(r['peak_step2'] - r['baseline']):>5} {r['state_per_param']:>5.2f}"
            )
        plain, best = results[("plain", k)], results[("best", k)]
        if "failed" not in plain and "failed" not in best:
            row += f" | {plain['bytes_per_param'] / best['bytes_per_param']:>9.2f}x"
        print(row)
    print(
        f"ZeRO's accounting of model state: plain fp32 Adam {ZERO_MODEL_STATE['plain']:.0f} B/param "
        f"(as mixed-precision Adam); bf16 + 8-bit AdamW {ZERO_MODEL_STATE['best']:.2f}. "
        "Target for best: <= 8."
    )


def saver_table(results: dict[tuple[str, int], dict], k: int) -> None:
    print(
        f"\nEach saver alone (k = {k}, {gpt_params(k) / 1e6:.1f}M parameters, "
        f"{BATCH} x {SEQ} tokens per step)"
    )
    print(f"{'setting':>20} {'B/param':>8} {'whole':>6} {'state':>6} {'vs plain':>9} {'step 2 s':>9}")
    plain = results[("plain", k)]
    for setting in SETTINGS:
        r = results.get((setting, k))
        if r is None:
            continue
        if "failed" in r:
            print(f"{setting:>20} failed: {r['failed']}")
            continue
        print(
            f"{setting:>20} {r['bytes_per_param']:>8.2f} {r['whole_bytes_per_param']:>6.2f} "
            f"{r['state_per_param']:>6.2f} "
            f"{r['bytes_per_param'] / plain['bytes_per_param']:>8.2f}x {r['step_seconds'][1]:>9.2f}"
        )


def predicted_peak(points: list[dict], k: int) -> float:
    """Absolute peak RSS predicted for size k from the largest measured point (slope = its bytes/param)."""
    ref = max(points, key=lambda r: r["params"])
    slope = (ref["peak"] - ref["baseline"]) / ref["params"]
    return ref["baseline"] + slope * gpt_params(k)


def search(setting: str, points: list[dict], cap: float, limit: float, threads: int) -> dict:
    """Largest k whose training step peaks under min(cap, limit), by binary search over real runs; then
    the size at `limit` extrapolated from the bytes/param of the largest run that fit."""
    ok = [r for r in points if "failed" not in r and r["peak"] <= min(cap, limit)]
    lo = max(r["k"] for r in ok)
    hi = lo + 1
    while predicted_peak(ok, hi) <= min(cap, limit, mem_available() - 2 * GIB):
        hi *= 2  # grow until a size is predicted not to fit (never run beyond the cap)
    probes = []
    while hi - lo > 1:
        mid = (lo + hi) // 2
        guard = min(cap, limit, mem_available() - 2 * GIB)
        if predicted_peak(ok, mid) > guard:
            probes.append(
                f"k={mid}: predicted {gib(predicted_peak(ok, mid))} GiB > {gib(guard)} GiB: not run"
            )
            hi = mid
            continue
        r = measure(setting, mid, threads)
        fits = "failed" not in r and r["peak"] <= min(cap, limit)
        probes.append(
            f"k={mid}: " + (r.get("failed") or f"peak {gib(r['peak'])} GiB") + (" fits" if fits else "")
        )
        print(f"  search {setting}: {probes[-1]}", flush=True)
        if fits:
            ok.append(r)
            lo = mid
        else:
            hi = mid
    best = max(ok, key=lambda r: r["params"])
    slope = (best["peak"] - best["baseline"]) / best["params"]
    at_limit = (limit - best["baseline"]) / slope
    k_at_limit = max(k for k in range(1, 200) if gpt_params(k) <= at_limit)
    return {
        "setting": setting,
        "measured": best,
        "probes": probes,
        "slope": slope,
        "params_at_limit": at_limit,
        "k_at_limit": k_at_limit,
        "extrapolated": best["peak"] < limit - 0.5 * GIB,
    }


def search_table(found: list[dict], limit: float, cap: float) -> None:
    print(
        f"\nLargest GPT that trains one step within {gib(limit)} GiB "
        f"(runs capped at {gib(cap)} GiB on this shared machine)"
    )
    print(f"{'setting':>8} | {'largest run that fit':>32} | {'at ' + gib(limit) + ' GiB':>30}")
    for f in found:
        m = f["measured"]
        run = f"k={m['k']} {m['params'] / 1e9:.2f}B params, {gib(m['peak'])} GiB"
        how = "extrapolated" if f["extrapolated"] else "measured"
        at = f"{f['params_at_limit'] / 1e9:.2f}B params (k={f['k_at_limit']}), {how}"
        print(f"{f['setting']:>8} | {run:>32} | {at:>30}")
    if len(found) == 2:
        print(
            f"best / plain: {found[1]['params_at_limit'] / found[0]['params_at_limit']:.2f}x "
            "the parameters in the same memory"
        )
    for f in found:
        print(
            f"  {f['setting']} probes: " + "; ".join(f["probes"])
            if f["probes"]
            else f"  {f['setting']}: no probes"
        )
    print(
        f"extrapolated = (limit - baseline) / (bytes per parameter of the largest run that fit, "
        f"activations at {BATCH} x {SEQ} tokens included)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes, no search")
    parser.add_argument("--no-search", action="store_true", help="skip the largest-model search")
    parser.add_argument(
        "--cap-gib", type=float, default=18.0, help="never run a size predicted above this RSS"
    )
    parser.add_argument(
        "--limit-gib", type=float, default=20.0, help="the memory the largest model must fit in"
    )
    parser.add_argument("--out", type=Path, help="also write every measurement as JSON here")
    args = parser.parse_args()
    sizes = [4, 6, 8] if args.quick else [8, 12, 16]
    saver_k = sizes[1]
    results: dict[tuple[str, int], dict] = {}
    jobs = [(s, k) for k in sizes for s in SIZE_SETTINGS] + [
        (s, saver_k) for s in SETTINGS if s not in SIZE_SETTINGS
    ]
    for setting, k in jobs:
        results[(setting, k)] = r = measure(setting, k, args.threads)
        shown = r.get("failed") or f"{r['bytes_per_param']:.2f} B/param, peak {gib(r['peak'])} GiB"
        print(f"measured {setting:>20} k={k:<3} {r['params'] / 1e6:8.1f}M params: {shown}", flush=True)
    size_table(results, sizes)
    saver_table(results, saver_k)
    found = []
    if not (args.quick or args.no_search):
        cap, limit = args.cap_gib * GIB, args.limit_gib * GIB
        for setting in ("plain", "best"):
            points = [results[(setting, k)] for k in sizes]
            found.append(search(setting, points, cap, limit, args.threads))
        search_table(found, limit, cap)
    if args.out:
        args.out.write_text(
            json.dumps({"sizes": [results[key] for key in results], "search": found}, indent=1)
        )
    write_result(
        "memory-quick" if args.quick else "memory",  # a quick run never replaces the full sizes' figures
        {"sizes": sizes, "runs": [results[key] for key in results], "search": found},
        {
            "training_precision": "per setting (fp32 plain; bf16 parameters in best)",
            "evaluation_precision": "n/a (memory only)",
            "peaks": "whole run = building + step 1 + step 2; steady = step 2; both above the baseline",
            "deviations": [],
        },
        reduced="--quick: k = 4, 6, 8, no search"
        if args.quick
        else ("no search" if args.no_search else None),
    )
    print(
        f"\ncommand: {' '.join([Path(sys.executable).name, 'bench/memory.py', *sys.argv[1:]])}  "
        f"(threads {args.threads}; {BATCH} x {SEQ} tokens per step)"
    )


if __name__ == "__main__":
    main()
