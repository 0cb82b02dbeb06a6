"""Cost of the diffusion generators relative to one plain generation, in one run on the same UNet,
image size and step count (wall time, median of --repeats; on a GPU synchronised before each clock read).

    .venv/bin/python tests/bench_diffusion.py [--steps 20] [--size 64] [--repeats 3] [--threads 1]
    python tests/bench_diffusion.py --model random-sd15 --size 512 --device cuda --dtype float16   # GPU

``--model tiny-random`` (default) is the tests' tiny UNet (``--unet`` picks its shape);
``random-sd15`` is the full SD 1.5 architecture with random weights (speed does not depend on them).

Targets (issue 5): a P2P pair ≤ 2.2× a plain generation, a PnP pair (inversion included) ≤ 3×,
ten candidates batched ≤ 0.4× ten sequential single-candidate runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeats: int, sync=lambda: None) -> float:
    fn()                                    # warm-up (allocations, lazy inits, kernel selection)
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()                              # GPU work is asynchronous: count it all
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--unet", default="default", choices=["default", "deep"], help="tiny UNet shape")
    ap.add_argument("--model", default="tiny-random", choices=["tiny-random", "random-sd15"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()

    import cv2
    import torch

    from pipeline.demo_data import load_demo_photo
    from pipeline.diffusion.inversion import ddim_invert
    from pipeline.diffusion.p2p import P2PCandidate, P2PSource, p2p_edit
    from pipeline.diffusion.pnp import PnPCandidate, pnp_edit
    from pipeline.diffusion.text2image import generate_base, sd_pipeline
    from pipeline.models.sd import load_sd

    torch.set_num_threads(a.threads)
    sd = load_sd(a.model, unet_shape=a.unet, device=a.device, dtype=a.dtype)
    sync = torch.cuda.synchronize if sd.device.type == "cuda" else (lambda: None)
    pipe = sd_pipeline(sd)
    cap, tgt = "a tabby cat sitting on a red sofa", "a small dog sitting on a red sofa"
    photo = cv2.resize(load_demo_photo("chelsea"), (a.size, a.size), interpolation=cv2.INTER_AREA)
    mask = cv2.ellipse(__import__("numpy").zeros((a.size, a.size), "uint8"), (a.size // 2, a.size // 2),
                       (a.size // 5, a.size // 7), 0, 0, 360, 255, -1)
    base = generate_base(sd, cap, seed=1, steps=a.steps, guidance=7.5, size=a.size, pipe=pipe)
    src = P2PSource(cap, base, seed=1)
    p2p_c = lambda j: P2PCandidate(4 + 0.4 * j, 0.6, 0.6, 0.1, mask)              # noqa: E731
    pnp_c = lambda j: PnPCandidate(6.5 + 0.35 * j, 0.8, 0.8)                       # noqa: E731
    feat, selfl = ["up_blocks.1.resnets.1"], ["up_blocks.*attn1*"]

    def plain():
        generate_base(sd, cap, seed=1, steps=a.steps, guidance=7.5, size=a.size, pipe=pipe)

    def p2p(k):
        return lambda: p2p_edit(sd, src, tgt, [p2p_c(j) for j in range(k)], steps=a.steps)

    def p2p_seq10():
        for j in range(10):
            p2p_edit(sd, src, tgt, [p2p_c(j)], steps=a.steps)

    def pnp(k):
        def run():
            traj = ddim_invert(sd, photo, cap, a.steps)
            pnp_edit(sd, traj, cap, "a watercolour of a cat", [pnp_c(j) for j in range(k)], steps=a.steps,
                     feature_layers=feat, self_layers=selfl)
        return run

    def pnp_seq10():
        for j in range(10):
            traj = ddim_invert(sd, photo, cap, a.steps)
            pnp_edit(sd, traj, cap, "a watercolour of a cat", [pnp_c(j)], steps=a.steps,
                     feature_layers=feat, self_layers=selfl)

    T = lambda fn, n: timed(fn, n, sync)                                         # noqa: E731
    t = {"plain": T(plain, a.repeats), "p2p_pair": T(p2p(1), a.repeats), "pnp_pair": T(pnp(1), a.repeats)}
    r = max(1, a.repeats // 2)
    t |= {"p2p_10_batched": T(p2p(10), r), "p2p_10_sequential": T(p2p_seq10, r),
          "pnp_10_batched": T(pnp(10), r), "pnp_10_sequential": T(pnp_seq10, r)}
    ratios = {"p2p_pair/plain": t["p2p_pair"] / t["plain"], "pnp_pair/plain": t["pnp_pair"] / t["plain"],
              "p2p_10 batched/sequential": t["p2p_10_batched"] / t["p2p_10_sequential"],
              "pnp_10 batched/sequential": t["pnp_10_batched"] / t["pnp_10_sequential"]}
    targets = {"p2p_pair/plain": 2.2, "pnp_pair/plain": 3.0, "p2p_10 batched/sequential": 0.4,
               "pnp_10 batched/sequential": 0.4}
    dev = torch.cuda.get_device_name() if sd.device.type == "cuda" else "cpu"
    res = json.dumps({"setup": vars(a) | {"device_name": dev, "torch": torch.__version__},
                      "seconds": {k: round(v, 4) for k, v in t.items()},
                      "ratios": {k: round(v, 3) for k, v in ratios.items()},
                      "meets": {k: ratios[k] <= targets[k] for k in ratios}}, indent=1)
    print(res)
    if a.out:
        Path(a.out).write_text(res + "\n")


if __name__ == "__main__":
    main()
