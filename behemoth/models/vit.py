"""A small Vision Transformer (Dosovitskiy et al. 2021) for image classification.

Cut the image into patch_size x patch_size patches (a Conv2d with stride = patch_size embeds each),
prepend a learned CLS token, add learned position embeddings, run pre-LN bidirectional blocks, and
classify from the CLS token. MNIST with patch 7: 16 patches + CLS = 17 tokens.
"""

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from behemoth.errors import ModelError
from behemoth.models.common import MNIST_SPEC, image_shape
from behemoth.models.dropout import Dropout
from behemoth.models.entry import ModelEntry
from behemoth.models.transformer_blocks import Block, init_gpt2
from behemoth.spec import DataSpec


class ViTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patch_size: int = Field(7, ge=1)
    dim: int = Field(64, ge=1)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("heads")
    @classmethod
    def _heads_divide_width(cls, heads: int, info: ValidationInfo) -> int:
        dim = info.data.get("dim")
        if dim and dim % heads:
            raise ValueError(f"must divide model.dim = {dim}")
        return heads


class ViT(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, opts: ViTOptions):
        super().__init__()
        c, h, w = input_shape
        p = opts.patch_size
        num_patches = (h // p) * (w // p)
        self.patch_embed = nn.Conv2d(c, opts.dim, kernel_size=p, stride=p)  # one vector per patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, opts.dim))
        self.pos_emb = nn.Parameter(torch.zeros(1, num_patches + 1, opts.dim))
        self.drop = Dropout(opts.dropout)
        mlp_hidden = max(1, round(opts.mlp_ratio * opts.dim))
        self.blocks = nn.ModuleList(
            Block(opts.dim, opts.heads, mlp_hidden, opts.dropout, bias=True, causal=False)
            for _ in range(opts.depth)
        )
        self.ln_f = nn.LayerNorm(opts.dim)
        self.head = nn.Linear(opts.dim, num_classes)
        init_gpt2(self, opts.depth)  # Linear N(0, 0.02), scaled residual projections
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        x = self.patch_embed(x)  # (B, D, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self.drop(torch.cat([cls, x], dim=1) + self.pos_emb)  # (B, N + 1, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))  # classify from the CLS token: (B, classes)


def build(opts: ViTOptions, spec: DataSpec) -> ViT:
    c, h, w = image_shape(spec, "vit")
    if h % opts.patch_size or w % opts.patch_size:
        raise ModelError(
            f"model.patch_size = {opts.patch_size} does not divide the image size {h}x{w}: "
            "pick a patch size that divides both sides"
        )
    return ViT((c, h, w), spec.num_classes, opts)


ENTRY = ModelEntry(
    name="vit",
    summary="Small Vision Transformer: patch embedding, CLS token, pre-LN blocks",
    options=ViTOptions,
    build=build,
    tasks=("classification",),
    example_spec=MNIST_SPEC,
)
