"""The two ends of the chain, run on Ray workers: plan a shard's samples, and write rows as part
files. Between them the driver only ever sees shard numbers and counts.

    shard k ─► PlanShards (source index → flow rows) ─► stages … ─► write_parts (.tmp/shard-k/*.parquet)
                                                                        │ (shard, part, rows, accepted)
                                                         driver counts ◄┘ → compaction task → commit
"""
from __future__ import annotations

import os
import uuid
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import JobConfig
from pipeline.faults import retry_call
from pipeline.schema import FLOW_SCHEMA, flow_table, to_candidate_records, to_record
from pipeline.shards import TMP, write_part
from pipeline.storage import Store

PART_SCHEMA = pa.schema([("shard", pa.int64()), ("part", pa.string()), ("rows", pa.int64()),
                         ("accepted", pa.int64())])
CALIBRATION_DIR = f"{TMP}/calibration"


class PlanShards:
    """shard numbers → their samples' flow rows, in blocks of ``block`` rows (a generator: each
    yield is its own block). Small shards are planned several to a call and share blocks, so the
    Ray overhead per block is paid per ``block`` rows, not per shard."""

    def __init__(self, cfg: dict, index, skip: list[int], block: int):
        self.cfg = JobConfig.model_validate(cfg)
        self.index, self.skip, self.block = index, set(skip), block

    def __call__(self, batch: pa.Table):
        from pipeline.plan import plan_shard
        rows: list[dict] = []
        for k in batch.column("shard").to_pylist():
            rows += [r for r in plan_shard(self.cfg, self.index, k) if r["sample_index"] not in self.skip]
            while len(rows) >= self.block:
                yield flow_table(rows[:self.block])
                rows = rows[self.block:]
        if rows:
            yield flow_table(rows)


def write_parts(batch: pa.Table, *, out: str, job_name: str, config_hash: str, code_version: str,
                rows_per_shard: int, keep_candidates: bool = False) -> pa.Table:
    """Flow rows → one part file per shard present in the batch, written where this task runs (Ray
    tasks: as many writers as the cluster has room for); with ``keep_candidates`` each part has a
    companion file of the rows' not-kept candidates. Returns only (shard, part path, rows,
    accepted) to the driver."""
    store = Store(out)
    meta = dict(job_name=job_name, config_hash=config_hash, code_version=code_version)
    by_shard: dict[int, list[dict]] = defaultdict(list)
    cands: dict[int, list[dict]] = defaultdict(list)
    for r in batch.to_pylist():
        k = r["sample_index"] // rows_per_shard
        by_shard[k].append(to_record(r, **meta))
        if keep_candidates:
            cands[k] += to_candidate_records(r)
    parts = []
    for k, recs in sorted(by_shard.items()):
        # a storage hiccup is retried with backoff; one that persists stops the job (shard uncommitted)
        part = retry_call(lambda: write_part(store, k, recs, cands[k] if keep_candidates else None),
                          f"writing a part of shard {k} to {out}")
        _fault_after_part_write()
        parts.append({"shard": k, "part": part, "rows": len(recs), "accepted": sum(r["status"] == "accepted" for r in recs)})
    return pa.Table.from_pylist(parts, schema=PART_SCHEMA)


def _fault_after_part_write() -> None:
    """Test hook (tests/test_writer_kill.py): the first writer to get here after the named marker
    file is absent creates it and dies at once, as a node lost mid-shard would: its part file is
    written, the driver never hears of it. Nothing sets this variable outside that test."""
    marker = os.environ.get("PAIRFORGE_TEST_KILL_WRITER_ONCE")
    if marker and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(17)


def save_calibration(batch: pa.Table, *, out: str) -> pa.Table:
    """The calibration pass's rows (all candidates kept) → a part file under .tmp/calibration, so the
    main pass only has to judge them, not make them again; the driver gets each row's task and
    candidate scores, nothing else."""
    import io
    batch = batch.cast(FLOW_SCHEMA)
    # the judge's calibration verdict goes to the driver only: the main pass filters these rows for
    # real and judges the ones that pass again (its answers are cached), so a row the filters
    # reject carries no stale verdict
    saved = batch.set_column(batch.schema.get_field_index("judge"), "judge", pa.nulls(batch.num_rows, pa.string()))
    buf = io.BytesIO()
    pq.write_table(saved, buf, compression="zstd")
    Store(out).write_bytes(f"{CALIBRATION_DIR}/{uuid.uuid4().hex}.parquet", buf.getvalue(), durable=False)
    return batch.select(["task", "final_task", "candidates_report", "judge"])
