"""The keys and values a decoder has already computed, kept per layer so that generating a token costs one
token's forward pass instead of the whole context's.

Buffers are allocated once at `capacity` (the context the model reads, at most its block_size) and filled
left to right: appending writes in place, no torch.cat per step. Batched prompts of different lengths are
left-padded to one length so the whole batch shares one fill length (one matmul per step for every row);
`pad` counts each row's padding columns. The padding keys are masked out and each row's positions start at
0 at its first real token, so a row computes what it would compute alone (see KVCache.positions / .mask).

StaticKVCache is the same cache for a compiled decode step (models/compiled_decode.py): its fill length is a
tensor and every step reads all `capacity` slots (the unfilled ones masked out), so each token runs the same
shapes through one graph instead of a graph per length.
"""

from dataclasses import dataclass, field

import torch


@dataclass
class LayerKV:
    """One attention layer's cache: (B, nh, capacity, hs) keys and values, the first `length` filled."""

    capacity: int
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    length: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T, hs) new keys/values after the cached ones; all of them, (B, nh, length, hs)."""
        end = self.length + k.size(2)
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} tokens: cannot append up to {end}")
        if self.k is None or self.k.dtype != k.dtype or self.k.size(0) != k.size(0):
            B, nh, _, hs = k.shape  # allocated on first use, in the dtype the layer computes in
            self.k = k.new_empty(B, nh, self.capacity, hs)
            self.v = v.new_empty(B, nh, self.capacity, hs)
        keys, values = self.k, self.v
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v  # type: ignore[index]  # allocated with keys
        self.length = end
        return keys[:, :, :end], values[:, :, :end]  # type: ignore[index]


@dataclass
class KVCache:
    """Every layer's LayerKV, the shared fill length, and each row's left padding (B,)."""

    layers: list[LayerKV]
    pad: torch.Tensor  # (B,) int64: padding columns at the left of each row
    length: int = 0
    capacity: int = field(init=False)

    def __post_init__(self) -> None:
        self.capacity = self.layers[0].capacity

    @classmethod
    def empty(cls, n_layer: int, capacity: int, pad: torch.Tensor) -> "KVCache":
        return cls([LayerKV(capacity) for _ in range(n_layer)], pad)

    def advance(self, T: int) -> None:
        """Count T new tokens as cached (every layer has appended them)."""
        self.length += T

    def reset(self, pad: torch.Tensor) -> None:
        """Empty the cache for a new prefill (the buffers are kept)."""
        self.pad, self.length = pad, 0
        for layer in self.layers:
            layer.length = 0

    @property
    def padded(self) -> bool:
        return bool((self.pad > 0).any())

    def positions(self, T: int) -> torch.Tensor:
        """Position ids of the next T tokens: (T,), or (B, T) with padding (0 at each row's first real
        token; padding columns get 0 too, their output is never read)."""
        steps = torch.arange(self.length, self.length + T, device=self.pad.device)  # (T,)
        if not self.padded:
            return steps
        return (steps.unsqueeze(0) - self.pad.unsqueeze(1)).clamp_min(0)  # (B, T)

    def mask(self, T: int) -> torch.Tensor | None:
        """Where the next T queries may look, (B, 1, T, length + T) bool; None when plain causal attention
        (no padding) is right. A padding query sees itself only: a row with no key at all would give NaN,
        and a NaN value, even under a zero weight, poisons the real tokens that read the same cache."""
        if not self.padded:
            return None
        if self.length and T > 1:
            raise ValueError("several new tokens after a filled cache: prefill from empty instead")
        total = self.length + T
        keys = torch.arange(total, device=self.pad.device)  # (Tk,)
        queries = torch.arange(self.length, total, device=self.pad.device)  # (T,)
        causal = keys.unsqueeze(0) <= queries.unsqueeze(1)  # (T, Tk)
        real_key = keys.unsqueeze(0) >= self.pad.unsqueeze(1)  # (B, Tk)
        itself = keys.unsqueeze(0) == queries.unsqueeze(1)  # (T, Tk)
        return (causal & (real_key.unsqueeze(1) | itself)).unsqueeze(1)  # (B, 1, T, Tk)


class StaticLayerKV:
    """One attention layer's slots in a StaticKVCache: (B, nh, capacity, hs) keys and values, all returned."""

    def __init__(self, cache: "StaticKVCache") -> None:
        self.cache = cache
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, nh, T, hs) new keys/values at the fill length; returns all (B, nh, capacity, hs)."""
        if self.k is None or self.k.dtype != k.dtype or self.k.size(0) != k.size(0):
            B, nh, _, hs = k.shape
            # zeros, not empty: a masked slot weighs 0, but 0 * NaN from uninitialised memory is NaN
            self.k = k.new_zeros(B, nh, self.cache.capacity, hs)
            self.v = v.new_zeros(B, nh, self.cache.capacity, hs)
        at = self.cache.length + torch.arange(k.size(2), device=k.device)  # (T,)
        self.k.index_copy_(2, at, k)
        self.v.index_copy_(2, at, v)  # type: ignore[union-attr]  # allocated with keys
        return self.k, self.v  # type: ignore[return-value]


class StaticKVCache:
    """KVCache's interface (layers, positions, mask, advance, reset) at a fixed size, for a compiled step:
    `length` is a (1,) tensor updated in place and the mask always spans the whole capacity. Whoever drives
    it keeps the fill below `capacity` (a compiled index_copy_ past the end is not checked)."""

    def __init__(self, n_layer: int, capacity: int, pad: torch.Tensor) -> None:
        self.capacity = capacity
        self.pad = pad  # (B,) int64
        self.length = torch.zeros(1, dtype=torch.int64, device=pad.device)
        self.layers = [StaticLayerKV(self) for _ in range(n_layer)]

    def reset(self, pad: torch.Tensor) -> None:
        self.pad = pad
        self.length.zero_()

    def advance(self, T: int) -> None:
        self.length.add_(T)

    def positions(self, T: int) -> torch.Tensor:
        """(B, T) position ids of the next T tokens, 0 at each row's first real token."""
        steps = self.length + torch.arange(T, device=self.pad.device)  # (T,)
        return (steps.unsqueeze(0) - self.pad.unsqueeze(1)).clamp_min(0)

    def mask(self, T: int) -> torch.Tensor:
        """(B, 1, T, capacity) bool: causal over the filled slots, padding keys out (a query sees itself)."""
        keys = torch.arange(self.capacity, device=self.pad.device)  # (C,)
        queries = self.length + torch.arange(T, device=self.pad.device)  # (T,)
        causal = keys.unsqueeze(0) <= queries.unsqueeze(1)  # (T, C): unfilled slots lie in the future
        real_key = keys.unsqueeze(0) >= self.pad.unsqueeze(1)  # (B, C)
        itself = keys.unsqueeze(0) == queries.unsqueeze(1)  # (T, C)
        return (causal & (real_key.unsqueeze(1) | itself)).unsqueeze(1)
