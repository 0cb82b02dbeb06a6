"""The trainer on a GPU with each mixed-precision mode (tests/gpu_check.sh runs it; CI has no GPU).

    python tests/gpu_train_check.py [--steps 40] [--out DIR]

Same tiny model, shards (tests/test_trainer.py's colour + sketch rows) and seed per mode; prints
the probe loss before/after and the wall time. What must hold: every mode is finite and lowers the
probe loss (bf16 autocast through the task embedding, the 8-channel conv_in and the EMA)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--modes", default="no,bf16,fp16")
    ap.add_argument("--out", help="write the JSON here too")
    a = ap.parse_args()

    import math

    import torch

    from tests.test_trainer import make_shards
    from trainer.config import load_train_config
    from trainer.train import train

    tmp = Path(tempfile.mkdtemp(prefix="gpu_train_"))
    shards = make_shards(tmp / "job")
    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    from accelerate.state import AcceleratorState

    for mode in a.modes.split(","):
        AcceleratorState._reset_state(reset_partial_state=True)   # its precision is a process-wide singleton
        cfg = load_train_config("tiny", {"data.shards": [str(shards)], "output_dir": str(tmp / f"run_{mode}"),
                                         "optim.max_steps": a.steps, "checkpoint_every": 0, "mixed_precision": mode})
        t0 = time.perf_counter()
        s = train(cfg, progress=False)
        res[mode] = {"seconds": round(time.perf_counter() - t0, 2), "probe_before": round(s["probe_loss_before"], 4),
                     "probe_after": round(s["probe_loss_after"], 4), "loss_first": round(s["loss_first"], 4),
                     "loss_last": round(s["loss_last"], 4)}
        res[mode]["ok"] = math.isfinite(s["probe_loss_after"]) and s["probe_loss_after"] < s["probe_loss_before"]
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    sys.exit(0 if all(v["ok"] for k, v in res.items() if k != "device") else 1)


if __name__ == "__main__":
    main()
