"""behemoth's CPU dropout (models/dropout.py) and written-out attention (transformer_blocks.math_attention):
the drop rate and mean that torch's dropout has, gradients through the same mask, reproducible by seed,
torch's own dropout where asked; attention equal to SDPA without dropout and equal on average with it."""

import pytest
import torch
import torch.nn.functional as F

from behemoth.models.dropout import Dropout, dropout, torch_dropout
from behemoth.models.transformer_blocks import math_attention


def test_dropout_drops_p_of_the_elements_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    y = dropout(x, 0.1)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.1) < 4 * (0.1 * 0.9 / x.numel()) ** 0.5  # four standard deviations
    assert torch.allclose(y[y != 0], torch.tensor(65536 / (65536 - 6554)))  # p rounded to 6554 / 65536
    assert abs(float(y.mean()) - 1.0) < 0.005
    rows = (y == 0).float().mean(dim=1)  # no pattern along a row: every row drops about p
    assert float(rows.min()) > 0.05 and float(rows.max()) < 0.15


def test_gradients_pass_the_kept_elements_scaled():
    torch.manual_seed(1)
    x = torch.randn(3, 7, 5, requires_grad=True)  # 105 elements: not a multiple of the four per draw
    y = dropout(x, 0.3)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.tensor(65536 / (65536 - round(0.3 * 65536))))


def test_the_same_seed_drops_the_same_elements():
    x = torch.randn(64, 33)
    torch.manual_seed(5)
    first = dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.5), first)
    assert not torch.equal(dropout(x, 0.5), first)


def test_eval_mode_zero_p_and_torch_dropout():
    layer = Dropout(0.2)
    x = torch.randn(8, 16)
    assert layer.eval()(x) is x
    assert dropout(x, 0.0) is x
    layer.train()
    with torch_dropout():
        torch.manual_seed(3)
        ours = layer(x)
    torch.manual_seed(3)
    assert torch.equal(ours, F.dropout(x, 0.2, training=True))


@pytest.mark.parametrize("causal", [True, False])
def test_math_attention_is_sdpa_without_dropout(causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 6, 16), torch.randn(2, 3, 6, 16), torch.randn(2, 3, 6, 16)
    mask = None if causal else torch.rand(2, 1, 6, 6) > 0.4
    if mask is not None:
        mask |= torch.eye(6, dtype=torch.bool)  # every query sees itself
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(math_attention(q, k, v, mask, causal), expected)
    one = math_attention(q[:, :, -1:], k, v, None)  # a decode step's one new token over the whole cache
    torch.testing.assert_close(one, F.scaled_dot_product_attention(q[:, :, -1:], k, v))


def test_math_attention_with_dropout_is_sdpa_on_average():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    draws = torch.stack([math_attention(q, k, v, None, True, 0.25) for _ in range(4000)])
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), expected, atol=0.05, rtol=0)
