"""The pre-LayerNorm transformer block shared by `gpt` (causal) and `vit` (bidirectional).

Names follow one rule that other stages rely on: the two projections that write into the residual
stream are called `proj` (attention output and MLP output), so GPT-2's scaled init and later
pruning/explain code can find them by name.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from behemoth.models.dropout import Dropout, dropout, uses_torch_dropout
from behemoth.models.kv_cache import LayerKV, StaticLayerKV


class SelfAttention(nn.Module):
    """Multi-head self-attention through torch's fused scaled_dot_product_attention, or its math path written
    out where that is faster on a CPU (`math_attention`)."""

    def __init__(self, dim: int, n_head: int, dropout: float, bias: bool, causal: bool):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"attention width {dim} is not divisible by {n_head} heads")
        self.n_head = n_head
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)  # q, k, v for all heads in one matmul
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.resid_dropout = Dropout(dropout)

    def forward(
        self, x: torch.Tensor, kv: LayerKV | StaticLayerKV | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C). With `kv` (generation) the new keys and values are appended to the
        layer's cache and the queries attend over everything cached; `mask` (B, 1, T, T_total), True where a
        query may look, is needed then unless the cache was empty (causal) or T is 1 (sees all)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv is not None:
            k, v = kv.append(k, v)  # (B, nh, T_total, hs)
        # is_causal aligns the mask top-left, right only when queries and keys are the same tokens
        causal = self.causal and mask is None and T == k.size(2)
        if self.causal and mask is None and 1 < T < k.size(2):
            raise ValueError("attention over a filled cache with several new tokens needs an explicit mask")
        p = self.dropout if self.training else 0.0
        if T == 1 and kv is not None and torch.compiler.is_compiling():
            y = math_attention(q, k, v, mask)  # (B, nh, 1, hs): inductor fuses it
        elif p > 0 and not uses_torch_dropout(q):  # SDPA's CPU dropout draws one number per weight
            y = math_attention(q, k, v, mask, causal, p)  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.proj(y))


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """SDPA's math path written out, for two cases where it beats torch's kernels: a compiled decode step's
    one new token (inductor fuses these few ops; SDPA's CPU flash kernel, built for long sequences, cost 60 us
    a GPT-2-small layer, more than the head's arithmetic), and attention dropout on a CPU (dropout.py's
    draws, a third of SDPA's). q (B, nh, T, hs), k and v (B, nh, L, hs), mask (B, 1, T, L) True where a
    query may look; `causal` aligns a (T, L) lower triangle top-left, as SDPA's is_causal does."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, L)
    if causal:
        mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = dropout(torch.softmax(scores, dim=-1), dropout_p)
    return weights.to(v.dtype) @ v


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear back to the residual width."""

    def __init__(self, dim: int, hidden: int, dropout: float, bias: bool):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.dropout(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)): pre-LN keeps the residual path an identity at init."""

    def __init__(self, dim: int, n_head: int, mlp_hidden: int, dropout: float, bias: bool, causal: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, bias=bias)
        self.attn = SelfAttention(dim, n_head, dropout, bias, causal)
        self.ln_2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = MLP(dim, mlp_hidden, dropout, bias)

    def forward(
        self, x: torch.Tensor, kv: LayerKV | StaticLayerKV | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, T, C) -> (B, T, C); kv and mask: see SelfAttention
        x = x + self.attn(self.ln_1(x), kv, mask)
        x = x + self.mlp(self.ln_2(x))
        return x


def init_gpt2(model: nn.Module, n_layer: int) -> None:
    """GPT-2 init: N(0, 0.02) weights, zero biases, and residual projections scaled by 1/sqrt(2 * n_layer)
    so the residual stream's variance does not grow with depth (two residual adds per block)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
