"""Pruning: exact magnitude masks (layer-wise and global), the cubic schedule, gradual pruning through the
training engine, and structured pruning that physically shrinks layers and rewires the next one."""

import pytest
import torch
from torch import nn

from behemoth.compression import prune, structured
from behemoth.compression.measure import accuracy, latencies
from behemoth.data.bundle import DataBundle, TensorSplit
from behemoth.models import build_model
from behemoth.spec import DataSpec
from behemoth.training import train
from tests.conftest import clone, quick_train_config


def test_layer_masks_zero_exactly_the_smallest_weights():
    torch.manual_seed(0)
    weights = {"a": torch.randn(50, 40), "b": torch.randn(10, 50)}
    masks = prune.magnitude_masks(weights, 0.75, "layer")
    for name, w in weights.items():
        assert int((masks[name] == 0).sum()) == round(0.75 * w.numel())
        kept, dropped = w.abs()[masks[name] == 1], w.abs()[masks[name] == 0]
        assert kept.min() >= dropped.max()  # every kept weight is at least as large as every pruned one


def test_global_masks_use_one_threshold_across_layers():
    torch.manual_seed(0)
    weights = {"big": torch.randn(40, 40) * 3, "small": torch.randn(40, 40) * 0.1}
    masks = prune.magnitude_masks(weights, 0.5, "global")
    zeros = {n: int((m == 0).sum()) for n, m in masks.items()}
    assert sum(zeros.values()) == 1600  # half of all weights
    assert zeros["small"] > 1500 and zeros["big"] < 100  # small-scale layer takes most of the cut
    kept = torch.cat([w.abs()[masks[n] == 1] for n, w in weights.items()])
    dropped = torch.cat([w.abs()[masks[n] == 0] for n, w in weights.items()])
    assert kept.min() >= dropped.max()
    with_override = prune.magnitude_masks(weights, 0.5, "global", {"big": 0.9})
    assert int((with_override["big"] == 0).sum()) == 1440


def test_cubic_schedule_matches_zhu_and_gupta():
    final, begin, end = 0.9, 10, 110
    assert prune.cubic_sparsity(0, final, begin, end) == 0.0
    assert prune.cubic_sparsity(begin, final, begin, end) == 0.0
    assert prune.cubic_sparsity(60, final, begin, end) == pytest.approx(final * (1 - 0.5**3))
    assert prune.cubic_sparsity(500, final, begin, end) == final
    steps = [prune.cubic_sparsity(t, final, begin, end) for t in range(begin, end + 1, 10)]
    increments = [b - a for a, b in zip(steps, steps[1:])]
    assert all(x >= y for x, y in zip(increments, increments[1:]))  # fast first, then slower


def test_oneshot_pruning_masks_survive_training_and_become_permanent(trained_mlp, digits_bundle):
    model = clone(trained_mlp)
    prune.prune_magnitude(model, 0.8, "layer")
    train(model, digits_bundle, quick_train_config(epochs=1, lr=0.01), batch_size=32)
    prune.make_permanent(model)
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())
    for name, info in prune.sparsity_report(model).items():
        assert info["sparsity"] == pytest.approx(0.8, abs=1e-3), name


def test_gradual_pruning_reaches_the_target_through_the_engine(trained_mlp, digits_bundle):
    model = clone(trained_mlp)
    before = accuracy(model, digits_bundle.test, digits_bundle.spec)["acc"]
    steps_per_epoch = 1200 // 32 + 1
    hook = prune.GradualPruning(0.9, "global", end=2 * steps_per_epoch, every=5)
    train(model, digits_bundle, quick_train_config(epochs=3, lr=0.01), batch_size=32, hooks=[hook])
    prune.make_permanent(model)
    report = prune.sparsity_report(model)
    zeros = sum(r["zeros"] for r in report.values())
    assert zeros == round(0.9 * sum(r["weights"] for r in report.values()))
    targets = [s for _, s in hook.history]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.9) and len(targets) > 5
    after = accuracy(model, digits_bundle.test, digits_bundle.spec)["acc"]
    assert after > before - 0.05  # 90% of the weights gone, accuracy kept by retraining


def test_structured_pruning_removes_dead_units_without_changing_outputs(trained_mlp):
    model = clone(trained_mlp)
    with torch.no_grad():  # units 0..15 of the hidden layer compute nothing: zero weights, zero bias
        model[0].weight[:16] = 0
        model[0].bias[:16] = 0
    x = torch.randn(20, 64)
    expected = model(x)
    changes = structured.prune_units(model, 0.25, x[:2])
    assert changes == {"0": (64, 48)}
    assert model[0].weight.shape == (48, 64) and model[2].weight.shape == (10, 48)
    assert torch.allclose(model(x), expected, atol=1e-6)


def image_digits(bundle: DataBundle) -> DataBundle:
    def as_images(split: TensorSplit) -> TensorSplit:
        return TensorSplit(split.x.view(-1, 1, 8, 8), split.y)

    return DataBundle(
        "digits",
        DataSpec("classification", (1, 8, 8), 10),
        as_images(bundle.train),
        as_images(bundle.val),
        as_images(bundle.test),
    )


def test_structured_pruning_shrinks_conv_batchnorm_and_flatten(digits_bundle):
    data = image_digits(digits_bundle)
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [8, 16], "hidden": 32, "norm": "batch"}, data.spec)
    train(model, data, quick_train_config(epochs=2, lr=0.05), batch_size=64)
    params_before = sum(p.numel() for p in model.parameters())
    changes = structured.prune_units(model.eval(), 0.5, data.test.x[:2])
    assert changes == {
        "features.block1.conv": (8, 4),
        "features.block2.conv": (16, 8),
        "classifier.fc1": (32, 16),
    }
    assert model.features.block1.norm.num_features == 4 and model.features.block2.conv.in_channels == 4
    assert model.classifier.fc1.in_features == 8 * 2 * 2  # 8 channels x 2x2 map after the flatten
    assert sum(p.numel() for p in model.parameters()) < params_before / 2.5
    assert model(data.test.x[:5]).shape == (5, 10)
    fresh = build_model("cnn", {"channels": [8, 16], "hidden": 32, "norm": "batch"}, data.spec)
    structured.resize_to_shapes(fresh, {k: list(v.shape) for k, v in model.state_dict().items()})
    fresh.load_state_dict(model.state_dict())  # the pruned shapes rebuild from the recorded sizes


def test_structured_pruning_is_faster_on_dense_kernels():
    spec = DataSpec("classification", (1, 28, 28), 10)
    dense = build_model("mlp", {"preset": "2x800"}, spec).eval()
    pruned = build_model("mlp", {"preset": "2x800"}, spec).eval()
    structured.prune_units(pruned, 0.75, torch.zeros(2, 1, 28, 28))
    assert pruned.net.fc1.out_features == 200 and pruned.net.fc2.in_features == 200
    timing = latencies({"dense": dense, "pruned": pruned}, torch.randn(256, 1, 28, 28), (256,), repeats=5)
    assert timing["pruned"][256] < timing["dense"][256]  # 1/4 of the units: well under the dense time


def test_structured_pruning_refuses_models_without_unit_pairs():
    with pytest.raises(Exception, match="nothing can be removed"):
        structured.prune_units(nn.Sequential(nn.Linear(4, 2)), 0.5, torch.zeros(2, 4))
