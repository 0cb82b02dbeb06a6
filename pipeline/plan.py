"""The job plan: every sample the job will make, with its id, task and seed, in a fixed order.

The plan is a pure function of the config and the source, so a rerun (or a resumed run) sees the
same samples at the same indices and shard k always holds the same ids.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from pipeline.config import JobConfig
from pipeline.schema import new_flow_row, reject, sample_id, sample_seed
from pipeline.sources import iter_source
from tasks import TASK_IDS, implemented, with_agents


def _draw_task(names: list[str], p: np.ndarray, seed: int, source_id: str, attempt: int) -> str:
    h = int(hashlib.sha256(source_id.encode()).hexdigest()[:12], 16)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, h, attempt, 0x7A5C])
    return names[int(rng.choice(len(names), p=p))]


def balanced_tasks(names: list[str], p: np.ndarray, n: int, seed: int) -> list[str]:
    """n tasks whose counts match the mix p exactly up to rounding (largest remainder: each task
    gets floor(n·p) or one more), in an order shuffled by the job seed."""
    quota = n * p
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    out = [t for t, c in zip(names, counts) for _ in range(c)]
    np.random.default_rng([seed & 0xFFFFFFFF, 0xBA1A]).shuffle(out)
    return out


def build_plan(cfg: JobConfig) -> list[dict]:
    names = sorted(cfg.tasks, key=TASK_IDS.get)
    w = np.array([cfg.tasks[n] for n in names], dtype=float)
    p = w / w.sum()
    impl, agents = set(implemented()), set(with_agents())
    slots = [(src, a) for src in iter_source(cfg.source, tasks=set(cfg.tasks)) for a in range(cfg.source.repeats)]
    dealt = None                            # balanced: only the slots whose source names no task take part
    if cfg.task_assignment == "balanced":
        dealt = iter(balanced_tasks(names, p, sum(not src.task for src, _ in slots), cfg.seed))
    rows: list[dict] = []
    for src, attempt in slots:
        task = src.task or (next(dealt) if dealt else _draw_task(names, p, cfg.seed, src.source_id, attempt))
        sid = sample_id(cfg.seed, src.source_id, task, attempt)
        row = new_flow_row(sample_index=len(rows), id=sid, source_id=src.source_id, attempt=attempt,
                           task=task, seed=sample_seed(sid), caption=src.caption,
                           image_ref=json.dumps(src.image_ref, sort_keys=True) if src.image_ref else None)
        if src.error:
            code, _, detail = src.error.partition(": ")
            reject(row, "source", code, detail)
        elif task in agents and task not in impl:
            reject(row, "source", "no_generator", f"task {task!r} has an agent but no pair generator yet")
        elif task not in impl:
            reject(row, "source", "unknown_task", f"{task!r} is not a task")
        rows.append(row)
    return rows
