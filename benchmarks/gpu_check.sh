#!/usr/bin/env bash
# The whole GPU proof on one machine with an NVIDIA H100/H200 (CuPy and nvcc installed), in under 10
# minutes:
#   1. the device tests through CuPy (GGUFPY_TEST_BACKENDS=cuda): every kernel against the NumPy
#      reference, whole models against llama.cpp (llama-cpp-python, when .dev/site carries a build of
#      it) exactly as CI runs them on PoCL, replayed decode steps (CUDA graphs)
#   2. bench pp512 / tg128 on SmolLM2-135M- and Gemma-3-270M-shaped models (benchmarks/shapes/*.json:
#      the real files' dimensions, tokenizers' sizes and quant types, random weights; the real files are
#      too big to travel) and a gpt-oss-20b-shaped model (tools/make_tiny_gguf.py gpt-oss --shape 20b,
#      ~11 GB), printing tokens/s, kernels per decode step and the share of the memory bandwidth each
#      decode step reaches.
# The model tests run on those shaped twins, put where the real files would be (GGUFPY_TEST_MODELS):
# conformance with llama.cpp does not depend on the weights being trained.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (results: OUT_DIR/gpu_tests.log, gpu_bench.json)
# Python packages it needs beyond the GPU image's: gguf (and the project's own: run from the repo root;
# wheels in .whl/ are installed to /tmp/site first if present (gguf; diskcache for llama-cpp-python);
# models/*.jinja or .dev/models/*.jinja are copied when present).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/gpu_check}}"
MODELS=/tmp/gpu_models
mkdir -p "$OUT" "$MODELS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" GGUFPY_TEST_MODELS="$MODELS"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
cp models/*.jinja .dev/models/*.jinja "$MODELS"/ 2>/dev/null || true  # chat templates the tiny models take
if [ -d .dev/site/llama_cpp ]; then  # a CPU build of llama-cpp-python, the reference; kept only if it loads
    if LD_LIBRARY_PATH=.dev/site/llama_cpp/lib PYTHONPATH="$PYTHONPATH:$PWD/.dev/site" timeout 60 python3 -c \
        "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"; then
        export PYTHONPATH="$PYTHONPATH:$PWD/.dev/site" LD_LIBRARY_PATH="$PWD/.dev/site/llama_cpp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        echo "llama-cpp-python does not load here: the model tests will skip"
    fi
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

echo "== 1. models"
python3 tools/make_tiny_gguf.py twin benchmarks/shapes/smollm2-135m-instruct-q4_1.json "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" >/dev/null
python3 tools/make_tiny_gguf.py twin benchmarks/shapes/gemma-3-270m-q4_k_m.json "$MODELS/gemma-3-270m-q4_k_m.gguf" >/dev/null
echo "models: $(( $(date +%s) - start )) s"

echo "== 2. device tests on cuda"
GGUFPY_TEST_BACKENDS=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider -rfE --durations=15 --timeout 90 \
    tests/test_gpu_models.py tests/test_gpu_products.py tests/test_gpu_attention.py tests/test_gpu_ops.py \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -60
echo "tests: $(( $(date +%s) - start )) s"

echo "== 3. speed"
[ -f $MODELS/gpt-oss-20b-shaped.gguf ] || \
    python3 tools/make_tiny_gguf.py gpt-oss $MODELS/gpt-oss-20b-shaped.gguf --shape 20b >/dev/null
echo "gpt-oss-20b-shaped: $(( $(date +%s) - start )) s"
timeout 170 python3 benchmarks/gpu_bench.py --backend cuda -p 512 -n 128 -r 2 --json "$OUT/gpu_bench.json" \
    $MODELS/SmolLM2-135M-Instruct.Q4_1.gguf $MODELS/gemma-3-270m-q4_k_m.gguf $MODELS/gpt-oss-20b-shaped.gguf
echo "total: $(( $(date +%s) - start )) s"
