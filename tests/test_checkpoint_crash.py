"""Checkpoints survive a failure or a kill at any instant: `latest_checkpoint` always gives one that loads,
with the weights of the last step whose save went through; corrupt ones are skipped with a warning."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

from behemoth.errors import RunDirError
from behemoth.training import checkpoint as ckpt
from behemoth.training.checkpoint import (
    CheckpointWarning,
    checkpoint_weights,
    clean_stale_temporaries,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from tests.conftest import failure_text, subprocess_env


@pytest.fixture(autouse=True)
def keep_rng():
    """load_checkpoint restores the saved RNG state: give the other tests theirs back."""
    state = rng_state()
    yield
    set_rng_state(state)


def model_at(value: float) -> torch.nn.Module:
    """A small model whose every weight is `value`: what a checkpoint holds is easy to tell."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)
    return model


def save(run: Path, step: int, value: float, keep_last: int = 2) -> Path:
    model = model_at(value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()  # momentum buffers: the optimizer state is not empty
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)
    return save_checkpoint(run, step, model, optimizer, {"position": {"step": step}}, keep_last)


def loaded_value(path: Path) -> float:
    """Load `path` as the training loop does and return the one value all its weights hold."""
    model = model_at(-1.0)
    state = load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    values = torch.cat([p.detach().flatten() for p in model.parameters()]).unique()
    assert len(values) == 1, f"{path} holds a mix of weights"
    assert state["position"]["step"] == int(values.item())
    return values.item()


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.fixture
def sharded(request, monkeypatch):
    """Run a test both ways: model.safetensors, and dcp/ shards (as fsdp writes them, from one process)."""
    if request.param:
        monkeypatch.setattr(ckpt, "holds_shard", lambda model: True)
    return request.param


class FailAt:
    """Stands in for a function and raises at its `at`-th call, as a full disk or a dying device would."""

    def __init__(self, real, at: int) -> None:
        self.real, self.at, self.calls = real, at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise OSError(errno.EIO, f"injected failure at call {self.at}")
        return self.real(*args, **kwargs)


TARGETS = {
    "os.replace": (os, "replace"),
    "os.fsync": (os, "fsync"),
    "safetensors save": (ckpt, "save_file"),
    "torch.save": (torch, "save"),
    "manifest write": (ckpt, "write_manifest"),
}


@pytest.mark.filterwarnings("ignore::behemoth.training.checkpoint.CheckpointWarning")  # fallbacks: expected
@pytest.mark.parametrize("sharded", [False, True], ids=["safetensors", "dcp"], indirect=True)
@pytest.mark.parametrize("rewrite", [False, True], ids=["next-step", "same-step"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_a_failure_at_any_call_leaves_the_last_saved_step_loadable(
    tmp_path, monkeypatch, target, rewrite, sharded
):
    """Fail the k-th call of `target` during a save, for k = 1, 2, ... until the save no longer makes that
    many calls: each time the last committed checkpoint loads, and the next save cleans up."""
    if sharded and target == "safetensors save":
        pytest.skip("a sharded checkpoint has no safetensors file")
    owner, name = TARGETS[target]
    step, value = (1, 1.5) if rewrite else (2, 2.0)  # loaded_value checks that int(value) is the step
    for at in range(1, 100):
        run = tmp_path / f"fail-{at}"
        save(run, 1, 1.0)
        pointed: list[str] = []  # `latest` renamed onto during the save: the commit happened
        real_replace = os.replace

        def spy(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if Path(dst).name == "latest":
                pointed.append(str(dst))

        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", spy)
            injected = FailAt(getattr(owner, name), at)
            patch.setattr(owner, name, injected)
            try:
                save(run, step, value)
                raised = None
            except (Exception, CheckpointException) as exc:  # DCP's wraps what its writer raised
                raised = exc
        if injected.calls < at:
            assert raised is None
            break  # the save made fewer than `at` calls: every one of them has failed once
        committed = bool(pointed)
        assert raised is not None or committed, f"call {at} failed silently before the commit"
        path = latest_checkpoint(run)
        assert path is not None and loaded_value(path) == (value if committed else 1.0), (target, at)

        save(run, step + 1, step + 1.0)  # the run goes on: no leftovers, the usual two checkpoints
        names = checkpoint_names(run)
        assert len(names) == 3 and names[0] == "latest" and names[2] == f"step-{step + 1:08d}", (at, names)
        assert loaded_value(latest_checkpoint(run)) == step + 1.0
    assert at > 1, f"a save never calls {target}"


@pytest.mark.parametrize("sharded", [False, True], ids=["safetensors", "dcp"], indirect=True)
def test_the_same_step_written_twice_leaves_one_loadable_directory(tmp_path, sharded):
    for value in (1.0, 1.5, 1.75):  # the loop rewrites a step at the end of an epoch; a resume may again
        save(tmp_path, 1, value)
        steps = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-")]
        assert [p.name for p in steps] == ["step-00000001"] and latest_checkpoint(tmp_path) == steps[0]
        assert loaded_value(steps[0]) == value
        assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert json.loads((steps[0] / "manifest.json").read_text())["step"] == 1


@pytest.mark.parametrize(
    "sharded, victim",
    [(False, "model.safetensors"), (False, "state.pt"), (True, "__0_0.distcp")],
    ids=["safetensors", "state", "dcp"],
    indirect=["sharded"],
)
def test_a_flipped_byte_skips_the_checkpoint_with_a_warning_naming_the_file(tmp_path, sharded, victim):
    save(tmp_path, 1, 1.0)
    newest = save(tmp_path, 2, 2.0)
    file = next(p for p in newest.rglob(victim))
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))

    with pytest.warns(CheckpointWarning, match=f"skipping checkpoint step-00000002: .*{victim}.* sha256"):
        path = latest_checkpoint(tmp_path)
    assert path.name == "step-00000001" and loaded_value(path) == 1.0
    with pytest.raises(RunDirError, match=victim):
        loaded_value(newest)  # asked for by name, it is refused rather than loaded
    with pytest.raises(RunDirError, match=victim):
        checkpoint_weights(newest)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda path: (path / "state.pt").unlink(), "state.pt is missing"),
        (lambda path: (path / "manifest.json").unlink(), "manifest.json is missing .state.pt says"),
        (lambda path: (path / "manifest.json").write_text("{"), "manifest.json is unreadable"),
        (lambda path: (path / "model.safetensors").write_bytes(b"short"), "model.safetensors has 5 bytes"),
        (lambda path: os.truncate(path / "model.safetensors", 100), "model.safetensors has 100 bytes"),
    ],
    ids=["missing-file", "missing-manifest", "bad-manifest", "wrong-size", "truncated"],
)
def test_an_incomplete_checkpoint_is_skipped(tmp_path, damage, message):
    save(tmp_path, 1, 1.0)
    damage(save(tmp_path, 2, 2.0))
    with pytest.warns(CheckpointWarning, match=message):
        path = latest_checkpoint(tmp_path)
    assert loaded_value(path) == 1.0


def test_without_a_good_checkpoint_there_is_none(tmp_path):
    (save(tmp_path, 1, 1.0) / "state.pt").unlink()
    with pytest.warns(CheckpointWarning, match="state.pt is missing"):
        assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def write_old_checkpoint(run: Path, step: int, value: float) -> Path:
    """What save_checkpoint wrote before manifests: model.safetensors and state.pt, no mark, no manifest."""
    model = model_at(value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = run / "checkpoints" / f"step-{step:08d}"
    path.mkdir(parents=True)
    save_weights(model, path / "model.safetensors")
    state = {"position": {"step": step}, "optimizer": ckpt.named_optimizer_state(model, optimizer)}
    torch.save({**state, "rng": rng_state()}, path / "state.pt")
    (run / "checkpoints" / "latest").write_text(path.name)
    return path


def test_a_checkpoint_from_before_manifests_loads_unverified(tmp_path):
    write_old_checkpoint(tmp_path, 1, 1.0)
    with pytest.warns(CheckpointWarning, match="no manifest.json .written before checksums.: using it"):
        path = latest_checkpoint(tmp_path)
    assert loaded_value(path) == 1.0
    save(tmp_path, 2, 2.0)  # the resumed run writes manifests from now on
    assert loaded_value(latest_checkpoint(tmp_path)) == 2.0


@pytest.mark.filterwarnings("ignore:.*using it unverified:UserWarning")
def test_a_truncated_checkpoint_from_before_manifests_is_skipped(tmp_path):
    write_old_checkpoint(tmp_path, 1, 1.0)
    newer = write_old_checkpoint(tmp_path, 2, 2.0)
    os.truncate(newer / "model.safetensors", (newer / "model.safetensors").stat().st_size - 4)
    with pytest.warns(CheckpointWarning, match="skipping checkpoint step-00000002: .*model.safetensors has"):
        path = latest_checkpoint(tmp_path)
    assert path.name == "step-00000001"


def test_latest_naming_a_missing_or_odd_folder_falls_back(tmp_path):
    save(tmp_path, 1, 1.0)
    pointer = tmp_path / "checkpoints" / "latest"
    pointer.write_text("step-00000007")
    with pytest.warns(CheckpointWarning, match="names step-00000007, which is not there"):
        assert latest_checkpoint(tmp_path).name == "step-00000001"
    pointer.write_text("../../somewhere")
    with pytest.warns(CheckpointWarning, match="not a checkpoint name"):
        assert latest_checkpoint(tmp_path).name == "step-00000001"
    pointer.unlink()  # killed between the first rename and the first pointer: the folder is complete
    assert latest_checkpoint(tmp_path).name == "step-00000001"


def test_a_checkpoint_never_committed_by_latest_is_not_preferred(tmp_path):
    save(tmp_path, 1, 1.0)
    save(tmp_path, 2, 2.0)
    (tmp_path / "checkpoints" / "latest").write_text("step-00000001")  # as if 2 was renamed in, then a kill
    assert loaded_value(latest_checkpoint(tmp_path)) == 1.0


def test_a_kill_while_a_rewrite_takes_its_usual_name_loses_nothing(tmp_path):
    save(tmp_path, 1, 1.0)
    root = tmp_path / "checkpoints"
    (root / "step-00000001").rename(root / "step-00000001-2")  # as a rewrite leaves it before settling
    (root / "latest").write_text("step-00000001-2")
    assert ckpt.checkpoint_at_step(tmp_path, 1).name == "step-00000001-2"
    assert ckpt.checkpoint_at_step(tmp_path, 2) is None
    (root / "step-00000001-2").rename(root / "step-00000001")  # renamed; killed before `latest` followed
    with pytest.warns(CheckpointWarning, match="names step-00000001-2, which is not there"):
        assert loaded_value(latest_checkpoint(tmp_path)) == 1.0


def test_pruning_never_deletes_what_latest_names(tmp_path):
    for step in (5, 6, 7):
        save(tmp_path, step, float(step))
    save(tmp_path, 2, 2.0, keep_last=2)  # resumed from an older checkpoint: 2 is the oldest step on disk
    assert checkpoint_names(tmp_path) == ["latest", "step-00000002", "step-00000007"]
    assert loaded_value(latest_checkpoint(tmp_path)) == 2.0


def test_stale_temporaries_are_removed_when_a_run_saves_or_resumes(tmp_path):
    save(tmp_path, 1, 1.0)
    root = tmp_path / "checkpoints"

    def litter() -> None:
        (root / ".tmp-abc123").mkdir()
        (root / ".tmp-abc123" / "model.safetensors").write_bytes(b"half")
        (root / ".tmp-step-00000002" / "dcp").mkdir(parents=True)
        (root / ".latest.x1y2").write_text("step-0000")

    litter()
    assert [p.name for p in clean_stale_temporaries(tmp_path)] == [
        ".latest.x1y2",
        ".tmp-abc123",
        ".tmp-step-00000002",
    ]
    litter()
    loaded_value(latest_checkpoint(tmp_path))  # a resume
    assert checkpoint_names(tmp_path) == ["latest", "step-00000001"]
    litter()
    save(tmp_path, 2, 2.0)
    assert checkpoint_names(tmp_path) == ["latest", "step-00000001", "step-00000002"]
    assert clean_stale_temporaries(tmp_path / "no-such-run") == []


# The writer killed below: checkpoints of ~34 MB of weights, every third step written twice (as the loop
# does at an epoch's end), resuming from the latest checkpoint like a restarted run; it prints the value
# the weights held after each save that returned.
WRITER = """
import sys
from pathlib import Path
import torch
from behemoth.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

run = Path(sys.argv[1])
model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
path = latest_checkpoint(run)
step = load_checkpoint(path, model, optimizer)["position"]["step"] if path else 0
print("ready", flush=True)
while True:
    step += 1
    for value in (step, step + 0.5) if step % 3 == 0 else (step,):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(value)
        save_checkpoint(run, step, model, optimizer, {"position": {"step": step}}, keep_last=2)
        print(value, flush=True)
"""


def saved_value(path: Path) -> float:
    """The one value the weights of checkpoint `path` hold (read as the loop would)."""
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])
    state = load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    values = torch.cat([p.detach().flatten() for p in model.parameters()]).unique()
    assert len(values) == 1 and state["position"]["step"] == int(values.item()), path
    return values.item()


def run_writer_until_killed(run: Path, delay: float) -> list[float]:
    """Start the writer, SIGKILL it `delay` seconds after it is ready; return the values it reported."""
    errors = run.with_name(f"{run.name}-writer.err")
    with open(errors, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(run)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line.strip())
            ready.set()
        ready.set()  # it ended: do not wait for it

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = ready.wait(120)
    time.sleep(delay)
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)  # no cleanup, no finally blocks: mid-write with luck
    process.wait()
    reader.join(10)
    assert started and alive and lines[0] == "ready", failure_text(errors.read_text())
    assert process.returncode == -signal.SIGKILL
    return [float(line) for line in lines[1:]]


def test_a_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    last, leftovers = 0.0, set()
    for kill in range(5):
        reported = run_writer_until_killed(tmp_path, rng.uniform(0.2, 2.5))
        last = max([last, *reported])
        names = set(checkpoint_names(tmp_path)) if (tmp_path / "checkpoints").is_dir() else set()
        assert not leftovers & names, f"seed {seed}: the resumed writer left {leftovers & names} in place"
        leftovers = {name for name in names if name.startswith(".")}  # a kill mid-write leaves its folder
        path = latest_checkpoint(tmp_path)
        if last == 0.0 and path is None:
            continue  # killed before its first save went through
        value = saved_value(path)
        # at least the last save that returned; one more if the kill came after the pointer moved
        assert value >= last, f"seed {seed}, kill {kill}: {path.name} holds {value}, {last} was saved"
        last = value
    assert last > 0, f"seed {seed}: no save went through in five runs"
    assert len([p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-")]) <= 3
    assert load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))["0.weight"].shape == (1024, 1024)
