"""Every shipped training recipe, SIGKILLed at a random step and resumed with `behemoth train --resume`, ends
with the same weights, bit for bit, as the same recipe run without a break.

One row per recipe in configs/ (the tune and federated recipes have their own tests below). Each row
shortens its recipe with overrides so it runs in seconds, keeps the features the recipe exercises, and
adds some the recipe does not have, so that every feature a resume must restore appears in some row:

| feature                         | rows                                        |
|---------------------------------|---------------------------------------------|
| dropout (global CPU RNG)        | gpt-text, gpt-bpe, fashion, mnist-augment    |
| augmentation, mixup             | mnist-augment                               |
| sampling: shuffle               | digits, gpt-*, rnn-text, vit-mnist, fashion  |
| sampling: random (+replacement) | lenet-caffe (mnist-mlp with replacement)     |
| sampling: systematic            | lenet5                                      |
| sampling: stratified            | mnist-augment                               |
| sampling: balanced              | rnn                                         |
| gradient accumulation           | fashion (2), vit-mnist (3)                  |
| early stopping                  | digits (stops early), fashion               |
| mid-epoch evaluation            | gpt-text, gpt-bpe, rnn-text, mnist-cnn      |
| bf16 autocast                   | every recipe with precision = "bf16"        |
| param_dtype = "bf16"            | mnist-mlp                                   |
| 8-bit AdamW (torchao)           | rnn-text-adamw8bit (slow: compiles)         |
| BPE tokenizer                   | gpt-bpe (slow)                              |
| DDP, FSDP (2 gloo processes)    | mnist-augment-ddp, gpt-text-fsdp            |
| fp16 + GradScaler on CUDA       | digits-fp16-cuda (skipped without CUDA)     |

The kill lands at a step drawn at random past the first checkpoint; the step and the seed that drew it are
in every failure message.

Marked slow (`pytest -m slow` runs them), to keep the suite within its time: lenet-caffe, rnn and vit-mnist,
whose features faster tests resume in-process (tests/test_sampling.py resumes the random and balanced feeds
mid-epoch; tests/test_train_loop.py resumes accumulation with dropout bit for bit), gpt-bpe (gpt-text kills
and resumes the same GPT; tests/test_exact_resume.py resumes a BPE run from its saved tokenizer), and the
8-bit row (tests/test_memory_savers.py resumes its state in-process).
`test_every_shipped_training_recipe_has_a_row` counts the slow rows too.
"""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, behemoth_cmd, failure_text, subprocess_env

EVERY = 4  # a checkpoint every EVERY steps (and at each epoch's end)
MAX_STEPS = 24

# shortening: small models, few rows, a step every few milliseconds
MNIST_SMALL = ["data.train_limit=2000", "data.test_limit=100", "data.batch_size=32", "train.log_every=1"]
GPT_SMALL = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "data.block_size=32",
    "data.batch_size=16",
    "data.train_limit=160",  # 10 steps an epoch: the run crosses epoch boundaries
    "data.val_fraction=0.002",
    "data.test_limit=32",
    "train.warmup=3",
    "train.eval_every_steps=6",  # mid-epoch evaluation
    "train.log_every=1",
]
RNN_TEXT_SMALL = [
    "model.embed_dim=16",
    "model.hidden_size=32",
    "data.block_size=32",
    "data.batch_size=16",
    "data.train_limit=160",
    "data.val_fraction=0.002",
    "data.test_limit=32",
    "train.warmup=3",
    "train.eval_every_steps=6",
    "train.log_every=1",
]


def row(recipe: str, *overrides: str, nproc: int = 1, marks: tuple = ()) -> pytest.param:
    return pytest.param(recipe, list(overrides), nproc, marks=marks, id=None)


NEEDS_CUDA = (pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))
ROWS = {
    "digits": row(
        "digits",
        "data.batch_size=128",  # ~10 steps an epoch; early stopping decides at each epoch's end
        "train.early_stop.patience=1",
        "train.early_stop.min_delta=0.2",  # stops after its second epoch: the counter must survive the kill
        "train.log_every=1",
    ),
    "fashion": row(
        "fashion",
        *MNIST_SMALL,
        "model.channels=[8,16]",
        "model.hidden=32",
        "train.accumulate=2",
        "train.early_stop.patience=5",
    ),
    "gpt-bpe": row(
        "gpt-bpe",
        *GPT_SMALL,
        "data.vocab_size=300",
        marks=(pytest.mark.slow,),  # a faster test covers its feature: see the note above the table
    ),
    "gpt-text": row("gpt-text", *GPT_SMALL),
    "lenet-caffe": row(
        "lenet-caffe",
        *MNIST_SMALL,
        "data.sampling.kind=random",
        "data.sampling.fraction=0.5",
        marks=(pytest.mark.slow,),  # a faster test covers its feature: see the note above the table
    ),
    "lenet5": row(
        "lenet5", *MNIST_SMALL, "data.sampling.kind=systematic", "data.sampling.size=640", "train.step_size=1"
    ),
    "mnist-augment": row(
        "mnist-augment",
        *MNIST_SMALL,
        "model.channels=[8,16]",
        "model.hidden=32",
        "model.dropout=0.25",
        "data.train_limit=3000",  # stratified 10% of the training part: 9 steps an epoch
    ),
    "mnist-cnn": row(
        "mnist-cnn", *MNIST_SMALL, "model.channels=[8,16]", "model.hidden=32", "train.eval_every_steps=5"
    ),
    "mnist-mlp": row(
        "mnist-mlp",
        *MNIST_SMALL,
        "train.warmup=3",
        "train.param_dtype=bf16",
        "data.sampling.kind=random",
        "data.sampling.replacement=true",
        "data.sampling.fraction=0.4",
    ),
    "rnn-text": row("rnn-text", *RNN_TEXT_SMALL),
    "rnn": row(
        "rnn",
        *MNIST_SMALL,
        "model.hidden_size=32",
        "data.sampling.kind=balanced",
        "data.sampling.size=320",
        marks=(pytest.mark.slow,),  # a faster test covers its feature: see the note above the table
    ),
    "vit-mnist": row(
        "vit-mnist",
        *MNIST_SMALL,
        "model.dim=32",
        "model.depth=2",
        "model.heads=2",
        "train.accumulate=3",
        marks=(pytest.mark.slow,),  # a faster test covers its feature: see the note above the table
    ),
    "rnn-text-adamw8bit": row(
        "rnn-text",
        *RNN_TEXT_SMALL,
        "model.hidden_size=64",  # tensors of >= 4096 values get 8-bit states
        "train.optimizer=adamw8bit",
        marks=(
            pytest.mark.slow,
        ),  # torch.compile of torchao's step; test_memory_savers covers its state in-process
    ),
    "mnist-augment-ddp": row(  # each rank draws its own augmentation and dropout
        "mnist-augment",
        *MNIST_SMALL,
        "model.channels=[8,16]",
        "model.hidden=32",
        "model.dropout=0.25",
        "data.train_limit=6000",
        "train.strategy=ddp",
        nproc=2,
    ),
    "gpt-text-fsdp": row("gpt-text", *GPT_SMALL, "train.strategy=fsdp", nproc=2),
    "digits-fp16-cuda": row(  # the GradScaler's state and the CUDA RNG (dropout) must survive the kill
        "digits",
        "data.batch_size=64",
        "model.dropout=0.2",
        "train.device=cuda",
        "train.precision=fp16",
        "train.log_every=1",
        marks=NEEDS_CUDA,
    ),
}
TRAINING_RECIPES = {p.stem for p in (REPO / "configs").glob("*.toml")} - {
    "digits-tune",  # test_a_killed_tune_study_* below
    "federated-digits",  # test_a_killed_federation_* below
    "federated-mnist",  # the same engine as federated-digits at MNIST's size
}


def test_every_shipped_training_recipe_has_a_row():
    covered = {param.values[0] for param in ROWS.values()}
    assert TRAINING_RECIPES <= covered, f"recipes without a resume row: {sorted(TRAINING_RECIPES - covered)}"


def spawn(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def process_tree(root: int) -> list[int]:
    """`root` and every process below it. torchrun starts its workers in sessions of their own, so a kill of
    the launcher's process group would leave them running."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


def kill_tree(root: int) -> None:
    """SIGKILL a process and all it started, as a machine that loses power would."""
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def train_args(recipe: str, overrides: list[str], nproc: int, runs: Path, name: str) -> list[str]:
    launch = ["--nproc", str(nproc)] if nproc > 1 else []
    common = [f"train.max_steps={MAX_STEPS}", f"train.checkpoint.every_steps={EVERY}"]
    return [recipe, *overrides, *common, f"runs_dir={str(runs)!r}", f"name={name}", *launch]


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, failure_text(out + err)


def logged_steps(metrics: Path) -> list[int]:
    if not metrics.is_file():
        return []
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "train.loss" in r]


def kill_at(process: subprocess.Popen, metrics: Path, step: int, where: str, timeout: float = 300) -> int:
    """SIGKILL the process tree as soon as metrics.jsonl reports `step`; return the last step it reported."""
    deadline = time.monotonic() + timeout
    while max(logged_steps(metrics), default=0) < step:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"{where}: the run ended (rc {process.returncode}) first\n{failure_text(out + err)}")
        assert time.monotonic() < deadline, f"{where}: no step {step} after {timeout}s"
        time.sleep(0.002)
    kill_tree(process.pid)
    process.communicate()
    return max(logged_steps(metrics), default=0)


@pytest.mark.parametrize(("recipe", "overrides", "nproc"), list(ROWS.values()), ids=list(ROWS))
def test_a_killed_recipe_resumes_bitwise(tmp_path, recipe, overrides, nproc):
    seed = random.SystemRandom().randrange(2**32)
    kill_step = random.Random(seed).randint(EVERY + 1, 14)  # past the first checkpoint, before the end
    where = f"{recipe} killed at step {kill_step} (seed {seed})"
    straight = spawn(behemoth_cmd("train", *train_args(recipe, overrides, nproc, tmp_path, "straight")))
    killed = spawn(behemoth_cmd("train", *train_args(recipe, overrides, nproc, tmp_path, "killed")))
    reached = kill_at(killed, tmp_path / "killed" / "metrics.jsonl", kill_step, where)
    where = f"{where}, last logged {reached}"
    assert not (tmp_path / "killed" / "model.safetensors").exists(), f"{where}: it finished before the kill"
    resume = ["--resume", str(tmp_path / "killed"), *(["--nproc", str(nproc)] if nproc > 1 else [])]
    finish(spawn(behemoth_cmd("train", *resume)))
    finish(straight)

    summaries = [
        json.loads((tmp_path / name / "summary.json").read_text()) for name in ("straight", "killed")
    ]
    assert summaries[0]["steps"] == summaries[1]["steps"] > reached, where
    assert summaries[0].get("stop_reason") == summaries[1].get("stop_reason"), where
    expected, resumed = (
        load_file(str(tmp_path / name / "model.safetensors")) for name in ("straight", "killed")
    )
    assert expected.keys() == resumed.keys(), where
    differ = [key for key in expected if not torch.equal(expected[key], resumed[key])]
    assert not differ, f"{where}: {len(differ)}/{len(expected)} tensors differ, e.g. {differ[:5]}"
    # what a finished run reports (the table trains every recipe: tests/test_cli.py no longer does)
    assert 0.0 <= summaries[0]["test"]["acc"] <= 1.0 and summaries[0]["test"]["loss"] > 0, where
    spec = json.loads((tmp_path / "straight" / "spec.json").read_text())["spec"]
    images = len(spec["input_shape"]) == 3
    assert (tmp_path / "straight" / "data_preview.png").is_file() == images, where  # what the model sees
    # the resumed run logs each step once more after the checkpoint it went back to, never a gap
    steps = logged_steps(tmp_path / "killed" / "metrics.jsonl")
    assert sorted(set(steps)) == list(range(1, summaries[0]["steps"] + 1)), where


# ---- federated rounds: the recipe's engine, killed after a round's checkpoint ----

FEDERATED = [
    "federate.rounds=4",
    "federate.target_accuracy=1.0",  # never stops early: four rounds either way
    "federate.local_epochs=1",
    "model.dropout=0.2",  # clients draw dropout masks from their per-round seeds
    "federate.fraction=0.5",  # 2 of 4 clients a round: the seeded draw must repeat after the kill too
    "federate.min_clients=2",
]


@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param("fedavg", marks=pytest.mark.slow),  # fedadam's row runs the same aggregation and more
        "fedadam",  # the server's moments must survive the kill too
    ],
)
def test_a_killed_federation_resumes_bitwise(tmp_path, strategy):
    def start(name: str) -> subprocess.Popen:
        overrides = [
            *FEDERATED,
            f"federate.strategy={strategy}",
            f"runs_dir={str(tmp_path)!r}",
            f"name={name}",
        ]
        return spawn(behemoth_cmd("federate", "federated-digits", *overrides))

    straight, killed = start("straight"), start("killed")
    latest, deadline = tmp_path / "killed" / "federated" / "latest", time.monotonic() + 300
    while not (latest.is_file() and latest.read_text() >= "round-0002"):
        assert killed.poll() is None, failure_text("".join(killed.communicate()))
        assert time.monotonic() < deadline, "no round 2 checkpoint after 300 s"
        time.sleep(0.01)
    kill_tree(killed.pid)
    killed.communicate()
    where = f"{strategy}: killed after {latest.read_text()}"
    assert not (tmp_path / "killed" / "summary.json").exists(), f"{where}: it finished before the kill"
    finish(spawn(behemoth_cmd("federate", "--resume", str(tmp_path / "killed"))))
    finish(straight)

    expected, resumed = (
        load_file(str(tmp_path / name / "model.safetensors")) for name in ("straight", "killed")
    )
    differ = [key for key in expected if not torch.equal(expected[key], resumed[key])]
    assert not differ, f"{where}: {len(differ)}/{len(expected)} tensors differ"
    rounds = [
        json.loads((tmp_path / n / "summary.json").read_text())["rounds"] for n in ("straight", "killed")
    ]
    assert rounds == [4, 4], where
    drawn = [sampled_partitions(tmp_path / n / "metrics.jsonl") for n in ("straight", "killed")]
    assert drawn[0] == drawn[1], f"{where}: sampled {drawn}"
    assert all(len(p) == 2 for p in drawn[0].values()) and len(set(drawn[0].values())) > 1, drawn[0]


def sampled_partitions(metrics: Path) -> dict[int, tuple[int, ...]]:
    """Each round's averaged partitions (a resumed run's repeated round: its last record)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {r["round"]: tuple(r["clients.partitions"]) for r in records if "clients.partitions" in r}
