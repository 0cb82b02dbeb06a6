"""``pairforge eval``: the paper's metrics (CLIP_dir, CLIP_img, CLIP_out, L1, DINO) of a checkpoint's
edits on the held-out rows of the shards, with the shared metrics module of the filters.

The held-out rows are those the trainer never saw (a hash of the row id under the checkpoint's
``data.holdout_fraction``). Each row is edited from its input image and instruction, with its own
task (``task_source="row"``) or the task predictor's guess (``"predicted"``, as a user would run
it). The same metrics of the dataset's own output images are reported beside them as a reference.
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from tasks import SampleReject
from trainer.data import PairStream, decode_row_images
from trainer.edit import Editor

log = logging.getLogger("pairforge.eval")
METRICS = ("clip_dir", "clip_img", "clip_out", "l1", "dino")


def _means(scores: list[dict], tasks: list[str]) -> dict:
    out: dict = {"n": len(scores)}
    out.update({k: float(np.mean([s[k] for s in scores])) for k in METRICS if scores and k in scores[0]})
    by_task = defaultdict(list)
    for s, t in zip(scores, tasks):
        by_task[t].append(s)
    out["per_task"] = {t: {"n": len(v), **{k: float(np.mean([s[k] for s in v])) for k in METRICS if k in v[0]}}
                       for t, v in sorted(by_task.items())}
    return out


def evaluate(checkpoint: str | Path, shards: list[str], *, limit: int | None = 50, tasks: list[str] | None = None,
             holdout_fraction: float | None = None, task_source: str = "row", clip: str = "tiny-random",
             dino: str | None = "tiny-random", steps: int = 50, image_guidance: float = 1.5,
             text_guidance: float = 5.0, seed: int = 0, device: str = "cpu", editor: Editor | None = None) -> dict:
    from filters.metrics import MetricModels

    if task_source not in ("row", "predicted"):
        raise ValueError(f"task_source must be row or predicted, got {task_source!r}")
    editor = editor or Editor(checkpoint, device)
    train_cfg = editor.meta.get("config") or {}
    if holdout_fraction is None:
        holdout_fraction = (train_cfg.get("data") or {}).get("holdout_fraction", 0.05)
    stream = PairStream(shards, "heldout", tasks, holdout_fraction, limit)
    inputs, edits, refs, caps_in, caps_out, row_tasks, used_tasks, skipped = [], [], [], [], [], [], [], defaultdict(int)
    t0 = time.time()
    for row in stream.rows():
        try:
            x, y = decode_row_images(row)
            if row["task"] not in editor.tasks and task_source == "row":
                raise SampleReject("unknown_task", row["task"])
            out, used = editor.edit(x, row["instruction"], None if task_source == "predicted" else row["task"],
                                    steps=steps, image_guidance=image_guidance, text_guidance=text_guidance,
                                    seed=seed)
        except SampleReject as e:
            skipped[e.reason] += 1
            continue
        inputs.append(x), edits.append(out), refs.append(y)
        caps_in.append(row["input_caption"] or ""), caps_out.append(row["output_caption"] or "")
        row_tasks.append(row["task"]), used_tasks.append(used)
    if not inputs:
        raise ValueError(f"eval: no held-out rows (holdout_fraction={holdout_fraction}, tasks={tasks}) in {shards}")
    mm = MetricModels(clip, dino, device)
    model_scores = mm.compute(inputs, edits, caps_in, caps_out)
    ref_scores = mm.compute(inputs, refs, caps_in, caps_out)
    return {
        "checkpoint": str(checkpoint), "rows": len(inputs), "skipped": dict(skipped), "task_source": task_source,
        "task_accuracy": float(np.mean([a == b for a, b in zip(row_tasks, used_tasks)])),
        "settings": dict(steps=steps, image_guidance=image_guidance, text_guidance=text_guidance, seed=seed,
                         clip=clip, dino=dino, holdout_fraction=holdout_fraction),
        "model": _means(model_scores, row_tasks), "dataset_reference": _means(ref_scores, row_tasks),
        "seconds": round(time.time() - t0, 1),
    }


def format_report(rep: dict) -> str:
    lines = [f"{rep['rows']} held-out rows ({rep['task_source']} task; task accuracy {rep['task_accuracy']:.0%})",
             f"{'':18s}" + "".join(f"{k:>10s}" for k in METRICS)]
    for name in ("model", "dataset_reference"):
        r = rep[name]
        lines.append(f"{name:18s}" + "".join(f"{r.get(k, float('nan')):10.4f}" for k in METRICS))
    for t, r in rep["model"]["per_task"].items():
        lines.append(f"  {t + ' (' + str(r['n']) + ')':16s}" + "".join(f"{r.get(k, float('nan')):10.4f}" for k in METRICS))
    if rep["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k}×{v}" for k, v in rep["skipped"].items()))
    return "\n".join(lines)


def write_report(rep: dict, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rep, indent=1))
    return p
