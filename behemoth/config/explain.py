"""The `[explain]` config section: which attribution method, on how many samples, with which budgets.

Kept free of torch (like `[tune]`) so loading any config stays light. CLI options override these.

    [explain]
    method = "ig"          # ig | saliency | gradient_shap | kernel_shap | lime | occlusion
    samples = 8
    target = "pred"        # explain the predicted class, or the true label
    n_steps = 32           # IG starts here and doubles until completeness error < completeness_tol
"""

from typing import Literal

from pydantic import Field, model_validator

from behemoth.config.section import Section

Method = Literal["ig", "saliency", "gradient_shap", "kernel_shap", "lime", "occlusion"]
METHODS: tuple[str, ...] = Method.__args__
# methods whose attributions should sum to f(x) - f(x'): IG exactly (in the limit of steps), the SHAP
# estimators in expectation; saliency, LIME and occlusion make no such promise
COMPLETE_METHODS = ("ig", "gradient_shap", "kernel_shap")
# language models continuing a prompt: each generated token attributed to the prompt's tokens (Captum's LLM
# attribution); explain/generation.py implements them
GENERATION_METHODS: tuple[str, ...] = ("feature_ablation", "ig")
GRADIENT_METHODS = ("ig", "saliency", "gradient_shap")  # need the model's gradients (not int8 kernels)


class ExplainConfig(Section):
    method: Method = "ig"  # Captum attribution method
    samples: int = Field(8, ge=1)  # how many inputs of `split` to explain (the first N)
    split: Literal["test", "val", "train"] = "test"  # where the samples come from
    target: Literal["pred", "label"] = "pred"  # explain the predicted class or the true label
    baseline: Literal["black", "zeros"] = "black"  # black: the normalised black image; zeros: the data mean
    seed: int = 0  # the random draws of gradient_shap, kernel_shap and lime
    # budgets
    n_steps: int = Field(32, ge=2)  # IG: first number of steps; doubled per sample until completeness holds
    max_steps: int = Field(512, ge=2)  # IG: cap on the doubling
    completeness_tol: float = Field(0.01, gt=0.0, lt=1.0)  # IG: |sum attr - (f(x) - f(x'))| / |f(x) - f(x')|
    n_samples: int = Field(64, ge=1)  # gradient_shap / kernel_shap / lime: samples per input
    internal_batch_size: int = Field(512, ge=1)  # inputs per forward pass inside a method
    patch: int | None = Field(
        None, ge=1
    )  # image side of a feature patch (occlusion/lime/kernel_shap); None: auto
    # fidelity
    curve_steps: int = Field(20, ge=2)  # points on the deletion/insertion curves
    infidelity_samples: int = Field(16, ge=1)  # perturbations for Captum's infidelity
    sanity_check: bool = True  # model-randomization check (one more attribution pass)

    @model_validator(mode="after")
    def _steps_in_order(self) -> "ExplainConfig":
        if self.max_steps < self.n_steps:
            raise ValueError(f"max_steps = {self.max_steps} is below n_steps = {self.n_steps}")
        return self
