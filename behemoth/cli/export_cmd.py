"""`behemoth export`: one consolidated safetensors file from a run's checkpoint, whatever wrote it."""

from pathlib import Path

import typer
from rich.console import Console

from behemoth.cli.app import app
from behemoth.errors import RunDirError

console = Console()


@app.command()
def export(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/gpt-text."),
    out: Path = typer.Option(None, "--out", help="The file to write (default: <run>/export/model.safetensors)."),
    step: int = typer.Option(None, "--step", min=0, help="Export checkpoint step N (default: the latest)."),
) -> None:
    """Write the weights of a run's checkpoint as ONE safetensors file: from a single-process or DDP checkpoint,
    or from the shards of every rank of an FSDP or pipeline run (torch.distributed.checkpoint), in one process.

    The tensors are checked against the run's model (names and shapes) before anything is written.
    """
    import torch

    from behemoth.models import build_model
    from behemoth.runs import open_run, read_spec
    from behemoth.training.checkpoint import checkpoint_weights, latest_checkpoint, write_safetensors

    run_dir, cfg = open_run(run)
    checkpoint = latest_checkpoint(run_dir) if step is None else run_dir / "checkpoints" / f"step-{step:08d}"
    if checkpoint is None or not checkpoint.is_dir():
        what = "no checkpoint" if step is None else f"no checkpoint at step {step}"
        held = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
        raise RunDirError(f"{run_dir} has {what} (checkpoints/ holds: {', '.join(held) or 'nothing'})")
    weights = checkpoint_weights(checkpoint)
    spec = read_spec(run_dir)[0]
    with torch.device("meta"):  # the model's names and shapes, without allocating it
        model = build_model(cfg.model.name, cfg.model.options, spec)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[1].strip()
        raise RunDirError(f"{checkpoint} does not fit model {cfg.model.name!r}: {reason}") from None
    target = out or run_dir / "export" / "model.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors({name: tensor.contiguous() for name, tensor in weights.items()}, target)
    count = sum(t.numel() for t in weights.values())
    console.print(f"written {target}: {len(weights)} tensors, {count:,} values, from {checkpoint.name}"
                  f" ({'sharded' if (checkpoint / 'dcp').is_dir() else 'single file'})")
