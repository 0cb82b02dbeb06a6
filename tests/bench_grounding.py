"""Grounding throughput, batched vs one image at a time, on the same detector and segmenter.

    .venv/bin/python tests/bench_grounding.py                       # tiny-random, transformers backends
    .venv/bin/python tests/bench_grounding.py --detector-backend groundingdino --segmenter-backend segment-anything
    .venv/bin/python tests/bench_grounding.py --detector IDEA-Research/grounding-dino-base \\
        --segmenter facebook/sam-vit-huge --device cuda --n 64 --batch 16     # real checkpoints

Each round grounds the same N demo photos (resized like the load stage, longer side 512) with one
phrase each, then segments each image's best box — what the grounding stage does per row:
  * batched: images in chunks of ``--batch``, one detector call and one segmenter call per chunk;
  * one-by-one: one detector call and one segmenter call per image (the Grounded-SAM demo loop).
The first round of each mode is a warm-up and is not timed. Prints one JSON line with images/s
per mode and the ratio, and checks that both modes found the same boxes.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHRASES = {"astronaut": "the astronaut", "coffee": "the cup", "chelsea": "the cat", "rocket": "the rocket",
           "motorcycle": "the motorcycle", "hubble_deep_field": "a galaxy", "immunohistochemistry": "a cell",
           "retina": "the eye"}


def photos(n: int, max_side: int = 512) -> tuple[list[np.ndarray], list[list[str]]]:
    import cv2

    from pipeline.demo_data import load_demo_photo
    imgs, phrases = [], []
    names = list(PHRASES)
    for i in range(n):
        name = names[i % len(names)]
        img = load_demo_photo(name)
        s = max_side / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        imgs.append(img)
        phrases.append([PHRASES[name]])
    return imgs, phrases


def ground(detector, segmenter, imgs, phrases, batch: int):
    found = []
    for i in range(0, len(imgs), batch):
        im, ph = imgs[i:i + batch], phrases[i:i + batch]
        dets = detector.detect(im, ph)
        boxes = [np.array([d[0].box] if d else np.zeros((0, 4)), np.float32) for d in dets]
        segmenter.segment(im, boxes)
        found += dets
    return found


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default="tiny-random")
    ap.add_argument("--segmenter", default="tiny-random")
    ap.add_argument("--detector-backend", default="transformers", choices=["auto", "transformers", "groundingdino"])
    ap.add_argument("--segmenter-backend", default="transformers", choices=["auto", "transformers", "segment-anything"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=16, help="images per round")
    ap.add_argument("--batch", type=int, default=8, help="images per call in batched mode")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per mode (after one warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)

    import torch

    from pipeline.grounding.config import GroundingConfig
    from pipeline.grounding.detector import build_detector
    from pipeline.grounding.segmenter import build_segmenter

    if a.threads:
        torch.set_num_threads(a.threads)
    g = GroundingConfig(detector_backend=a.detector_backend, segmenter_backend=a.segmenter_backend, device=a.device)
    det, seg = build_detector(a.detector, g), build_segmenter(a.segmenter, g)
    imgs, phrases = photos(a.n)
    res = {"detector": det.model_id, "segmenter": seg.model_id, "images": a.n, "batch": a.batch,
           "rounds": a.rounds, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
           "device": str(det.device)}
    outputs = {}
    for mode, b in (("one_by_one", 1), ("batched", a.batch)):
        outputs[mode] = ground(det, seg, imgs, phrases, b)               # warm-up
        if det.device.type == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            ground(det, seg, imgs, phrases, b)
            if det.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        res[f"{mode}_images_per_s"] = round(a.n / float(np.median(times)), 2)
    res["speedup"] = round(res["batched_images_per_s"] / res["one_by_one_images_per_s"], 2)
    res["same_boxes"] = all(
        [d.phrase for d in x] == [d.phrase for d in y] and all(np.allclose(d.box, e.box, atol=0.05) for d, e in zip(x, y))
        for x, y in zip(outputs["batched"], outputs["one_by_one"]))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
