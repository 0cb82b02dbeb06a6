"""One stage interface (after datatrove's PipelineStep and NeMo Curator's ProcessingStage).

A stage declares its name and the config block holding its resources; ``setup`` loads models once
per actor; ``process`` works on the pending rows it is responsible for. Rejected rows, and rows of
tasks the stage has nothing to do for, pass through untouched.

When ``process`` raises, what happens depends on why (pipeline/faults.py):
  * out of memory: the batch is halved and each half tried again, down to one row;
  * a transient failure (and out of memory on one row): the same rows are tried again after an
    exponential backoff; when that is used up the stage raises WorldFailure and the job stops
    with the shard uncommitted — never a reject;
  * anything else: the batch is tried row by row, so one bad row cannot sink the rest; the row that
    still fails is rejected with the stage's name and the error.
Every retry starts from the rows as they came in (re-read from the immutable Arrow batch), never
from rows a failed attempt has half changed: a row's result cannot depend on its neighbours.
"""
from __future__ import annotations

import logging
import time
import traceback
from collections import deque
from typing import ClassVar

import pyarrow as pa

from pipeline import faults
from pipeline.config import JobConfig
from pipeline.schema import add_stage_time, flow_table, reject

log = logging.getLogger("pairforge")


class Stage:
    name: ClassVar[str]
    resources_key: ClassVar[str]        # field of JobConfig.stages with this stage's actor pool

    def __init__(self, cfg: dict):
        from pipeline.console import setup_worker_logging
        setup_worker_logging()          # in an actor: our warnings reach the driver's terminal
        self.cfg = JobConfig.model_validate(cfg)
        self.setup()

    def setup(self) -> None:
        """Load models / open clients. Runs once per actor."""

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        """Whether a job whose rows have these tasks needs this stage's actor pool at all (a stage
        that serves only some tasks says no for the others, so it loads no models for nothing)."""
        return True

    @classmethod
    def enabled(cls, cfg: JobConfig) -> bool:
        """Whether the job's config runs this stage at all (an optional stage, e.g. the judge)."""
        return True

    def wants(self, row: dict) -> bool:
        return True

    def process(self, rows: list[dict]) -> None:
        """Mutate ``rows`` in place (all pending and wanted); use ``reject`` for failures."""
        for row in rows:
            self.process_row(row)

    def process_row(self, row: dict) -> None:
        raise TypeError(f"{type(self).__name__} must implement process or process_row")

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["status"] == "pending" and self.wants(r)]
        if todo:
            self._run(batch, rows, todo)
            self._stamp_times(rows, todo, time.perf_counter() - t0)
        return flow_table(rows)

    def _stamp_times(self, rows: list[dict], todo: list[int], wall: float) -> None:
        """Cost accounting (`pairforge cost`): the batch's wall time, split evenly over the rows this
        stage worked on (accepted or rejected here: both used it), times what one actor of the pool
        holds (its declared num_cpus / num_gpus). Rows passed through untouched get nothing, so a
        row's entries also say which stages it reached. Retries and row-by-row fallbacks are inside
        ``wall``: faults cost time, and that time is counted. Model loading (``setup``) is not."""
        share = wall / len(todo)
        res = self.cfg.stages.for_stage(self.resources_key)
        extra = self.shared_times(share)
        for i in todo:
            add_stage_time(rows[i], self.name, share, share * res.num_cpus, share * res.num_gpus)
            for name, (w, c, g) in extra.items():
                add_stage_time(rows[i], name, w, c, g)

    def shared_times(self, share: float) -> dict[str, tuple[float, float, float]]:
        """Resources outside the actor that a row held while this stage worked on it (e.g. an LLM
        server): name → (wall_s, cpu_s, gpu_s) per row, given the row's share of the batch time."""
        return {}

    def _attempt(self, rows: list[dict]) -> None:
        faults.inject(self.name, rows, "before")
        self.process(rows)
        faults.inject(self.name, rows, "after")

    def _run(self, batch: pa.Table, rows: list[dict], todo: list[int]) -> None:
        """Process ``rows[i] for i in todo``; groups that fail are retried from fresh copies of
        their rows (``batch.take``) and their results put back in place."""
        retry = self.cfg.retry
        queue: deque[tuple[list[int], int]] = deque([(todo, 0)])   # (row indices, transient tries so far)
        first = True
        while queue:
            idx, tries = queue.popleft()
            group = [rows[i] for i in idx] if first else batch.take(idx).to_pylist()
            first = False
            try:
                self._attempt(group)
            except Exception as e:
                kind = faults.classify(e)
                if kind == "oom" and len(idx) > 1:
                    half = len(idx) // 2
                    log.warning("%s: out of memory on %d rows; halving the batch (%s)", self.name, len(idx), faults.describe(e))
                    _free_accelerator_memory()
                    queue.extendleft([(idx[half:], tries), (idx[:half], tries)])
                    continue
                if kind is not None:
                    if tries + 1 >= retry.attempts:
                        raise faults.WorldFailure(
                            f"stage {self.name}: {faults.describe(e)} — still failing after {retry.attempts} "
                            f"tries of {len(idx)} row(s)") from e
                    wait = faults.backoff_s(tries, retry.base_s, retry.max_s)
                    log.warning("%s: transient failure on %d rows (%s); retry %d/%d in %.1fs", self.name,
                                len(idx), faults.describe(e), tries + 1, retry.attempts - 1, wait)
                    if kind == "oom":
                        _free_accelerator_memory()
                    time.sleep(wait)
                    queue.appendleft((idx, tries + 1))
                    continue
                if len(idx) > 1:
                    # no known cause: try each row alone, so one bad row cannot sink the rest
                    log.warning("%s: batch of %d failed, retrying row by row:\n%s", self.name, len(idx), traceback.format_exc())
                    queue.extendleft([([i], tries) for i in reversed(idx)])
                    continue
                row = batch.take(idx).to_pylist()[0]          # the row as it came in, not half-done
                reject(row, self.name, "stage_error", faults.describe(e))
                rows[idx[0]] = row
                continue
            for i, r in zip(idx, group):
                rows[i] = r


def _free_accelerator_memory() -> None:
    import sys
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
