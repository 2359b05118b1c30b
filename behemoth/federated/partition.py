"""Split a training set's rows among K clients: IID, pathological non-IID shards, Dirichlet label skew.

Each function takes the labels (N,) and returns K int64 index tensors, a pure function of the seed, so
every client (on any machine) computes the same split without receiving it. Written here because
flwr-datasets' partitioners work on Hugging Face `datasets`, not on the in-memory tensors behemoth holds.
"""

import numpy as np
import torch

from behemoth.errors import ConfigError


def iid(labels: torch.Tensor, clients: int, seed: int) -> list[torch.Tensor]:
    """Shuffle, then K near-equal slices (sizes differ by at most one)."""
    _check_enough(len(labels), clients, "iid")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return [part.clone() for part in torch.tensor_split(order, clients)]


def shards(labels: torch.Tensor, clients: int, per_client: int, seed: int) -> list[torch.Tensor]:
    """McMahan et al. 2017's pathological non-IID split: sort by label, cut into K * per_client equal shards,
    give each client `per_client` shards at random. With 2 shards most clients see only 2 digits."""
    count = clients * per_client
    _check_enough(len(labels), count, "shards")
    generator = torch.Generator().manual_seed(seed)
    # sort by label with ties in random order, so a shard is a random sample of its digit(s)
    shuffled = torch.randperm(len(labels), generator=generator)
    order = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    size = len(labels) // count  # the remainder (< count rows) is left out, as in the paper's 200 x 300
    pieces = order[: size * count].view(count, size)  # (K * per_client, size)
    assignment = torch.randperm(count, generator=generator).view(clients, per_client)
    return [pieces[row].flatten().clone() for row in assignment]


def dirichlet(
    labels: torch.Tensor, clients: int, alpha: float, seed: int, min_size: int = 10, max_draws: int = 1000
) -> list[torch.Tensor]:
    """Label skew (Hsu et al. 2019): each class's rows go to the clients in proportions ~ Dir(alpha * 1_K).

    Small alpha gives each client few classes; large alpha approaches IID. Redrawn until every client
    holds at least `min_size` rows.
    """
    _check_enough(len(labels), clients * min_size, "dirichlet")
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    classes = np.unique(y)
    for _ in range(max_draws):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for k in classes:
            rows = rng.permutation(np.flatnonzero(y == k))
            shares = rng.dirichlet(np.full(clients, alpha))  # (K,)
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for client, piece in enumerate(np.split(rows, cuts)):
                parts[client].append(piece)
        sizes = [sum(len(p) for p in part) for part in parts]
        if min(sizes) >= min_size:
            return [torch.from_numpy(np.sort(np.concatenate(part))).long() for part in parts]
    raise ConfigError(
        f"federate.alpha = {alpha}: no Dirichlet draw in {max_draws} gave every one of "
        f"{clients} clients {min_size} rows (raise alpha or lower federate.min_partition_size)"
    )


def partition(labels: torch.Tensor, cfg) -> list[torch.Tensor]:
    """The split `cfg` ([federate] section) asks for."""
    if cfg.partition == "iid":
        return iid(labels, cfg.clients, cfg.seed)
    if labels.dim() != 1:  # a language model's targets are (N, T) tokens: nothing to skew a split by
        raise ConfigError(
            f"federate.partition = {cfg.partition!r}: splits by label, but each training row has "
            f"{tuple(labels.shape[1:])} targets (text: next tokens); use federate.partition = 'iid'"
        )
    if cfg.partition == "shards":
        return shards(labels, cfg.clients, cfg.shards_per_client, cfg.seed)
    return dirichlet(labels, cfg.clients, cfg.alpha, cfg.seed, cfg.min_partition_size)


def label_histogram(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """(K, num_classes) int64: how many rows of each class every client holds."""
    return torch.stack([torch.bincount(labels[idx], minlength=num_classes) for idx in parts])


def label_skew(histogram: torch.Tensor) -> float:
    """Mean total-variation distance between each client's label distribution and the whole set's:
    0 for identical distributions, near 1 when clients hold classes the others do not."""
    counts = histogram.double()
    local = counts / counts.sum(1, keepdim=True).clamp_min(1)  # (K, C)
    overall = counts.sum(0) / counts.sum()  # (C,)
    return float(0.5 * (local - overall).abs().sum(1).mean())


def _check_enough(rows: int, needed: int, kind: str) -> None:
    if rows < needed:
        raise ConfigError(
            f"federate.partition = {kind!r}: {rows} training rows cannot fill {needed} "
            "client slices (fewer federate.clients, or more data.train_limit)"
        )
