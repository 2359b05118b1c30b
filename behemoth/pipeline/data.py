"""`behemoth data preview | pack | inspect --verify` as Python: look at augmentation, write and check
shards."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from behemoth.config import RunConfig, parse_size
from behemoth.config.data import check_lossless
from behemoth.errors import BehemothError
from behemoth.pipeline.config import load_run_config, resolve_config
from behemoth.runs import run_path
from behemoth.training.assembly import load_run_data

Progress = Callable[[int, int | None], None]  # (done, total)


def preview(
    cfg: RunConfig, out: Path | None = None, samples: int = 8, rounds: int = 3, seed: int = 0
) -> Path:
    """A PNG grid of training samples (top row) and `rounds` draws of data.augment; returns its path."""
    from behemoth.data.augment.preview import write_preview

    out = Path(out) if out is not None else run_path(cfg).parent / f"{cfg.name}-preview" / "augment.png"
    if out.suffix.lower() != ".png":
        raise BehemothError(f"--out {out}: expected a .png path")
    if not cfg.data.augment.enabled:
        raise BehemothError(
            "data.augment has no ops: nothing to preview (add one, e.g. data.augment.rotate.p=1)"
        )
    if write_preview(cfg, load_run_data(cfg), out, samples, rounds, seed) is None:
        raise BehemothError(
            f"data.name = {cfg.data.name!r}: the training inputs are not images; nothing to preview"
        )
    return out


def source_config(source: str, overrides: list[str]) -> tuple[Path | None, list[str]]:
    """(config file, overrides) for `pack SOURCE`: a shard directory, a config/recipe, or a dataset name."""
    from behemoth.data import dataset_names
    from behemoth.data.shards import INDEX

    path = Path(source)
    if path.is_dir() and (path / INDEX).is_file():  # re-pack: read every shard (verified) into memory
        return None, ["data.name=shards", f"data.path={str(path)!r}", "data.shards.stream=false", *overrides]
    if path.is_file() or source not in dataset_names():
        return resolve_config(source), overrides
    return None, [f"data.name={source}", *overrides]


def check_pack_options(codec: str | None, filter: str | None, shard_size: str | None) -> None:
    """The flags that override data.shards, each refused with its own name before any data loads."""
    for flag, value, kind in (("--codec", codec, "codec"), ("--filter", filter, "filter")):
        if value is not None:
            try:
                check_lossless(value, kind)
            except ValueError as exc:
                raise BehemothError(f"{flag} {value}: {exc}") from None
    if shard_size is not None:
        try:
            parse_size(shard_size)
        except ValueError as exc:
            raise BehemothError(f"--shard-size {shard_size}: {exc}") from None


def pack(
    source: str,
    out: Path,
    overrides: list[str] | None = None,
    *,
    codec: str | None = None,
    level: int | None = None,
    filter: str | None = None,
    shard_size: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    loading: Callable[[str], Any] | None = None,
) -> Any:
    """Write a dataset's splits as blosc2-compressed shards with a checksummed index; returns the index."""
    from behemoth.data.shards import pack_bundle

    check_pack_options(codec, filter, shard_size)
    cfg = load_run_config(*source_config(source, list(overrides or [])))
    shards = cfg.data.shards
    data = load_run_data(cfg)
    return pack_bundle(
        data,
        out,
        codec or shards.codec,
        shards.level if level is None else level,
        filter or shards.filter,
        parse_size(shard_size or shards.shard_size),
        overwrite,
        progress,
    )


def verify(directory: Path, progress: Callable[[], None] | None = None) -> int:
    """Read every shard of a shard directory, checking sizes and sha256 against the index; returns the
    count."""
    from behemoth.data.shards import ShardSplit, read_index

    index = read_index(directory)
    splits = [ShardSplit(directory, name, info) for name, info in index.splits.items()]
    for split in splits:
        for number in range(len(split.info.shards)):
            split.read(number)  # raises a DataError naming the shard on any mismatch
            if progress:
                progress()
        if split.info.labels is not None:
            split.labels()
    return sum(len(s.info.shards) for s in splits)
