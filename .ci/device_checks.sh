#!/bin/bash
# The GPU paths CI cannot run (CI has no GPU): CUDA training (fp32/bf16/fp16), NCCL, FSDP2 on CUDA, the
# GradScaler and CUDA RNG through a checkpoint, and a SIGKILLed fp16 CUDA run resumed bit for bit.
# For a machine with CUDA torch but without behemoth's other dependencies: put their wheels in .whl/
# (pydantic, pydantic-core, annotated-types, typing-inspection, blosc2, ndindex for Python 3.12 sufficed
# on the device image of December 2026) and run `bash .ci/device_checks.sh` from the repository root.
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -p no:cacheprovider -p no:warnings -q -rs --durations=15 tests/test_gpu.py \
  tests/test_exact_resume.py -k "not bpe" 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m pytest -p no:cacheprovider -p no:warnings -q -rs \
  "tests/test_resume_table.py::test_a_killed_recipe_resumes_bitwise[digits-fp16-cuda]" 2>&1 | tee "$OUT/gpu_resume.log"
