"""The `[compress]` config section: what `behemoth compress` does to a trained run, and how `behemoth distill`
trains a student. Kept free of torch (like `[tune]` and `[explain]`) so loading any config stays light.

    [compress]
    prune = 0.92            # unstructured magnitude pruning: fraction of weights set to zero (0: off)
    scope = "global"        # one magnitude threshold over all layers, or "layer": the same sparsity in each
    schedule = "gradual"    # Zhu & Gupta's cubic schedule during retraining, or "oneshot" then retrain
    structured = 0.0        # fraction of hidden units / channels physically removed (0: off)
    retrain_epochs = 2      # retraining after pruning, through the training engine, at lr * retrain_lr_scale
    quant = "kmeans6"       # none | int8 (static, calibrated) | dynamic | qat | kmeans<bits> (weight sharing)
                            # | int8w | int4w (language models: weight-only, bf16 compute; group = 128)
    code = "huffman"        # entropy coding of the .bhm artifact: none | huffman | zstd

The CLI's `--recipe prune=0.92,quant=kmeans6,code=huffman` sets the same fields (`compress.<key>`).
"""

import re
from typing import Literal

from pydantic import Field, field_validator

from behemoth.config.section import Section

QUANT_PATTERN = re.compile(r"^(none|int8|dynamic|qat|int8w|int4w|kmeans([1-9]|1[0-6]))$")
QUANT_CHOICES = "none | int8 | dynamic | qat | int8w | int4w | kmeans<bits> (bits 1..16, e.g. kmeans6)"
WEIGHT_ONLY = {"int8w": 8, "int4w": 4}  # language models: weight-only int8 per channel, int4 in groups
GROUP_SIZES = (32, 64, 128)


class CompressConfig(Section):
    # unstructured magnitude pruning
    prune: float = Field(0.0, ge=0.0, lt=1.0)  # target fraction of zero weights (Linear/Conv weights)
    scope: Literal["layer", "global"] = "global"  # one threshold over all layers, or per layer
    schedule: Literal["oneshot", "gradual"] = "gradual"  # gradual: Zhu & Gupta's cubic schedule
    layer_sparsity: dict[str, float] = {}  # per-layer targets that override `prune`, e.g. {"net.out" = 0.7}
    prune_end: float = Field(
        0.75, gt=0.0, le=1.0
    )  # gradual: final sparsity reached at this fraction of retraining
    prune_every: int | None = Field(
        None, ge=1
    )  # gradual: optimizer steps between mask updates (None: ~8 per epoch)
    # structured pruning: whole hidden units / channels removed, the next layer rewired
    structured: float = Field(0.0, ge=0.0, lt=1.0)
    # retraining after pruning (and QAT / centroid fine-tuning), through the training engine
    retrain_epochs: int = Field(2, ge=0)
    retrain_lr_scale: float = Field(0.1, gt=0.0, le=1.0)  # retrain at train.lr * this (Han et al.: 1/10)
    # quantization
    quant: str = "none"  # int8 kernels, or a k-means codebook of 2^bits shared weights
    conv_bits: int | None = Field(None, ge=1, le=16)  # kmeans: bits for conv layers (Deep Compression: 8)
    finetune_epochs: int = Field(1, ge=0)  # kmeans: centroid fine-tuning; qat: fake-quant training epochs
    # kmeans: centroid fine-tuning lr = train.lr * this. A shared weight's gradient is the sum over its
    # cluster (hundreds of weights), so it needs a far smaller step than retraining single weights
    centroid_lr_scale: float = Field(0.01, gt=0.0, le=1.0)
    per_channel: bool = True  # int8/qat weights: one scale per output channel (else per tensor)
    engine: Literal["x86", "fbgemm", "onednn", "qnnpack"] = "x86"  # torch.ao quantized kernels
    calibration_samples: int = Field(1024, ge=1)  # int8: training samples the activation observers see
    group: int = 128  # int4w: inputs sharing one scale and zero (32, 64 or 128; smaller is finer, larger)
    head: bool = False  # int8w/int4w: quantize the output head too (unties it from a tied embedding)
    # the artifact
    code: Literal["none", "huffman", "zstd"] = "huffman"  # entropy coding of the .bhm file
    output: str | None = None  # artifact path; default <run>/compressed/model.bhm
    onnx: bool = False  # also export model.onnx (the final model, dense or int8) and check it in onnxruntime
    latency_repeats: int = Field(20, ge=1)  # timed forward passes per batch size (medians reported)
    # distillation: the teacher's run directory for `behemoth distill`; in `behemoth compress` every
    # retraining then distils from it (the uncompressed run itself is a good teacher for its pruned copy)
    teacher: str | None = None
    temperature: float = Field(4.0, gt=0.0)  # softmax temperature T of teacher and student
    alpha: float = Field(0.9, ge=0.0, le=1.0)  # weight of the soft-target term; 1 - alpha on the labels

    @field_validator("quant")
    @classmethod
    def _known_quant(cls, value: str) -> str:
        if not QUANT_PATTERN.match(value):
            raise ValueError(f"expected {QUANT_CHOICES}")
        return value

    @field_validator("group")
    @classmethod
    def _known_group(cls, value: int) -> int:
        if value not in GROUP_SIZES:
            raise ValueError("expected 32, 64 or 128 (inputs per int4 scale and zero)")
        return value

    @field_validator("layer_sparsity")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not 0.0 <= amount < 1.0:
                raise ValueError(f"layer {name!r}: sparsity {amount} is not in [0, 1)")
        return value

    @property
    def weight_only_bits(self) -> int | None:
        """8 or 4 for weight-only quantization (quant = int8w / int4w), else None."""
        return WEIGHT_ONLY.get(self.quant)

    @property
    def kmeans_bits(self) -> int | None:
        """Bits of the weight-sharing codebook (quant = kmeans<bits>), else None."""
        return int(self.quant[6:]) if self.quant.startswith("kmeans") else None
