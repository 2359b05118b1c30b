"""One contract for every attribution method:
`attribute(model, inputs, target, method) -> same shape as inputs`.

Methods come from Captum; this module only chooses their inputs (baselines, feature patches, the
embedding layer of a language model) and batches them. The model is wrapped once in an `Explained`:
its scores are (B, K) logits, for a language model the next-token logits at the last position.

  images (B, C, H, W) and tables (B, F): attributions on the inputs themselves.
  tokens (B, T) int64: attributions on the token-embedding output (B, T, E), summed over E -> (B, T).
"""

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from behemoth.config.explain import METHODS
from behemoth.data.preprocessing import black
from behemoth.spec import Preprocessing

Kind = Literal["image", "table", "tokens"]
TOKEN_METHODS = (
    "ig",
    "saliency",
    "gradient_shap",
)  # gradient methods work on embeddings; perturbation ones do not
SPACE_TOKEN = 32  # byte-level baseline token: a space, the most neutral byte of running text


@dataclass
class Explained:
    """A model as the attribution methods see it: a scoring function and, for text, the layer to
    attribute to."""

    model: nn.Module
    kind: Kind
    layer: nn.Module | None = None  # tokens: the embedding whose output is attributed

    def scores(self, inputs: torch.Tensor) -> torch.Tensor:  # -> (B, K)
        out = self.model(inputs)
        return out[:, -1, :] if self.kind == "tokens" else out  # (B, T, V) -> next-token logits (B, V)

    def embedding_scores(self, emb: torch.Tensor) -> torch.Tensor:  # (B, T, E) -> (B, K)
        """Scores with the embedding layer's output replaced by `emb`: gradient methods in embedding space."""
        handle = self.layer.register_forward_hook(lambda module, args, out: emb)
        try:
            return self.scores(torch.zeros(emb.shape[:2], dtype=torch.long, device=emb.device))
        finally:
            handle.remove()


def kind_of(task: str, input_shape: tuple[int, ...]) -> Kind:
    return "tokens" if task == "language_model" else "image" if len(input_shape) == 3 else "table"


def explained(model: nn.Module, task: str, input_shape: tuple[int, ...]) -> Explained:
    """Wrap a zoo model for attribution; language models must expose `tok_emb` (the zoo's gpt does)."""
    kind = kind_of(task, input_shape)
    if kind == "tokens" and getattr(model, "tok_emb", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no tok_emb embedding to attribute language-model inputs to"
        )
    return Explained(model, kind, model.tok_emb if kind == "tokens" else None)


def runs_on_int8_kernels(model: nn.Module) -> bool:
    """True for models from torch.ao's quantized modules (a .bhm with an int8 runtime): no gradients,
    float32 only."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def check_method(method: str, kind: Kind) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if kind == "tokens" and method not in TOKEN_METHODS:
        raise ValueError(
            f"method {method!r} does not support language models (token inputs): "
            f"use {', '.join(TOKEN_METHODS)}"
        )


def default_baselines(
    inputs: torch.Tensor,
    kind: Kind,
    how: str = "black",
    prep: Preprocessing | None = None,
    space_token: int = SPACE_TOKEN,
) -> torch.Tensor:
    """x' for IG, SHAP, occlusion and the fidelity curves, same shape as inputs.

    images, how="black": the black image in normalised space, (0 - mean) / std per channel;
    how="zeros" (and tables): zeros in normalised space, i.e. the training mean; tokens: spaces
    (`space_token`: the id the run's tokenizer gives " ").
    """
    if kind == "tokens":
        return torch.full_like(inputs, space_token)
    if kind == "image" and how == "black" and prep is not None:
        return black(inputs, prep)
    return torch.zeros_like(inputs)


def auto_patch(inputs: torch.Tensor, kind: Kind, patch: int | None) -> int:
    """Side of the square patches that perturbation methods switch on and off: about 8 per image side."""
    if kind != "image":
        return 1
    return patch or max(1, math.ceil(inputs.shape[-1] / 8))


def patch_mask(inputs: torch.Tensor, patch: int) -> torch.Tensor:
    """(1, C, H, W) feature ids: one id per patch, shared by all channels (Lime/KernelSHAP superpixels)."""
    _, c, h, w = inputs.shape
    rows = torch.arange(h) // patch  # (H,)
    cols = torch.arange(w) // patch  # (W,)
    ids = rows[:, None] * math.ceil(w / patch) + cols[None, :]  # (H, W)
    return ids.expand(1, c, h, w).contiguous()


def attribute(
    target_model: Explained,
    inputs: torch.Tensor,
    target: torch.Tensor,
    method: str,
    *,
    baselines: torch.Tensor | None = None,
    n_steps: int = 50,
    n_samples: int = 64,
    internal_batch_size: int = 512,
    patch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Attributions of `target` scores to `inputs`; same shape as inputs, float32, deterministic for a
    seed."""
    from captum import attr as ca
    from captum._utils.models.linear_model import SkLearnRidge

    kind = target_model.kind
    check_method(method, kind)
    if baselines is None:
        baselines = default_baselines(inputs, kind)
    f, layer, batch = target_model.scores, target_model.layer, len(inputs)
    per_eval = max(1, internal_batch_size // batch)  # perturbed copies of the batch per forward pass
    numpy_state = np.random.get_state()  # GradientShap draws its path points from numpy
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(require gradients|multiple inputs for Lime).*")
        torch.manual_seed(seed)
        np.random.seed(seed)
        if method == "ig":
            algo = ca.LayerIntegratedGradients(f, layer) if layer is not None else ca.IntegratedGradients(f)
            out = algo.attribute(
                inputs,
                baselines,
                target=target,
                n_steps=n_steps,
                internal_batch_size=max(internal_batch_size, batch),
            )
        elif method == "saliency":
            if layer is not None:  # |gradient| of the embedding, as Saliency does for inputs
                out = (
                    ca.LayerGradientXActivation(f, layer, multiply_by_inputs=False)
                    .attribute(inputs, target)
                    .abs()
                )
            else:
                out = ca.Saliency(f).attribute(inputs, target=target, abs=True)
        elif method == "gradient_shap":
            # one reference (the baseline) plus Gaussian noise, n_samples random points on the paths;
            # tokens: the same in embedding space, (B, T, E)
            if layer is not None:
                with torch.no_grad():
                    inputs, baselines = layer(inputs), layer(baselines)
                f = target_model.embedding_scores
            out = ca.GradientShap(f).attribute(
                inputs, baselines[:1], n_samples=n_samples, stdevs=0.09, target=target
            )
        elif method == "occlusion":
            p = auto_patch(inputs, kind, patch)
            window = (inputs.shape[1], p, p) if kind == "image" else (1,)
            strides = (inputs.shape[1], max(1, p // 2), max(1, p // 2)) if kind == "image" else 1
            out = ca.Occlusion(f).attribute(
                inputs, window, strides, baselines, target=target, perturbations_per_eval=per_eval
            )
        else:  # kernel_shap | lime: a surrogate fitted on n_samples on/off patterns of the patches
            mask = patch_mask(inputs, auto_patch(inputs, kind, patch)) if kind == "image" else None
            # Lime: a ridge surrogate; Captum's default Lasso (alpha 0.01) zeroes every weight when the
            # score varies little over the samples, which leaves a blank picture
            algo = ca.KernelShap(f) if method == "kernel_shap" else ca.Lime(f, SkLearnRidge(alpha=1.0))
            out = algo.attribute(
                inputs,
                baselines,
                target=target,
                feature_mask=mask,
                n_samples=n_samples,
                perturbations_per_eval=per_eval,
            )
            if mask is not None:  # Captum repeats a patch's weight on each of its elements: spread it
                out = (
                    out / torch.bincount(mask.flatten())[mask]
                )  # instead, so elements sum to the patch's weight
    np.random.set_state(numpy_state)
    if layer is not None:
        out = out.sum(-1)  # (B, T, E) -> (B, T): one number per token
    return out.detach().float()


def predict(target_model: Explained, inputs: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Scores (B, K) in chunks, without gradients."""
    with torch.no_grad():
        return torch.cat([target_model.scores(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def in_chunks(fn: Callable[[slice], torch.Tensor], total: int, chunk: int, progress: Callable | None = None):
    """fn over slices of `total` items, concatenated; `progress(done)` after each chunk."""
    parts = []
    for start in range(0, total, chunk):
        parts.append(fn(slice(start, min(total, start + chunk))))
        if progress:
            progress(min(total, start + chunk))
    return torch.cat(parts)
