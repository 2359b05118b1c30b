"""Differentially private federated MNIST: test accuracy at epsilon ~ 1.2, 2.9, 6.9 (delta = 1e-5) beside the
Opacus MNIST example (pytorch/opacus examples/mnist_README.md, mean of 10 runs: 94.63%, 96.78%, 97.09%).

Same model (Opacus' SampleConvNet), same DP-SGD (Opacus: per-sample clipping, Gaussian noise, Poisson
batches at sample rate 0.004) and the same RDP accounting, run through `behemoth federate`'s machinery:
K clients (Flower simulation) each hold 60000/K images, all take part every round, one local epoch of
DP-SGD per round (so rounds = the example's epochs), and FedAvg merges them. Each client's batch is
0.004 * its rows, so the epsilon reported (per client's records, the worst client) is the one Opacus'
example reports for its whole training set. With --clients 1 it is the example itself, run as a federation.

    .venv/bin/python bench/dp_mnist.py                                  # the example's settings, 1 client
    .venv/bin/python bench/dp_mnist.py --clients 10 --rows eps1.2       # one row, 10 silos
    .venv/bin/python bench/dp_mnist.py --epochs 5                       # fewer epochs; noise re-solved
                                                                        # for each epsilon

Protocol (issue #19): each row runs --seeds (default 0,1,2); the accuracy is the median with the range. The
settings are the Opacus example's, not tuned here (so no test-set choice). Writes bench/results/dp_mnist.json.

The example's rows are (epochs, lr, sigma, clip): eps 1.19: (15, 0.25, 1.3, 1.5); eps 3.01: (60, 0.15, 1.1,
1.0); eps 7.10: (45, 0.25, 0.7, 1.5). With --epochs the noise multiplier is solved (dp.target_epsilon) so
that epsilon still lands on the row's value; lr and clip stay.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 0.004  # the example's -sr: batch 240 of 60000
ROWS = {  # name: (paper epsilon, epochs, lr, sigma, clip, paper accuracy)
    "eps1.2": (1.19, 15, 0.25, 1.3, 1.5, 0.9463),
    "eps2.9": (3.01, 60, 0.15, 1.1, 1.0, 0.9678),
    "eps6.9": (7.10, 45, 0.25, 0.7, 1.5, 0.9709),
}


class SampleConvNet(nn.Module):
    """Opacus' examples/mnist.py model: conv 16@8x8/2, pool, conv 32@4x4/2, pool, fc 32, fc 10
    (26,010 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 8, 2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, 4, 2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, 10)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 1)  # (B, 16, 13, 13)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 1)  # (B, 32, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def sample_convnet() -> nn.Module:
    """The factory behemoth's config names as model.name = "dp_mnist:sample_convnet"."""
    return SampleConvNet()


def row_config(name: str, clients: int, epochs: int | None, runs_dir: Path, seed: int) -> dict:
    eps, paper_epochs, lr, sigma, clip, _ = ROWS[name]
    rows_per_client = 60000 // clients
    cores = os.cpu_count() or 1
    threads = max(1, cores // min(clients, cores))  # clients training at once share the cores
    dp = {"mode": "client", "clip_norm": clip, "delta": 1e-5}
    dp.update({"target_epsilon": eps} if epochs is not None else {"noise_multiplier": sigma})
    return {
        "name": f"dp-mnist-{name}-k{clients}",
        "runs_dir": str(runs_dir),
        "data": {"name": "mnist", "val_fraction": 0.0, "eval_batch_size": 2000},
        "model": {"name": "dp_mnist:sample_convnet"},
        "train": {"optimizer": "sgd", "lr": lr, "momentum": 0.0, "precision": "fp32", "seed": seed},
        "federate": {
            "clients": clients,
            "fraction": 1.0,
            "min_clients": clients,
            "local_epochs": 1,
            "local_batch": round(SAMPLE_RATE * rows_per_client),
            "rounds": epochs or paper_epochs,
            "strategy": "fedavg",
            "partition": "iid",
            "seed": seed,
            "dp": dp,
            "client_cpus": float(threads),
            "client_threads": threads,
        },
    }


def run_row(raw: dict) -> dict:
    from behemoth.config import config_from_dict
    from behemoth.federated.metrics import attach_run_log, read_records
    from behemoth.federated.simulate import run_simulated
    from behemoth.runs import create_run_dir, run_path, write_config

    cfg = config_from_dict(raw)
    run_dir = create_run_dir(run_path(cfg), overwrite=True)
    write_config(run_dir, cfg)
    attach_run_log(run_dir, stream=sys.stderr)
    started = time.perf_counter()
    run_simulated(cfg, run_dir, resume=False)
    rounds = [r for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "round"]
    return {
        "run": str(run_dir),
        "rounds": rounds[-1]["round"],
        "acc": rounds[-1]["test.acc"],
        "epsilon": rounds[-1]["epsilon"],
        "noise_multiplier": rounds[-1]["noise_multiplier"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows: {', '.join(ROWS)}")
    parser.add_argument("--clients", type=int, default=1, help="silos (each holds 60000/K images)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="rounds per row (default: the example's epochs)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each row runs once per seed")
    parser.add_argument("--runs-dir", default=str(Path(tempfile.gettempdir()) / "behemoth-bench-dp"))
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    sys.path.insert(
        0, str(Path(__file__).resolve().parent)
    )  # the model factory's module, for Ray's workers too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from behemoth.models.trust import ENV_VAR, trust_code
    from bench.results import kept_rows_note, merge_rows, spread, write_result

    # model.name = "dp_mnist:sample_convnet" imports this file's factory: allowed here and in Ray's workers
    trust_code("dp_mnist")
    os.environ[ENV_VAR] = "dp_mnist"

    seeds = [int(seed) for seed in args.seeds.split(",")]
    results: dict[str, dict[int, dict]] = {}
    for name in args.rows.split(","):
        for seed in seeds:
            raw = row_config(name, args.clients, args.epochs, Path(args.runs_dir), seed)
            raw["name"] += f"-seed{seed}"
            results.setdefault(name, {})[seed] = run_row(raw)
            print(f"{name} seed {seed}: {json.dumps(results[name][seed])}", file=sys.stderr, flush=True)
    command = " ".join(["python"] + sys.argv)
    print(
        f"\nDP-SGD federated MNIST, {args.clients} client(s), sample rate {SAMPLE_RATE}, delta 1e-5, "
        f"seeds {args.seeds} (medians)   ({command})"
    )
    print(
        f"{'row':8} {'epochs':>6} {'sigma':>6} {'eps (ours)':>10} {'acc (ours)':>10} {'eps (Opacus)':>12} "
        f"{'acc (Opacus)':>12} {'minutes':>8}"
    )
    figures = {}
    for name, by_seed in results.items():
        eps, epochs, _, _, _, acc = ROWS[name]
        runs = list(by_seed.values())
        ours = spread([res["acc"] for res in runs])
        epsilon = statistics.median(res["epsilon"] for res in runs)
        sigma = statistics.median(res["noise_multiplier"] for res in runs)
        minutes = statistics.median(res["seconds"] for res in runs) / 60
        print(
            f"{name:8} {runs[0]['rounds']:6d} {sigma:6.3f} {epsilon:10.2f} "
            f"{ours['median']:10.2%} {eps:12.2f} {acc:12.2%} {minutes:8.1f}"
        )
        figures[name] = {
            "epochs": runs[0]["rounds"],
            "sigma": sigma,
            "epsilon": epsilon,
            "acc": ours,
            "seeds": seeds,
            "opacus_epsilon": eps,
            "opacus_acc": acc,
        }
    rows = merge_rows("dp_mnist", figures)  # --rows re-runs some rows: the others stay as they were
    opacus = "the Opacus figures are the mean of 10 runs"
    write_result(
        "dp_mnist",
        {"rows": rows},
        {
            "training_precision": "fp32",
            "evaluation_precision": "fp32 (server, test set)",
            "seeds": seeds,
            "selection": "the Opacus example's settings, not tuned here",
            "deviations": [opacus, *kept_rows_note(rows, list(figures))],
        },
        reduced=None if args.epochs is None else f"{args.epochs} epochs per row (noise re-solved)",
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"command": command, "results": results}, indent=2))


if __name__ == "__main__":
    main()
