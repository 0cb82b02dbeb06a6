"""The job plan: every sample the job will make, with its id, task and seed, in a fixed order.

The plan is a pure function of the config and the source, so a rerun (or a resumed run) sees the
same samples at the same indices and shard k always holds the same ids. It is never built whole:
``plan_shard(cfg, index, k)`` gives shard k's samples from the source index alone, on whichever
worker asks (sample i is source row i // repeats, attempt i % repeats).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math

import numpy as np

from pipeline.config import JobConfig
from pipeline.schema import new_flow_row, reject, sample_id, sample_seed
from pipeline.source_index import SourceIndex, build_index
from tasks import TASK_IDS, implemented, with_agents


def _draw_task(names: list[str], p: np.ndarray, seed: int, source_id: str, attempt: int) -> str:
    h = int(hashlib.sha256(source_id.encode()).hexdigest()[:12], 16)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, h, attempt, 0x7A5C])
    return names[int(rng.choice(len(names), p=p))]


def _balanced_order(p: tuple[float, ...], n: int, seed: int) -> np.ndarray:
    """Task indices for n slots whose counts match the mix p exactly up to rounding (largest
    remainder: each task gets floor(n·p) or one more), in an order shuffled by the job seed. One
    byte per slot, made once per worker process."""
    quota = n * np.asarray(p)
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    out = np.repeat(np.arange(len(p), dtype=np.int16), counts)
    np.random.default_rng([seed & 0xFFFFFFFF, 0xBA1A]).shuffle(out)
    return out


_balanced_cached = functools.lru_cache(maxsize=2)(_balanced_order)


def _mix(cfg: JobConfig) -> tuple[list[str], np.ndarray]:
    names = sorted(cfg.tasks, key=TASK_IDS.get)
    w = np.array([cfg.tasks[n] for n in names], dtype=float)
    return names, w / w.sum()


def job_index(cfg: JobConfig) -> SourceIndex:
    return build_index(cfg.source, tasks=set(cfg.tasks))


def n_samples(cfg: JobConfig, index: SourceIndex) -> int:
    return index.n_rows * cfg.source.repeats


def n_shards(cfg: JobConfig, index: SourceIndex) -> int:
    return max(1, math.ceil(n_samples(cfg, index) / cfg.output.rows_per_shard))


def shard_range(cfg: JobConfig, index: SourceIndex, k: int) -> range:
    n = cfg.output.rows_per_shard
    return range(k * n, min((k + 1) * n, n_samples(cfg, index)))


def plan_samples(cfg: JobConfig, index: SourceIndex, start: int, stop: int) -> list[dict]:
    """Flow rows of samples start … stop−1, exactly as the whole plan would have them."""
    names, p = _mix(cfg)
    rep = cfg.source.repeats
    impl, agents = set(implemented()), set(with_agents())
    r0, r1 = start // rep, -(-stop // rep)
    dealt_at = None
    if cfg.task_assignment == "balanced":
        # only the slots whose source names no task take part in the dealing
        named_before = index.task_rows_before(r0)
        dealt_at = (r0 - named_before) * rep
        order = _balanced_cached(tuple(p), (index.n_rows - index.n_named) * rep, cfg.seed)
    rows: list[dict] = []
    for ri, src in enumerate(index.rows(r0, r1), start=r0):
        for attempt in range(rep):
            i = ri * rep + attempt
            if src.task:
                task = src.task
            elif dealt_at is not None:
                task = names[int(order[dealt_at])]
                dealt_at += 1
            else:
                task = _draw_task(names, p, cfg.seed, src.source_id, attempt)
            if not start <= i < stop:
                continue
            sid = sample_id(cfg.seed, src.source_id, task, attempt)
            row = new_flow_row(sample_index=i, id=sid, source_id=src.source_id, attempt=attempt,
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


def plan_shard(cfg: JobConfig, index: SourceIndex, k: int) -> list[dict]:
    r = shard_range(cfg, index, k)
    return plan_samples(cfg, index, r.start, r.stop)


def build_plan(cfg: JobConfig) -> list[dict]:
    """The whole plan in memory: for tests and small tools only (a job plans shard by shard)."""
    index = job_index(cfg)
    return plan_samples(cfg, index, 0, n_samples(cfg, index))
