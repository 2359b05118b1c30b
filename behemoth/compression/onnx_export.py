"""ONNX export of dense and int8 models, checked against onnxruntime.

Float models go through torch.onnx's dynamo exporter (the supported path). torch.ao's int8 modules are
not exportable by torch.export, so int8 models use the TorchScript exporter, which writes them as
QuantizeLinear/DequantizeLinear around Conv/Gemm with the same scales (onnxruntime fuses these into its
own int8 kernels). Both have a dynamic batch dimension.
"""

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

from behemoth.compression.quantize import QUANT_LAYER_TYPES, is_int8, quiet
from behemoth.errors import BehemothError


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write `model` as ONNX to `path` (atomically); input "input" (batch dynamic), output "logits"."""
    path = Path(path)
    if any(isinstance(m, nnqd.Linear) for m in model.modules()):
        raise BehemothError(
            "ONNX export of a dynamic int8 model is not supported by torch.onnx "
            "(quantized::linear_dynamic); export the static int8 (quant = 'int8') or float model"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".onnx")
    os.close(fd)
    model.eval()
    try:
        with quiet(), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            if is_int8(model):
                torch.onnx.export(
                    model,
                    (example,),
                    tmp,
                    dynamo=False,
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=17,
                )
            else:
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    input_names=["input"],
                    output_names=["logits"],
                    verbose=False,
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                )
                program.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def onnx_outputs(path: str | Path, inputs: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs.detach().cpu().numpy()})[0]


def onnx_parity(model: nn.Module, path: str | Path, inputs: torch.Tensor) -> dict[str, Any]:
    """onnxruntime vs torch on `inputs`: largest absolute difference and how often the argmax agrees."""
    with torch.inference_mode():
        expected = model.eval()(inputs).float().numpy()
    got = onnx_outputs(path, inputs)
    quantized = [m for m in model.modules() if isinstance(m, QUANT_LAYER_TYPES)]
    return {
        "max_abs_diff": float(np.abs(got - expected).max()),
        "argmax_agreement": float((got.argmax(-1) == expected.argmax(-1)).mean()),
        "samples": len(inputs),
        # int8: one step of the output's quantization grid; rounding may differ by about that much
        "output_step": float(quantized[-1].scale) if quantized else None,
    }
