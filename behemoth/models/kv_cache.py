"""The keys and values a decoder has already computed, kept per layer so that generating a token costs one
token's forward pass instead of the whole context's.

Buffers are allocated once at `capacity` (the context the model reads, at most its block_size) and filled
left to right: appending writes in place, no torch.cat per step. Batched prompts of different lengths are
left-padded to one length so the whole batch shares one fill length (one matmul per step for every row);
`pad` counts each row's padding columns. The padding keys are masked out and each row's positions start at
0 at its first real token, so a row computes what it would compute alone (see KVCache.positions / .mask).
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
