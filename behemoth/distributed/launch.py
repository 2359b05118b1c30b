"""`behemoth train --nproc N`: hand the command to torchrun (torch.distributed.run), no home-made spawning."""

import sys

from torch.distributed import run as torchrun


def torchrun_args(
    nproc: int,
    command: list[str],
    max_restarts: int = 0,
    nnodes: str = "1",
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> list[str]:
    """Arguments for torch.distributed.run that start `python -m behemoth <command>` on N local processes."""
    args = [f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}"]
    if rdzv_endpoint:
        args += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
        ]
    else:
        args += ["--standalone"]
    return args + ["-m", "behemoth", *command]


def launch(nproc: int, command: list[str], **options) -> None:
    """Run torchrun in this process; it starts the workers, watches them and restarts on failure."""
    torchrun.main(torchrun_args(nproc, command, **options))


def strip_launch_options(argv: list[str]) -> list[str]:
    """The command line without the launcher's own options (the workers must not relaunch)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--nproc", "--max-restarts", "--nnodes", "--node-rank", "--rdzv-endpoint"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def current_command() -> list[str]:
    """The behemoth sub-command and its arguments as typed (after the program name)."""
    return strip_launch_options(sys.argv[1:])
