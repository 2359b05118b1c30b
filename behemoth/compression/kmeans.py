"""Weight sharing (Han, Mao, Dally 2016, "Deep Compression" §3): each layer's nonzero weights are clustered
into 2^bits centroids by k-means with linear initialisation; the layer then stores one n-bit index per
weight plus the small codebook. Fine-tuning trains the centroids: a shared weight's gradient is the sum of
the gradients of every weight in its cluster, which is exactly what autograd gives for `centroids[index]`.

Written here rather than taken from scikit-learn: in one dimension each point's nearest centroid is found
by a binary search over the midpoints between sorted centroids (O(N log K), not sklearn's O(N K)), which
keeps million-weight layers fast, and the linear initialisation the paper found best is one line.
"""

from dataclasses import dataclass

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from behemoth.compression.prune import prunable_layers


@dataclass
class Codebook:
    """A layer's shared weights: weight = centroids[index] where index >= 0, and 0 where index == -1
    (pruned)."""

    centroids: torch.Tensor  # (K,) float32, K <= 2^bits
    index: torch.Tensor  # weight-shaped int64 in [-1, K)
    bits: int

    def weight(self) -> torch.Tensor:
        return torch.where(self.index >= 0, self.centroids[self.index.clamp(min=0)], 0.0)


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a 1-D tensor, linear initialisation over [min, max]:
    (centroids (K,), labels (N,))."""
    values = values.detach().float().flatten()
    clusters = max(1, min(clusters, values.numel()))
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters)
    labels = torch.zeros(values.numel(), dtype=torch.int64)
    for _ in range(iterations):
        centroids = torch.sort(centroids).values
        boundaries = (centroids[1:] + centroids[:-1]) / 2  # (K-1,) nearest-centroid cut points
        new_labels = torch.bucketize(values, boundaries)
        sums = torch.zeros(clusters).index_add_(0, new_labels, values)
        counts = torch.zeros(clusters).index_add_(0, new_labels, torch.ones_like(values))
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # empty clusters stay put
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centroids, labels


def cluster_weight(weight: torch.Tensor, bits: int) -> Codebook:
    """Cluster the nonzero entries of `weight` (zeros are pruned weights and stay exactly zero)."""
    weight = weight.detach().cpu().float()
    nonzero = weight != 0
    index = torch.full(weight.shape, -1, dtype=torch.int64)
    if not nonzero.any():
        return Codebook(torch.zeros(1), index, bits)
    centroids, labels = kmeans_1d(weight[nonzero], 2**bits)
    index[nonzero] = labels
    return Codebook(centroids, index, bits)


class SharedWeight(nn.Module):
    """Parametrization: the layer's weight becomes centroids[index] (zero where pruned); only the
    centroids train. The original dense weight is ignored (and frozen)."""

    def __init__(self, book: Codebook) -> None:
        super().__init__()
        self.bits = book.bits
        self.centroids = nn.Parameter(book.centroids.clone())
        self.register_buffer("index", book.index.clamp(min=0))
        self.register_buffer("keep", (book.index >= 0).float())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return self.centroids[self.index] * self.keep  # weight-shaped


def share_weights(model: nn.Module, bits: int, conv_bits: int | None = None) -> dict[str, Codebook]:
    """Cluster every Linear/Conv weight of `model` in place and attach trainable centroids; returns the
    books."""
    books = {}
    for name, module in prunable_layers(model).items():
        layer_bits = (
            conv_bits if conv_bits is not None and isinstance(module, nn.modules.conv._ConvNd) else bits
        )
        book = cluster_weight(module.weight, layer_bits)
        books[name] = book
        device = module.weight.device
        module.weight.requires_grad_(False)
        parametrize.register_parametrization(module, "weight", SharedWeight(book).to(device), unsafe=True)
    return books


def finalize_shared(model: nn.Module) -> dict[str, Codebook]:
    """Read the (fine-tuned) codebooks back, and leave plain weights equal to centroids[index]."""
    books = {}
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        shared = module.parametrizations.weight[0]
        if not isinstance(shared, SharedWeight):
            continue
        index = torch.where(shared.keep.bool(), shared.index, -1).cpu()
        books[name] = Codebook(shared.centroids.detach().cpu().float().clone(), index, shared.bits)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        module.weight.requires_grad_(True)
    return books
