#!/usr/bin/env bash
# The whole GPU proof on one machine with an NVIDIA H100/H200 (CuPy and nvcc installed), in under 10
# minutes:
#   1. the device tests through CuPy (GGUFPY_TEST_BACKENDS=cuda): every kernel against the NumPy
#      reference, whole generated models against the CPU engine, replayed decode steps (CUDA graphs)
#   2. bench pp512 / tg128 on SmolLM2-135M- and Gemma-3-270M-shaped models (benchmarks/shapes/*.json:
#      the real files' dimensions and quant types, random weights; the real files stay behind) and a
#      gpt-oss-20b-shaped model (tools/make_tiny_gguf.py gpt-oss --shape 20b, ~12 GB), printing
#      tokens/s, kernels per decode step and the share of the memory bandwidth each decode step reaches.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (results: OUT_DIR/gpu_tests.log, gpu_bench.json)
# Python packages it needs beyond the GPU image's: gguf (and the project's own: run from the repo root;
# wheels in .whl/ are installed to /tmp/site first if present).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$OUT" /tmp/gpu_models
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 - <<'PY'
import importlib
for m in ("numpy", "numba", "cupy", "gguf", "tokenizers", "jinja2", "pytest"):
    try:
        mod = importlib.import_module(m); print(f"{m} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"MISSING {m}: {e}")
PY
python3 -m engine devices

echo "== 1. device tests on cuda"
GGUFPY_TEST_BACKENDS=cuda timeout 300 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_gpu_products.py tests/test_gpu_attention.py tests/test_gpu_ops.py tests/test_gpu_models.py \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -25
echo "tests: $(( $(date +%s) - start )) s"

echo "== 2. models"
for s in benchmarks/shapes/*.json; do
    m="/tmp/gpu_models/$(basename "$s" .json).gguf"
    [ -f "$m" ] || python3 tools/make_tiny_gguf.py twin "$s" "$m" >/dev/null
done
[ -f /tmp/gpu_models/gpt-oss-20b-shaped.gguf ] || \
    python3 tools/make_tiny_gguf.py gpt-oss /tmp/gpu_models/gpt-oss-20b-shaped.gguf --shape 20b >/dev/null
echo "models: $(( $(date +%s) - start )) s"

echo "== 3. speed"
timeout 420 python3 benchmarks/gpu_bench.py --backend cuda -p 512 -n 128 -r 3 --json "$OUT/gpu_bench.json" \
    /tmp/gpu_models/smollm2-135m-instruct-q4_1.gguf /tmp/gpu_models/gemma-3-270m-q4_k_m.gguf \
    /tmp/gpu_models/gpt-oss-20b-shaped.gguf
echo "total: $(( $(date +%s) - start )) s"
