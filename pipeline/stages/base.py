"""One stage interface (after datatrove's PipelineStep and NeMo Curator's ProcessingStage).

A stage declares its name and the config block holding its resources; ``setup`` loads models once
per actor; ``process`` works on the pending rows it is responsible for. Rejected rows, and rows of
tasks the stage has nothing to do for, pass through untouched. An exception on one row rejects
that row with the stage's name and the error — never the batch, never the job.
"""
from __future__ import annotations

import logging
import traceback
from typing import ClassVar

import pyarrow as pa

from pipeline.config import JobConfig
from pipeline.schema import flow_table, reject

log = logging.getLogger("pairforge")


class Stage:
    name: ClassVar[str]
    resources_key: ClassVar[str]        # field of JobConfig.stages with this stage's actor pool

    def __init__(self, cfg: dict):
        self.cfg = JobConfig.model_validate(cfg)
        self.setup()

    def setup(self) -> None:
        """Load models / open clients. Runs once per actor."""

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        """Whether a job whose rows have these tasks needs this stage's actor pool at all (a stage
        that serves only some tasks says no for the others, so it loads no models for nothing)."""
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
        rows = batch.to_pylist()
        todo = [r for r in rows if r["status"] == "pending" and self.wants(r)]
        if todo:
            try:
                self.process(todo)
            except Exception:
                # the batch failed as a whole: retry row by row so one bad row cannot sink the rest
                log.warning("%s: batch failed, retrying row by row:\n%s", self.name, traceback.format_exc())
                for r in todo:
                    if r["status"] != "pending":
                        continue
                    try:
                        self.process([r])
                    except Exception as e:
                        reject(r, self.name, "stage_error", f"{type(e).__name__}: {e}")
        return flow_table(rows)
