"""Language-model training throughput (issue #20): behemoth against the tools people would otherwise use.

Row 1, pre-training a small GPT: behemoth's GPT (behemoth/configs/gpt-text.toml: 4 layers x 128 wide, 4
heads, T = 128, batch 32, dropout 0.1, byte-level KJV, bf16 autocast as the recipe sets) against
karpathy/nanoGPT's own train.py and model.py, run as a subprocess (fp32: its train.py uses no
autocast on CPU; no torch.compile on either side; its fused AdamW is CUDA-only, so both use the for-each
kernel). nanoGPT's files come from --nanogpt DIR (a checkout) or, by default, the stored mirror
(/work/.mirror/karpathy+nanoGPT/repo, read with `git show HEAD:<file>`). Both sides get the same data
(behemoth's train split written as nanoGPT's train.bin, uint16 bytes; vocabulary 256 via meta.pkl), the same
architecture (biases on), optimizer (AdamW, lr 1e-3, betas 0.9/0.95, weight decay 0.1 on matrices, clip 1.0)
and schedule (10 warm-up steps, cosine to 1e-4 at the last step). Dropout differs by design: behemoth's GPT
draws its masks through behemoth/models/dropout.py (four elements per 64-bit draw, p rounded to 1/65536),
nanoGPT through torch's dropout (one draw per element); the validation loss after the same steps shows
whether training suffers. Round r seeds both sides with r (nanoGPT: 1337 + r in its train.py, which has no
seed option; the one line of its files changed), so the losses are medians over seeds. After the same steps
both models are scored by one function on the same 512 windows of behemoth's validation split (eval mode,
fp32).

Row 2, LoRA fine-tuning a small Llama (4 layers x 256, 8 heads, vocabulary 256, random init saved with
save_pretrained): behemoth `[train.lora]` (model.name = "hf", r = 8 on q_proj/v_proj) against transformers'
Trainer with peft's get_peft_model on the same directory, data (behemoth's KJV train windows), batch (16 x
128), optimizer (AdamW lr 1e-3, no decay, no clipping) and precision (bf16 autocast on both). behemoth
trains it with transformers' eager attention (its CPU choice at T = 128, models/hf_attention.py), Trainer
with from_pretrained's default (sdpa); Trainer is also timed with attn_implementation = "eager", to show
how much of the ratio that choice is.

Timing: per-step wall time from each side's own loop (nanoGPT's printed `time`; a step-end hook in behemoth;
a TrainerCallback in Trainer), the first 5 steps and any evaluating step dropped, median per round; rounds
interleave the two sides; the figure is the median over rounds of tokens/s (batch x T / step seconds).
The machine this runs on is shared: the figures are noisy, the ratio (same run, interleaved) less so.

Run: .venv/bin/python bench/lm_throughput.py                 (100 steps per side, 3 rounds)
     .venv/bin/python bench/lm_throughput.py --quick         (20 steps, 1 round: a smoke run)
"""

import argparse
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.lm_throughput_lora import lora_row  # noqa: E402
from bench.results import kept_rows_note, merge_rows, spread, write_result  # noqa: E402
from bench.throughput_parts import SEQ, steady, summarize, timed_behemoth_run  # noqa: E402

MIRROR = Path("/work/.mirror/karpathy+nanoGPT/repo")
NANOGPT_FILES = ("train.py", "model.py", "configurator.py")
GPT = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.1}
BATCH, VAL_WINDOWS = 32, 512
TARGETS = {"gpt": 1.5, "lora": 1.2}


# ---- row 1: behemoth's GPT vs nanoGPT


def gpt_config(steps: int, run_root: Path, precision: str = "bf16", seed: int = 0):
    from behemoth.pipeline import load_config

    return load_config(
        REPO / "behemoth" / "configs" / "gpt-text.toml",
        [
            f"runs_dir={str(run_root)!r}",
            f"train.max_steps={steps}",
            "train.epochs=1",
            "train.warmup=10",
            f"train.eval_every_steps={10**6}",
            f"train.log_every={10**6}",
            f"train.precision={precision}",
            f"train.seed={seed}",
        ],
    )


def behemoth_gpt(
    steps: int, run_root: Path, precision: str = "bf16", seed: int = 0
) -> tuple[list[float], torch.nn.Module, object]:
    seconds, parts = timed_behemoth_run(gpt_config(steps, run_root, precision, seed))
    return seconds, parts.model, parts.data


def nanogpt_source(folder: Path, checkout: Path | None) -> None:
    for name in NANOGPT_FILES:
        if checkout is not None:
            text = (checkout / name).read_text()
        else:
            done = subprocess.run(
                ["git", f"--git-dir={MIRROR}", "show", f"HEAD:{name}"], capture_output=True, text=True
            )
            if done.returncode != 0:
                sys.exit(f"nanoGPT's {name} not found: pass --nanogpt DIR (a karpathy/nanoGPT checkout)")
            text = done.stdout
        (folder / name).write_text(text)


def nanogpt_data(folder: Path, data) -> None:
    """behemoth's splits as nanoGPT's data/kjv/{train,val}.bin (uint16 token ids) and meta.pkl."""
    kjv = folder / "data" / "kjv"
    kjv.mkdir(parents=True, exist_ok=True)
    for split, tensors in (("train", data.train), ("val", data.val)):
        # each window x[0..T-1] plus its last target: the 129 bytes it was cut from
        stream = torch.cat([tensors.x, tensors.y[:, -1:]], dim=1).flatten().numpy().astype(np.uint16)
        stream.tofile(kjv / f"{split}.bin")
    with (kjv / "meta.pkl").open("wb") as f:  # nanoGPT reads vocab_size from here (our own file)
        pickle.dump({"vocab_size": 256}, f)


def seed_nanogpt(folder: Path, seed: int) -> None:
    """nanoGPT's train.py seeds with 1337 and has no option to change it: round `seed` gets 1337 + seed (the
    one line of its files this bench changes)."""
    train = folder / "train.py"
    seeding = r"torch\.manual_seed\(\d+ \+ seed_offset\)"
    text, found = re.subn(seeding, f"torch.manual_seed({1337 + seed} + seed_offset)", train.read_text())
    if found != 1:
        sys.exit("nanoGPT's train.py: its 'torch.manual_seed(1337 + seed_offset)' line was not found")
    train.write_text(text)


def nanogpt_run(folder: Path, steps: int) -> tuple[list[float], torch.nn.Module]:
    out = folder / "out"
    args = [
        "--dataset=kjv",
        "--device=cpu",
        "--compile=False",
        "--dtype=float32",
        f"--out_dir={out}",
        f"--batch_size={BATCH}",
        f"--block_size={GPT['block_size']}",
        f"--n_layer={GPT['n_layer']}",
        f"--n_head={GPT['n_head']}",
        f"--n_embd={GPT['n_embd']}",
        f"--dropout={GPT['dropout']}",
        "--bias=True",
        "--gradient_accumulation_steps=1",
        f"--max_iters={steps}",
        f"--lr_decay_iters={steps}",
        f"--eval_interval={steps}",  # evaluates (and saves) after exactly `steps` steps
        "--eval_iters=1",
        "--learning_rate=1e-3",
        "--min_lr=1e-4",
        "--warmup_iters=10",
        "--weight_decay=0.1",
        "--beta2=0.95",
        "--grad_clip=1.0",
        "--log_interval=1",
    ]
    done = subprocess.run(
        [sys.executable, "-u", "train.py", *args], cwd=folder, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"nanoGPT's train.py failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    times = [
        float(ms) / 1000 for _, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", done.stdout)
    ]
    # iter 0 and iter `steps` include an evaluation; iter `steps` is one step past the saved model
    times = times[1:steps]
    sys.path.insert(0, str(folder))
    from model import GPT as NanoGPT  # noqa: PLC0415 (nanoGPT's model.py, from the folder above)
    from model import GPTConfig

    checkpoint = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
    model = NanoGPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()})
    return times, model


@torch.no_grad()
def val_loss(forward, data) -> float:
    """Mean next-token cross-entropy over the first VAL_WINDOWS validation windows (fp32, eval mode)."""
    x, y = data.val.x[:VAL_WINDOWS], data.val.y[:VAL_WINDOWS]
    losses = [
        F.cross_entropy(forward(xb).float().flatten(0, 1), yb.flatten()).item()
        for xb, yb in zip(x.split(128), y.split(128))
    ]
    return statistics.mean(losses)


def gpt_row(steps: int, rounds: int, checkout: Path | None, root: Path) -> dict:
    nano_dir = root / "nanogpt"
    nano_dir.mkdir()
    nanogpt_source(nano_dir, checkout)
    runs: list[dict] = []
    for r in range(rounds):  # round r: seed r on both sides (nanoGPT's 1337 + r)
        b_times, b_model, data = behemoth_gpt(steps, root / f"runs{r}", seed=r)
        if r == 0:
            nanogpt_data(nano_dir, data)
        seed_nanogpt(nano_dir, r)
        n_times, n_model = nanogpt_run(nano_dir, steps)
        # nanoGPT trains in fp32 on a CPU (no autocast there): behemoth in fp32 too is the same-precision pair
        f_times, f_model, _ = behemoth_gpt(steps, root / f"runs-fp32-{r}", "fp32", seed=r)
        b_model.eval()
        n_model.eval()
        f_model.eval()
        runs.append(
            {
                "behemoth_tokens_per_s": BATCH * SEQ / steady(b_times),
                "behemoth_fp32_tokens_per_s": BATCH * SEQ / steady(f_times),
                "nanogpt_tokens_per_s": BATCH * SEQ / steady(n_times),
                "behemoth_val_loss": val_loss(b_model, data),
                "behemoth_fp32_val_loss": val_loss(f_model, data),
                "nanogpt_val_loss": val_loss(lambda xb: n_model(xb, xb)[0], data),
                "behemoth_step_seconds": b_times,
                "nanogpt_step_seconds": n_times,
            }
        )
        print(
            f"round {r + 1} gpt: behemoth {runs[-1]['behemoth_tokens_per_s']:.0f} tok/s "
            f"(val {runs[-1]['behemoth_val_loss']:.3f}), "
            f"behemoth fp32 {runs[-1]['behemoth_fp32_tokens_per_s']:.0f} tok/s "
            f"(val {runs[-1]['behemoth_fp32_val_loss']:.3f}), "
            f"nanoGPT {runs[-1]['nanogpt_tokens_per_s']:.0f} tok/s "
            f"(val {runs[-1]['nanogpt_val_loss']:.3f})",
            flush=True,
        )
    row = summarize(runs, "nanogpt")
    fp32 = [r["behemoth_fp32_tokens_per_s"] for r in runs]
    row["behemoth_fp32_tokens_per_s"] = spread(fp32)
    row["speedup_fp32"] = statistics.median(fp32) / row["nanogpt_tokens_per_s"]["median"]
    row["behemoth_fp32_val_loss"] = spread([r["behemoth_fp32_val_loss"] for r in runs])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 round")
    parser.add_argument(
        "--nanogpt", type=Path, help="a karpathy/nanoGPT checkout (default: the stored mirror)"
    )
    parser.add_argument("--only", choices=["gpt", "lora"], help="one row only")
    args = parser.parse_args()
    steps, rounds = (20, 1) if args.quick else (args.steps, args.rounds)
    figures: dict = {"steps": steps, "rounds": rounds, "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="lm-throughput-") as tmp:
        if args.only in (None, "gpt"):
            figures["gpt"] = gpt_row(steps, rounds, args.nanogpt, Path(tmp))
        if args.only in (None, "lora"):
            figures["lora"] = lora_row(steps, rounds, Path(tmp))
            figures["lora_compiled"] = lora_row(steps, rounds, Path(tmp), compiled=True)
    fresh = list(figures)
    if args.only:  # the other row keeps its earlier measurement
        figures = merge_rows("lm_throughput-quick" if args.quick else "lm_throughput", figures, under=None)
    compared = [("gpt", "nanoGPT", "nanogpt"), ("lora", "Trainer", "trainer")]
    for row, other, key in [*compared, ("lora_compiled", "Trainer (torch_compile)", "trainer")]:
        if row in figures:
            f = figures[row]
            theirs = f[f"{key}_tokens_per_s"]["median"]
            target = TARGETS[row.removesuffix("_compiled")]
            verdict = "meets" if f["speedup"] >= target else "misses"
            print(
                f"{row}: behemoth {f['behemoth_tokens_per_s']['median']:.0f} tok/s vs {other} "
                f"{theirs:.0f} tok/s = {f['speedup']:.2f}x ({verdict} the target >= {target}x)"
            )
    if "gpt" in figures:
        g = figures["gpt"]
        print(f"gpt, both fp32 (same precision): {g['speedup_fp32']:.2f}x nanoGPT")
        print(
            f"gpt val loss after {steps} steps: behemoth {g['behemoth_val_loss']['median']:.3f}, "
            f"nanoGPT {g['nanogpt_val_loss']['median']:.3f}"
        )
    reduced = "--quick: 20 steps, 1 round" if args.quick else None
    if not args.quick and (args.steps, args.rounds) != (100, 3):  # --only: the other row is kept, not cut
        reduced = f"steps {steps}, rounds {rounds}"
    write_result(
        "lm_throughput-quick" if args.quick else "lm_throughput",
        figures,
        {
            "training_precision": "gpt: behemoth bf16 autocast (its gpt-text recipe) and fp32, nanoGPT fp32 "
            "(its only CPU precision); lora: bf16 autocast on both",
            "evaluation_precision": "fp32, eval mode, 512 validation windows, same function for both",
            "selection": "nanoGPT and Trainer get behemoth's recipe's hyperparameters; no tuning",
            "seeds": list(range(rounds)),
            "deviations": [
                "shared 2-core machine (its load at the end is recorded): timings noisy, the ratio less so",
                "gpt: behemoth's dropout draws 16 bits per element (models/dropout.py), nanoGPT's torch's",
                "lora: behemoth trains with transformers' eager attention (its CPU choice at T = 128), "
                "Trainer with its default sdpa; Trainer with eager attention is shown beside",
                *kept_rows_note(figures, fresh),
            ],
        },
        reduced=reduced,
    )


if __name__ == "__main__":
    main()
