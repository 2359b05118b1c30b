"""Model compression: pruning (unstructured and structured), int8 quantization (static, dynamic, QAT),
k-means weight sharing, distillation, the packed `.bhm` artifact and ONNX export.

Each technique is a plain function on a model in its own module (`prune`, `structured`, `quantize`,
`kmeans`, `distill`), the artifact has `coding` (bit packing, relative indices, Huffman, zstd), `pack`
(the .bhm format, `load_packed`) and `rebuild` (models <-> records), plus `onnx_export` and `measure`.
The adapters: `pipeline.compress_run` chains the techniques on a trained run for `behemoth compress`, and
`distill_run` trains a student run for `behemoth distill`. This package door imports only the config
section: schema.py imports it, and config loading must not pull in torch.
"""

from behemoth.config.compress import CompressConfig

__all__ = ["CompressConfig"]
