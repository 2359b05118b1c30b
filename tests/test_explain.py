"""Every attribution method through the same invariants, on image, table and token models (untrained, seeded).

Invariants (Captum's contract): attributions have the inputs' shape; the same seed gives the same
numbers; each row answers its own target; IG is complete (Σ attr = f(x) - f(x') within 1%).
"""

import pytest
import torch

from behemoth.explanations import fidelity as fid
from behemoth.explanations.methods import TOKEN_METHODS, attribute, default_baselines, explained
from behemoth.models import build_model
from behemoth.spec import DataSpec

MODELS = {
    "image": ("lenet5", DataSpec("classification", (1, 8, 8), 10), {}),
    "table": ("mlp", DataSpec("classification", (13,), 3), {"hidden": [16]}),
    "tokens": (
        "gpt",
        DataSpec("language_model", (12,), 256),
        dict(n_layer=1, n_head=2, n_embd=16, block_size=12),
    ),
}
ALL_METHODS = ("ig", "saliency", "gradient_shap", "kernel_shap", "lime", "occlusion")
CASES = [
    (method, kind) for kind in MODELS for method in ALL_METHODS if kind != "tokens" or method in TOKEN_METHODS
]
DETERMINISTIC = ("ig", "saliency", "occlusion")  # no sampling: a row's answer cannot depend on its batch
BUDGET = dict(n_steps=16, n_samples=24, internal_batch_size=256)


@pytest.fixture(scope="module")
def setups():
    out = {}
    for kind, (name, spec, options) in MODELS.items():
        torch.manual_seed(0)
        model = build_model(name, options, spec).eval()
        generator = torch.Generator().manual_seed(1)
        if kind == "tokens":
            x = torch.randint(0, 256, (3, *spec.input_shape), generator=generator)
        else:
            x = torch.randn(3, *spec.input_shape, generator=generator)
        out[kind] = (explained(model, spec.task, spec.input_shape), x, torch.tensor([0, 1, 2]))
    return out


@pytest.mark.parametrize("method,kind", CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_attribution_invariants(setups, method, kind):
    tm, x, target = setups[kind]
    first = attribute(tm, x, target, method, seed=3, **BUDGET)
    assert first.shape == x.shape and first.dtype == torch.float32
    assert torch.isfinite(first).all() and first.abs().sum() > 0
    assert torch.equal(first, attribute(tm, x, target, method, seed=3, **BUDGET))  # determinism with a seed
    other = attribute(tm, x, (target + 1) % 3, method, seed=3, **BUDGET)
    assert not torch.allclose(first, other)  # the target changes the answer
    if method in DETERMINISTIC:  # row i explains target[i], as a batch of one would
        alone = attribute(tm, x[1:2], target[1:2], method, seed=3, **BUDGET)
        torch.testing.assert_close(first[1:2], alone, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", list(MODELS))
def test_ig_completeness_with_auto_steps(setups, kind):
    tm, x, target = setups[kind]
    baselines = default_baselines(x, tm.kind)
    attr, steps, errors = fid.ig_until_complete(tm, x, target, baselines, n_steps=8, max_steps=512, tol=0.01)
    assert attr.shape == x.shape and (errors < 0.01).all(), (steps, errors)
    assert ((steps >= 8) & (steps <= 512)).all()


@pytest.mark.parametrize("kind", ["image", "table"])
def test_kernel_shap_is_efficient_per_element(setups, kind):
    """Kernel SHAP's values sum to f(x) - f(x'); on images a patch's value is spread over its pixels."""
    tm, x, target = setups[kind]
    baselines = default_baselines(x, tm.kind)
    attr = attribute(tm, x, target, "kernel_shap", baselines=baselines, patch=2, **BUDGET)
    assert (fid.completeness_error(tm, attr, x, baselines, target) < 1e-3).all()
    if kind == "image":  # 2x2 patches: the four pixels of a patch share one value
        assert torch.equal(attr[:, :, 0, 0], attr[:, :, 1, 1])


def test_auto_steps_double_until_the_tolerance_holds(setups):
    tm, x, target = setups["table"]
    baselines = default_baselines(x, tm.kind)
    _, first_steps, first_errors = fid.ig_until_complete(tm, x, target, baselines, n_steps=2, max_steps=2)
    assert (first_errors >= 0.01).any()  # 2 steps are not enough on a ReLU net...
    _, steps, errors = fid.ig_until_complete(tm, x, target, baselines, n_steps=2, max_steps=512, tol=0.01)
    assert steps.max() > 2 and (errors < 0.01).all()  # ...doubling got there
    assert set(steps.tolist()) <= {2, 4, 8, 16, 32, 64, 128, 256, 512}


def test_unsupported_method_for_tokens_names_the_method(setups):
    tm, x, target = setups["tokens"]
    with pytest.raises(ValueError, match="'occlusion' does not support language models"):
        attribute(tm, x, target, "occlusion")
    with pytest.raises(ValueError, match="unknown method 'deeplift'"):
        attribute(tm, x, target, "deeplift")


def test_deletion_insertion_curve_end_points(setups):
    tm, x, target = setups["image"]
    baselines = default_baselines(x, tm.kind)
    attr = attribute(tm, x, target, "ig", **BUDGET)
    deletion, insertion, del_auc, ins_auc = fid.deletion_insertion(tm, x, attr, baselines, target, steps=10)
    p_x = tm.scores(x).softmax(-1).gather(1, target[:, None])[:, 0].detach()
    p_base = tm.scores(baselines).softmax(-1).gather(1, target[:, None])[:, 0].detach()
    torch.testing.assert_close(deletion[:, 0], p_x)
    torch.testing.assert_close(deletion[:, -1], p_base)
    torch.testing.assert_close(insertion[:, -1], p_x)
    assert deletion.shape == (3, 11) and del_auc.shape == ins_auc.shape == (3,)


def test_infidelity_and_randomization(setups):
    tm, x, target = setups["table"]
    attr = attribute(tm, x, target, "ig", **BUDGET)
    infid = fid.infidelity_score(tm, x, attr, target, n_perturb=8)
    assert infid.shape == (3,) and (infid >= 0).all()
    assert fid.infidelity_score(*setups["tokens"][:2], attr, target) is None  # not defined on token ids here
    same = fid.spearman(attr.abs(), attr.abs())
    torch.testing.assert_close(same, torch.ones(3, dtype=torch.float64))
    rho = fid.randomization_check(tm, x, target, attr, "ig", **BUDGET)
    assert rho.shape == (3,) and (rho < 0.99).all()  # re-initialised weights change the attributions
