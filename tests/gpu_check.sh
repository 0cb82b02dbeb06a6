#!/usr/bin/env bash
# Real-size checks for a machine with a CUDA GPU (CI has none; run by hand when one is lent).
#   bash tests/gpu_check.sh [OUTDIR]        (python: $PY, default python3, with torch + diffusers)
# 1. the diffusion invariants (tests/test_p2p.py, test_pnp.py, test_diffusion.py) on the GPU;
# 2. bench_diffusion.py on the tests' tiny UNet (the issue's setting) and on the full SD 1.5
#    architecture (random weights, 512 px, fp16), twice each so the spread is visible;
# 3. the trainer: its fast tests on the GPU, and 40 steps in each mixed-precision mode.
set -u
OUT=${1:-gpu_check_out}; PY=${PY:-python3}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_p2p.py tests/test_pnp.py tests/test_diffusion.py \
  -m "not slow" 2>&1 | tee "$OUT/pytest.txt" | tail -15
for run in 1 2; do
  timeout 120 "$PY" tests/bench_diffusion.py --device cuda --steps 20 --size 64 --repeats 5 \
    --out "$OUT/bench_tiny_$run.json" > /dev/null
  timeout 300 "$PY" tests/bench_diffusion.py --device cuda --model random-sd15 --dtype float16 --steps 20 \
    --size 512 --repeats 3 --out "$OUT/bench_sd15_$run.json" > /dev/null
done
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_trainer.py -m "not slow" 2>&1 \
  | tee "$OUT/pytest_trainer.txt" | tail -8
timeout 300 "$PY" tests/gpu_train_check.py --steps 40 --out "$OUT/train_modes.json" | tail -30
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_*.json")):
    r = json.loads(f.read_text())
    print(f.stem, r["setup"]["device_name"], r["setup"]["dtype"],
          " ".join(f"{k}={v}" for k, v in r["ratios"].items()),
          "| s:", " ".join(f"{k}={v}" for k, v in r["seconds"].items()))
PY
