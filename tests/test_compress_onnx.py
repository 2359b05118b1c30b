"""ONNX export of dense and int8 models: onnxruntime computes what torch computes, at any batch size."""

import pytest
import torch

from behemoth.compression import quantize
from behemoth.compression.onnx_export import export_onnx, onnx_outputs, onnx_parity
from behemoth.errors import BehemothError
from behemoth.models import build_model
from behemoth.spec import DataSpec

SPEC = DataSpec("classification", (1, 12, 12), 10)


@pytest.fixture(scope="module")
def conv_model():
    torch.manual_seed(0)
    return build_model("cnn", {"channels": [4, 8], "hidden": 16, "norm": "batch"}, SPEC).eval()


def test_dense_model_matches_onnxruntime(conv_model, tmp_path):
    path = export_onnx(conv_model, torch.randn(2, 1, 12, 12), tmp_path / "dense.onnx")
    parity = onnx_parity(conv_model, path, torch.randn(37, 1, 12, 12))  # another batch size than exported
    assert parity["max_abs_diff"] < 1e-5 and parity["argmax_agreement"] == 1.0


def test_int8_model_matches_onnxruntime_to_one_output_step(conv_model, tmp_path):
    model = quantize.quantize_static(conv_model, [torch.randn(128, 1, 12, 12)])
    path = export_onnx(model, torch.randn(2, 1, 12, 12), tmp_path / "int8.onnx")
    x = torch.randn(64, 1, 12, 12)
    parity = onnx_parity(model, path, x)
    assert parity["output_step"] > 0 and parity["max_abs_diff"] <= 1.01 * parity["output_step"]
    assert parity["argmax_agreement"] >= 0.95
    assert onnx_outputs(path, x[:1]).shape == (1, 10)


def test_dynamic_int8_export_is_refused_with_a_reason(tmp_path):
    model = quantize.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 4)))
    with pytest.raises(BehemothError, match="dynamic int8"):
        export_onnx(model, torch.randn(2, 8), tmp_path / "d.onnx")
