#!/usr/bin/env bash
# The mllama GPU check on the lent GPU machine (benchmarks/gpu_check.py; about 4 minutes there).
#
# Before the call, in the repository root here (.gpu/ is git-ignored):
#   mkdir -p .gpu && cp ../shared/gpu/wheels/llama_cpp_python-0.3.36-*.whl ../shared/gpu/wheels/diskcache-*.whl .gpu/
# Then run on the machine:  bash benchmarks/gpu_check.sh     (results in $OUT/gpu_check_*.json)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl
export PYTHONPATH="/tmp/site:$PWD"
export LD_LIBRARY_PATH="$(find / \( -name 'libcublas.so.13' -o -name 'libcudart.so.13' \) -not -path '/proc/*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 GGML_NO_BACKTRACE=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
out="${OUT:-/tmp/gpu-check-out}"
# A tiny shape on the GPU first: every GPU code path in seconds, before 11 GB of files are written.
python3 -m benchmarks.gpu_check --shape tiny --work /tmp/gpu-check --out "$out" --batches 1,4
python3 -m benchmarks.gpu_check --shape 11b --work /tmp/gpu-check --out "$out"
# The engine's numerical tests against the reference, on the GPU this time (the engine picks
# the GPU when there is one); figures above stand whatever they say.
python3 -m pytest -q -p no:cacheprovider tests/test_mllama_reference.py tests/test_mllama_generate.py \
  tests/test_mllama_engine.py 2>&1 | tee "$out/pytest_gpu.log" || true
