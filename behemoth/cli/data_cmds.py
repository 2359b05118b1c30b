"""`behemoth data preview | pack | inspect`: look at augmentation, write compressed shards, read their
index."""

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from behemoth import pipeline
from behemoth.cli.app import app, split_config_args
from behemoth.config.data import LOSSLESS_CODECS, LOSSLESS_FILTERS
from behemoth.pipeline.data import pack as pack_shards
from behemoth.pipeline.data import verify as verify_shards

console = Console(stderr=False, highlight=False)
data_app = typer.Typer(
    help="Data pipeline tools: preview augmentation, pack compressed shards, inspect them.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

CONFIG_HELP = (
    "CONFIG (a .toml file or a recipe name such as mnist-augment) followed by overrides like "
    "data.augment.rotate.p=1"
)


@data_app.command(no_args_is_help=True)
def preview(
    args: list[str] = typer.Argument(None, help=CONFIG_HELP),
    out: Path = typer.Option(None, "--out", help="PNG to write; default runs/<name>-preview/augment.png."),
    samples: int = typer.Option(8, "--samples", min=1, max=32, help="Training samples shown (columns)."),
    rounds: int = typer.Option(3, "--rounds", min=1, max=8, help="Augmented versions of each (rows)."),
    seed: int = typer.Option(0, "--seed", help="Picks the samples and the augmentation draws."),
) -> None:
    """Write a PNG grid: training samples (top row) and what [data.augment] makes of them (one row per draw).

    Each cell is titled with its label; mixup/cutmix cells show the two classes and their shares.
    """
    config_arg, overrides = split_config_args(args or [])
    out = pipeline.preview(pipeline.load_config(config_arg, overrides), out, samples, rounds, seed)
    console.print(f"written {out} ({samples} samples x {rounds} augmented rows)")


@data_app.command(no_args_is_help=True)
def pack(
    source: str = typer.Argument(
        ...,
        help="A dataset name (mnist, digits, arrays, ...), a config file or recipe, "
        "or a shard directory to re-pack.",
    ),
    out: Path = typer.Argument(..., help="Directory to write (index.json + shard files)."),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides, e.g. data.train_limit=5000 data.path=x.npz."
    ),
    codec: str = typer.Option(
        None,
        "--codec",
        help=f"Lossless codec: {' | '.join(LOSSLESS_CODECS)} (default: data.shards.codec, zstd).",
    ),
    level: int = typer.Option(
        None, "--level", min=0, max=9, help="Compression level 0-9 (default: data.shards.level, 5)."
    ),
    filter: str = typer.Option(
        None,
        "--filter",
        help=f"Lossless filter: {' | '.join(LOSSLESS_FILTERS)} (default: data.shards.filter, shuffle).",
    ),
    shard_size: str = typer.Option(
        None,
        "--shard-size",
        help="Uncompressed bytes per shard, e.g. 64MiB, 512KiB (default: data.shards.shard_size).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it is a shard directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Write a dataset's splits as blosc2-compressed shards with a checksummed index (lossless only).

    Images a loader scaled from 8-bit pixels are stored as those pixels when that reproduces the loader's
    floats bit for bit; train with data.name = "shards" and data.path = OUT.
    """
    with Progress(
        TextColumn("pack"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("pack", total=None)
        index = pack_shards(
            source,
            out,
            list(overrides or []),
            codec=codec,
            level=level,
            filter=filter,
            shard_size=shard_size,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    print_index(out, index)


@data_app.command(no_args_is_help=True)
def inspect(
    directory: Path = typer.Argument(..., help="A shard directory written by `behemoth data pack`."),
    verify: bool = typer.Option(
        False, "--verify", help="Also read every shard and check its size and sha256."
    ),
) -> None:
    """Print a shard directory's splits: samples, shards, compressed and raw sizes, compression ratio."""
    from behemoth.data.shards import read_index

    index = read_index(directory)
    print_index(directory, index)
    if verify:
        total = sum(len(split.shards) for split in index.splits.values())
        with Progress(
            TextColumn("verify"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
        ) as bar:
            task = bar.add_task("verify", total=total)
            checked = verify_shards(directory, lambda: bar.advance(task))
        console.print(f"verified {checked} shards: sizes and sha256 match the index")


def print_index(directory: Path, index) -> None:
    table = Table(title=f"{directory}: {index.dataset}, {index.codec} level {index.level}, {index.filter}")
    for column in ("split", "samples", "shards", "x / y", "on disk", "raw", "ratio", "in memory"):
        table.add_column(column, justify="left" if column in ("split", "x / y") else "right")
    for name, split in index.splits.items():
        stored = f"{split.x_dtype}{'*' if split.decode else ''} / {split.y_dtype}"
        ratio = split.raw_bytes / split.bytes if split.bytes else 0.0
        table.add_row(
            name,
            f"{split.count:,}",
            str(len(split.shards)),
            stored,
            human(split.bytes),
            human(split.raw_bytes),
            f"{ratio:.2f}x",
            human(split.memory_bytes),
        )
    console.print(table)
    if any(split.decode for split in index.splits.values()):
        console.print("* 8-bit pixels that decode bit for bit to the loader's normalised float32")
    stored = sum(s.bytes for s in index.splits.values())
    raw = sum(s.raw_bytes for s in index.splits.values())
    console.print(f"total {human(stored)} compressed, {human(raw)} raw ({raw / max(stored, 1):.2f}x)")


def human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
