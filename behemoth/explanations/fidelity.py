"""How far to trust an explanation: numbers measured on the model, reported with every attribution.

- completeness (IG): |sum attr - (f(x) - f(x'))| / |f(x) - f(x')|, in float64; `ig_until_complete`
  doubles n_steps for the samples still above tolerance (the IG paper: 20-300 steps reach 5%).
- deletion / insertion AUC: the target's probability as the most-attributed features are removed
  from x (deletion: lower is better) or added to x' (insertion: higher is better).
- infidelity (Captum, Yeh et al. 2019): E[(I . attr - (f(x) - f(x - I)))^2] for Gaussian I, with
  attributions rescaled optimally (normalize=True) so methods on different scales compare.
- model randomization (Adebayo et al. 2018): Spearman correlation of |attr| between the trained model
  and the same model with re-initialised weights; an explanation that ignores the weights stays high.
"""

import copy

import numpy as np
import torch

from behemoth.explanations.methods import Explained, attribute, predict, runs_on_int8_kernels

EPS = 1e-9
RANDOM_SEED_OFFSET = 7919


def _float64(target_model: Explained) -> Explained:
    model = copy.deepcopy(target_model.model).double()
    layer = model.tok_emb if target_model.layer is not None else None
    return Explained(model, target_model.kind, layer)


def target_scores(target_model: Explained, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return predict(target_model, inputs).gather(1, target[:, None])[:, 0]  # (B,)


def completeness_error(
    target_model: Explained,
    attr: torch.Tensor,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """(B,) relative completeness error of IG attributions, end points from a float64 copy of the model
    (int8 models: from the model itself, whose kernels take float32 only)."""
    model64 = target_model if runs_on_int8_kernels(target_model.model) else _float64(target_model)
    cast = (
        (lambda t: t) if target_model.kind == "tokens" or model64 is target_model else (lambda t: t.double())
    )
    gap = target_scores(model64, cast(inputs), target) - target_scores(
        model64, cast(baselines), target
    )  # (B,)
    total = attr.double().flatten(1).sum(1)  # (B,)
    return (total - gap).abs() / gap.abs().clamp_min(EPS)


def ig_until_complete(
    target_model: Explained,
    inputs: torch.Tensor,
    target: torch.Tensor,
    baselines: torch.Tensor,
    *,
    n_steps: int = 32,
    max_steps: int = 512,
    tol: float = 0.01,
    internal_batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IG with n_steps doubled per sample until its completeness error < tol (or max_steps).

    Returns attributions (same shape as inputs), steps used (B,) and errors (B,). Only the samples
    still above tolerance are recomputed, so easy samples cost the first budget only.
    """
    attr = torch.zeros(inputs.shape, dtype=torch.float32)
    steps = torch.zeros(len(inputs), dtype=torch.long)
    errors = torch.full((len(inputs),), float("inf"), dtype=torch.float64)
    todo, current = torch.arange(len(inputs)), n_steps
    while len(todo):
        part = attribute(
            target_model,
            inputs[todo],
            target[todo],
            "ig",
            baselines=baselines[todo],
            n_steps=current,
            internal_batch_size=internal_batch_size,
        )
        attr[todo], steps[todo] = part, current
        errors[todo] = completeness_error(target_model, part, inputs[todo], baselines[todo], target[todo])
        todo = todo[errors[todo] >= tol]
        if current >= max_steps:
            break
        current = min(2 * current, max_steps)
    return attr, steps, errors


def deletion_insertion(
    target_model: Explained,
    inputs: torch.Tensor,
    attr: torch.Tensor,
    baselines: torch.Tensor,
    target: torch.Tensor,
    steps: int = 20,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves (B, steps + 1) of the target's probability, and their AUCs (B,).

    Features are ranked by signed attribution, most positive first; at point k the top k/steps of them
    are taken from x' (deletion) or given to x' from x (insertion).
    """
    batch = len(inputs)
    flat_x, flat_b = inputs.flatten(1), baselines.flatten(1)  # (B, D)
    rank = attr.flatten(1).argsort(dim=1, descending=True).argsort(dim=1)  # (B, D): 0 = most positive
    dims = flat_x.shape[1]
    fractions = torch.linspace(0, 1, steps + 1)
    deleted, inserted = [], []
    for fraction in fractions:
        top = rank < round(float(fraction) * dims)  # (B, D)
        deleted.append(torch.where(top, flat_b, flat_x))
        inserted.append(torch.where(top, flat_x, flat_b))
    stacked = torch.cat(deleted + inserted).view(-1, *inputs.shape[1:])  # (2 (steps+1) B, ...)
    probs = predict(target_model, stacked).softmax(-1)
    picked = probs.gather(1, target.repeat(2 * (steps + 1))[:, None])[:, 0].view(2, steps + 1, batch)
    deletion, insertion = picked[0].T, picked[1].T  # (B, steps + 1)
    auc = lambda c: torch.trapezoid(c, fractions, dim=1)  # noqa: E731
    return deletion, insertion, auc(deletion), auc(insertion)


def infidelity_score(
    target_model: Explained,
    inputs: torch.Tensor,
    attr: torch.Tensor,
    target: torch.Tensor,
    n_perturb: int = 16,
    sigma: float = 0.1,
    seed: int = 0,
) -> torch.Tensor | None:
    """(B,) Captum infidelity under Gaussian noise of `sigma` (normalised units); None for token inputs."""
    if target_model.kind == "tokens":
        return None  # noise on token ids means nothing; the embedding-space version is not done yet
    from captum.metrics import infidelity

    def perturb(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(x) * sigma
        return noise, x - noise

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return infidelity(
            target_model.scores,
            perturb,
            inputs,
            attr,
            target=target,
            n_perturb_samples=n_perturb,
            normalize=True,
        ).detach()


def randomized(target_model: Explained, seed: int = 0) -> Explained:
    """A copy of the model with every layer re-initialised (reset_parameters), seeded."""
    model = copy.deepcopy(target_model.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED_OFFSET + seed)  # not the seed the model was built with
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    layer = model.tok_emb if target_model.layer is not None else None
    return Explained(model, target_model.kind, layer)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman rank correlation between rows of a and b (ties share their average rank)."""
    from scipy.stats import spearmanr

    rows = []
    for x, y in zip(a.flatten(1).double().numpy(), b.flatten(1).double().numpy()):
        rho = spearmanr(x, y).statistic if x.std() > 0 and y.std() > 0 else np.nan
        rows.append(rho)
    return torch.tensor(rows, dtype=torch.float64)


def randomization_check(
    target_model: Explained,
    inputs: torch.Tensor,
    target: torch.Tensor,
    attr: torch.Tensor,
    method: str,
    seed: int = 0,
    **budget,
) -> torch.Tensor:
    """(B,) Spearman correlation of |attr| on the trained vs the re-initialised model (low: it changed)."""
    random_attr = attribute(randomized(target_model, seed), inputs, target, method, seed=seed, **budget)
    return spearman(attr.abs(), random_attr.abs())


def summarise(values: torch.Tensor | None) -> dict | None:
    if values is None:
        return None
    finite = values[torch.isfinite(values)].double()
    if not len(finite):
        return {"mean": None, "median": None, "max": None}
    return {"mean": float(finite.mean()), "median": float(finite.median()), "max": float(finite.max())}
