"""Recurrent models: a sequence classifier for images and tables, and a next-token language model.

How a sample becomes a sequence (batch_first, (B, T, features)):
- image (C, H, W): read row by row, T = H steps of C*W features (MNIST: 28 steps of 28 pixels);
- table (F,): F steps of 1 feature;
- tokens (T,) for task "language_model": an embedding of embed_dim per step.
The classifier reads the final hidden state of the last layer (both directions when bidirectional:
the forward pass's at the last step, the backward pass's at the first). The language model maps the
output of every step to the vocabulary, so (B, T) ids -> (B, T, V) logits.
"""

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from behemoth.errors import ModelError
from behemoth.models.common import MNIST_SPEC
from behemoth.models.entry import ModelEntry
from behemoth.spec import DataSpec

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: int = Field(128, ge=1)
    num_layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # between stacked layers, and before the head
    embed_dim: int = Field(64, ge=1)  # token input only


def make_rnn(input_size: int, opts: RNNOptions) -> nn.RNNBase:
    # torch applies its dropout only between layers (and warns when there is one layer)
    inner_dropout = opts.dropout if opts.num_layers > 1 else 0.0
    return CELLS[opts.cell](
        input_size,
        opts.hidden_size,
        num_layers=opts.num_layers,
        bidirectional=opts.bidirectional,
        dropout=inner_dropout,
        batch_first=True,
    )


class RNNClassifier(nn.Module):
    """Sequence of feature vectors -> RNN -> final hidden state -> Linear to classes."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, opts: RNNOptions):
        super().__init__()
        if len(input_shape) == 3:
            c, _, w = input_shape
            step_features = c * w  # one image row, all channels
        elif len(input_shape) == 1:
            step_features = 1
        else:
            raise ModelError(
                "model 'rnn' reads images (C, H, W) or tables (F,); "
                f"the data has samples of shape {input_shape}"
            )
        self.rnn = make_rnn(step_features, opts)
        self.num_directions = 2 if opts.bidirectional else 1
        self.dropout = nn.Dropout(opts.dropout)
        self.head = nn.Linear(self.num_directions * opts.hidden_size, num_classes)

    @staticmethod
    def to_sequence(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (B, C, H, W) -> (B, H, C*W): one step per image row
            b, c, h, w = x.shape
            return x.permute(0, 2, 1, 3).reshape(b, h, c * w)
        return x.unsqueeze(-1)  # (B, F) -> (B, F, 1): one step per feature

    def forward(self, x):  # (B, C, H, W) or (B, F) -> (B, classes)
        _, h_n = self.rnn(self.to_sequence(x))
        if isinstance(h_n, tuple):  # LSTM returns (h_n, c_n)
            h_n = h_n[0]
        last = h_n[-self.num_directions :]  # (dirs, B, hidden): the last layer's final states
        last = last.transpose(0, 1).reshape(x.shape[0], -1)  # (B, dirs * hidden)
        return self.head(self.dropout(last))


class RNNLanguageModel(nn.Module):
    """Token ids -> embedding -> RNN -> Linear to the vocabulary at every step."""

    def __init__(self, vocab_size: int, opts: RNNOptions):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, opts.embed_dim)
        self.rnn = make_rnn(opts.embed_dim, opts)
        self.dropout = nn.Dropout(opts.dropout)
        self.head = nn.Linear(opts.hidden_size, vocab_size)  # unidirectional: see build()

    def forward(self, idx):  # (B, T) int64 -> (B, T, V)
        out, _ = self.rnn(self.embed(idx))  # (B, T, hidden)
        return self.head(self.dropout(out))


def build(opts: RNNOptions, spec: DataSpec) -> nn.Module:
    if spec.task == "language_model":
        if opts.bidirectional:
            raise ModelError("model.bidirectional = True: a language model must not read future tokens")
        return RNNLanguageModel(spec.num_classes, opts)
    return RNNClassifier(spec.input_shape, spec.num_classes, opts)


ENTRY = ModelEntry(
    name="rnn",
    summary="LSTM/GRU: images read row by row, tables feature by feature, or a token language model",
    options=RNNOptions,
    build=build,
    tasks=("classification", "language_model"),
    example_spec=MNIST_SPEC,
)
