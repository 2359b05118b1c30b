"""CUDA paths of the training engine: bf16 autocast and fp16 with a grad scaler. Skipped without a GPU."""

import pytest
import torch

from behemoth.train import train
from tests.conftest import mlp, quick_train_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_trains_on_cuda(digits_bundle, precision):
    model = mlp()
    result = train(model, digits_bundle, quick_train_config(epochs=4, precision=precision, device="cuda"),
                   batch_size=32)
    assert next(model.parameters()).is_cuda
    assert result.last_eval["val.acc"] > 0.9 and not result.diverged
    assert result.peak_memory_mb > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())

