"""Samplers: which training rows an epoch visits, as a pure function of (seed, epoch).

Each sampler first *chooses* rows (random with or without replacement, systematic, stratified or
class-balanced), then visits them in a fresh random order per epoch. The choice is drawn once from the
seed (a fixed subset) or, with `resample`, afresh every epoch. Because nothing depends on state, a run
resumed mid-epoch gets the same order back from (seed, epoch) alone (see behemoth.training.feed.Sampler).
"""

import zlib
from dataclasses import dataclass

import torch

from behemoth.config.data import SamplingConfig
from behemoth.errors import ConfigError


def keyed_generator(seed: int, *key: object) -> torch.Generator:
    """An independent CPU generator per (seed, key...): draws for one purpose never shift another's."""
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, (seed, *key))).encode()))


# --- pure choosers: (generator) -> row indices ---------------------------------------------------------


def random_rows(num_rows: int, size: int, replacement: bool, generator: torch.Generator) -> torch.Tensor:
    """`size` rows drawn uniformly; without replacement no row repeats."""
    if replacement:
        return torch.randint(0, num_rows, (size,), generator=generator)
    return torch.randperm(num_rows, generator=generator)[:size]


def systematic_rows(num_rows: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Every k-th row from a random start in [0, k), k = num_rows // size: exactly `size` rows, spacing k."""
    k = max(num_rows // size, 1)
    start = int(torch.randint(0, k, (1,), generator=generator))
    return start + k * torch.arange(size)


def stratified_quota(counts: torch.Tensor, size: int) -> torch.Tensor:
    """Rows per class proportional to `counts`, summing to `size` (largest remainders get the leftovers)."""
    exact = counts.double() * size / counts.sum()
    quota = exact.floor().long()
    leftover = size - int(quota.sum())
    if leftover:
        # stable sort: ties go to the lower class index, so the quota is deterministic
        order = torch.sort(exact - quota, descending=True, stable=True).indices
        quota[order[:leftover]] += 1
    return quota


def stratified_rows(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """`size` rows without replacement, each class keeping its share of the data (within one row)."""
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    quota = stratified_quota(counts, size)
    # one random permutation, then the first `quota[c]` rows of each class in that permuted order
    perm = torch.randperm(len(labels), generator=generator)
    by_class = inverse[perm]
    order = torch.sort(by_class, stable=True).indices  # rows grouped by class, random within class
    grouped = perm[order]
    starts = torch.cumsum(counts, 0) - counts
    return torch.cat([grouped[s : s + q] for s, q in zip(starts.tolist(), quota.tolist())])


def balanced_rows(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """`size` rows with replacement, weighted 1 / (class count): every class is drawn about equally often."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / counts.double()[inverse]
    return torch.multinomial(weights, size, replacement=True, generator=generator)


# --- the Sampler (behemoth.training.feed.Sampler protocol) --------------------------------------------------


@dataclass(frozen=True)
class SubsetSampler:
    """Chooses `epoch_size` rows per `kind`, then visits them in a per-epoch random order."""

    kind: str
    num_rows: int
    epoch_size: int
    labels: torch.Tensor | None = None  # (N,) class labels: stratified and balanced need them
    replacement: bool = False
    resample: bool = False
    shuffle: bool = True
    seed: int | None = None  # overrides the feed's seed for the choice and the order

    def rows(self, seed: int, epoch: int) -> torch.Tensor:
        """The chosen rows (before the visiting order): fixed across epochs unless `resample`."""
        seed = self.seed if self.seed is not None else seed
        generator = keyed_generator(seed, "choose", self.kind, epoch if self.resample else "fixed")
        if self.kind == "random":
            return random_rows(self.num_rows, self.epoch_size, self.replacement, generator)
        if self.kind == "systematic":
            return systematic_rows(self.num_rows, self.epoch_size, generator)
        if self.kind == "stratified":
            return stratified_rows(self.labels, self.epoch_size, generator)
        if self.kind == "balanced":
            return balanced_rows(self.labels, self.epoch_size, generator)
        raise ValueError(f"unknown sampling kind {self.kind!r}")

    def order(self, seed: int, epoch: int) -> torch.Tensor:  # (epoch_size,) int64 row indices
        rows = self.rows(seed, epoch)
        if not self.shuffle:
            return torch.sort(rows).values
        seed = self.seed if self.seed is not None else seed
        return rows[torch.randperm(len(rows), generator=keyed_generator(seed, "order", epoch))]


def sample_size(cfg: SamplingConfig, num_rows: int) -> int:
    """Rows per epoch from data.sampling.size / fraction (all rows when neither is set)."""
    if cfg.size is not None:
        size, field = cfg.size, f"data.sampling.size = {cfg.size}"
    elif cfg.fraction is not None:
        size, field = max(round(cfg.fraction * num_rows), 1), f"data.sampling.fraction = {cfg.fraction}"
    else:
        return num_rows
    if size > num_rows and not (cfg.replacement or cfg.kind == "balanced"):
        raise ConfigError(
            f"{field}: {size} rows asked but the training split has {num_rows} "
            "(more needs replacement: kind = 'random' with replacement = true, or 'balanced')"
        )
    return size


def build_sampler(cfg: SamplingConfig, labels: torch.Tensor) -> SubsetSampler | None:
    """The sampler data.sampling asks for over a split with these targets; None for the default shuffle."""
    if cfg.kind == "shuffle":
        return None
    if cfg.kind in ("stratified", "balanced") and (labels.ndim != 1 or labels.is_floating_point()):
        raise ConfigError(
            f"data.sampling.kind = {cfg.kind!r} needs one class label per sample; "
            f"this dataset's targets have shape {tuple(labels.shape)}"
        )
    num_rows = len(labels)
    return SubsetSampler(
        cfg.kind,
        num_rows,
        sample_size(cfg, num_rows),
        labels if labels.ndim == 1 else None,
        cfg.replacement,
        cfg.resample,
        cfg.shuffle,
        cfg.seed,
    )
