"""Quantization: the affine int8 math against torch's own quantizer, the straight-through estimator, int8
models that really run on torch.ao's int8 kernels, QAT, and k-means weight sharing with centroid tuning."""

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from behemoth.compression import kmeans, prune, quantize
from behemoth.compression.measure import accuracy
from behemoth.training import train
from tests.conftest import clone, quick_train_config


def ops_run(model: nn.Module, x: torch.Tensor) -> set[str]:
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("axis", [None, 0])
def test_affine_int8_error_is_at_most_half_a_step(axis):
    torch.manual_seed(0)
    w = torch.randn(32, 48) * torch.linspace(0.01, 2.0, 32)[:, None]  # rows of very different scales
    for symmetric in (True, False):
        qp = quantize.choose_qparams(w, axis=axis, symmetric=symmetric)
        q = quantize.quantize(w, qp)
        assert q.min() >= -128 and q.max() <= 127
        scale, _ = qp.shaped(w)
        error = (quantize.dequantize(q, qp) - w).abs()
        assert (error <= scale / 2 + 1e-6).all()


def test_affine_math_matches_torch_quantizer():
    torch.manual_seed(0)
    w = torch.randn(16, 20)
    qp = quantize.choose_qparams(w, axis=0, symmetric=True)
    reference = torch.quantize_per_channel(w, qp.scale.double(), qp.zero_point, 0, torch.qint8)
    assert torch.equal(quantize.quantize(w, qp).to(torch.int8), reference.int_repr())
    observer = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    observer(w)
    scale, zero_point = observer.calculate_qparams()
    mine = quantize.choose_qparams(w, symmetric=False, signed=False)
    assert (
        mine.scale.item() == pytest.approx(scale.item(), rel=1e-6)
        and mine.zero_point.item() == zero_point.item()
    )


def test_per_channel_beats_per_tensor_on_uneven_rows():
    torch.manual_seed(0)
    w = torch.randn(32, 48) * torch.logspace(-2, 0, 32)[:, None]
    errors = {}
    for axis in (None, 0):
        qp = quantize.choose_qparams(w, axis=axis)
        errors[axis] = (quantize.dequantize(quantize.quantize(w, qp), qp) - w).pow(2).mean()
    assert errors[0] < errors[None] / 10


def test_fake_quant_passes_gradients_straight_through_inside_the_range():
    x = torch.tensor([-3.0, -0.5, 0.01, 0.4, 2.5], requires_grad=True)
    qp = quantize.QParams(torch.tensor(0.01), torch.tensor(0), -100, 100)  # range [-1, 1]
    y = quantize.fake_quantize(x, qp)
    assert torch.allclose(y, torch.tensor([-1.0, -0.5, 0.01, 0.4, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))  # clipped entries get no gradient


def test_static_int8_runs_int8_kernels_and_keeps_accuracy(trained_mlp, digits_bundle):
    calibration = [digits_bundle.train.x[:512]]
    model = quantize.quantize_static(trained_mlp, calibration)
    assert quantize.int8_layers(model) == {"module.0": "LinearReLU", "module.2": "Linear"}
    assert not quantize.float_compute_layers(model)
    ops = ops_run(model, digits_bundle.test.x[:8])
    assert {"quantized::linear_relu", "quantized::linear"} <= ops and not {
        "aten::addmm",
        "aten::linear",
    } & ops
    fp32 = accuracy(trained_mlp, digits_bundle.test, digits_bundle.spec)["acc"]
    int8 = accuracy(model, digits_bundle.test, digits_bundle.spec)["acc"]
    assert int8 >= fp32 - 0.02


def test_dynamic_int8_quantizes_activations_per_batch(trained_mlp, digits_bundle):
    model = quantize.quantize_dynamic(trained_mlp)
    assert "quantized::linear_dynamic" in ops_run(model, digits_bundle.test.x[:8])
    out, ref = model(digits_bundle.test.x), trained_mlp(digits_bundle.test.x)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.97


def test_qat_trains_with_fake_quant_then_converts_to_int8(trained_mlp, digits_bundle):
    prepared = quantize.prepare_qat(trained_mlp)
    assert any(isinstance(m, torch.ao.quantization.FakeQuantize) for m in prepared.modules())
    train(prepared, digits_bundle, quick_train_config(epochs=1, lr=0.01), batch_size=32)
    model = quantize.convert_qat(prepared, "x86", digits_bundle.test.x[:2])
    assert "quantized::linear_relu" in ops_run(model, digits_bundle.test.x[:8])
    acc = accuracy(model, digits_bundle.test, digits_bundle.spec)["acc"]
    assert acc >= accuracy(trained_mlp, digits_bundle.test, digits_bundle.spec)["acc"] - 0.03


def test_static_int8_refuses_models_that_need_float_ops():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x.exp()

    with pytest.raises(Exception, match="quant = 'dynamic'"):
        quantize.quantize_static(Residual(), [torch.randn(8, 4)])


def test_kmeans_codebook_has_at_most_2_to_the_bits_values_and_keeps_zeros(trained_mlp):
    model = clone(trained_mlp)
    prune.prune_magnitude(model, 0.5)
    prune.make_permanent(model)
    zero_masks = {n: m.weight == 0 for n, m in prune.prunable_layers(model).items()}
    books = kmeans.share_weights(model, bits=3)
    for name, layer in prune.prunable_layers(model).items():
        values = torch.unique(layer.weight[~zero_masks[name]])
        assert len(values) <= 8 and books[name].centroids.numel() == 8
        assert torch.equal(layer.weight == 0, zero_masks[name])  # pruned weights stay pruned


def test_kmeans_1d_finds_separated_clusters():
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.2), torch.full((20,), 3.0)])
    centroids, labels = kmeans.kmeans_1d(values + 0.01 * torch.randn(100), 3)
    assert torch.allclose(torch.sort(centroids).values, torch.tensor([-1.0, 0.2, 3.0]), atol=0.01)
    assert len(set(labels[:50].tolist())) == 1 and len(set(labels.tolist())) == 3


def test_centroid_gradient_is_the_sum_over_its_cluster():
    layer = nn.Linear(6, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(
            torch.tensor([[1.0, 1.1, -1.0, -0.9, 0.0, 1.05], [-1.05, 0.95, 0.0, -1.1, 1.0, 0.9]])
        )
    kmeans.share_weights(layer, bits=1)  # two clusters: around -1 and around +1 (zeros are pruned)
    shared = layer.parametrizations.weight[0]
    x = torch.randn(5, 6)
    layer(x).pow(2).sum().backward()
    dense = nn.Linear(6, 2, bias=False)
    with torch.no_grad():
        dense.weight.copy_(layer.weight)
    dense(x).pow(2).sum().backward()
    for k in range(2):
        in_cluster = (shared.index == k) & shared.keep.bool()
        assert shared.centroids.grad[k] == pytest.approx(dense.weight.grad[in_cluster].sum().item(), rel=1e-5)


def test_centroid_fine_tuning_through_the_engine_keeps_the_codebook(trained_mlp, digits_bundle):
    model = clone(trained_mlp)
    kmeans.share_weights(model, bits=2)
    coarse = accuracy(model, digits_bundle.test, digits_bundle.spec)["acc"]
    before = {
        n: m.parametrizations.weight[0].centroids.detach().clone()
        for n, m in prune.prunable_layers(model).items()
    }
    train(model, digits_bundle, quick_train_config(epochs=2, lr=0.01), batch_size=32)
    books = kmeans.finalize_shared(model)
    for name, layer in prune.prunable_layers(model).items():
        assert not torch.equal(books[name].centroids, before[name])  # the centroids moved
        assert len(torch.unique(layer.weight)) <= 4 and torch.equal(layer.weight, books[name].weight())
    assert accuracy(model.eval(), digits_bundle.test, digits_bundle.spec)["acc"] >= coarse - 0.01
