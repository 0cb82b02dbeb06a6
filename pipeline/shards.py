"""Shards: workers write part files, a compaction task makes each shard's final file, and the driver
commits it with one small record. Nothing here grows with the job: each commit is O(1).

Layout of an output folder (a local path or an object-store URI; see pipeline/storage.py):
  manifest.json                  the job's header (config hash, sample and shard counts); `complete`
                                 and the totals are added once, when the last shard is committed
  _commits/shard-00000.json      shard 0's commit record: rows, per-task counts, file sha256s
  data/part-00000.parquet        accepted rows of shard 0, sorted by sample index
  rejects/part-00000.parquet     rejected rows of shard 0 (with reasons), when enabled
  .tmp/shard-00000/*.parquet     part files the writers made for shards not yet compacted
  job.resolved.yaml, calibration.json, logs/

Shard k holds plan samples k·N … (k+1)·N−1. **A shard exists only when its commit record does.**
Its final files are written atomically before the record, so a reader never sees half a file; a
final file without a record (a run killed between the two) and everything under .tmp/ are garbage
that the next run deletes before it makes the shard again, with the same rows and the same bytes.

Output folders of format 1 (every commit inside manifest.json) are read as they are and converted
to this layout the first time a run resumes them.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import JobError
from pipeline.schema import RECORD_SCHEMA, record_table
from pipeline.storage import Store

log = logging.getLogger("pairforge")

MANIFEST = "manifest.json"
COMMITS = "_commits"
TMP = ".tmp"
FORMAT_VERSION = 2
HEADER_KEYS = ("config_hash", "n_samples", "n_shards", "rows_per_shard")


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def commit_name(k: int) -> str:
    return f"{COMMITS}/shard-{k:05d}.json"


def as_store(out) -> Store:
    return out if isinstance(out, Store) else Store(out)


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(path, store: Store | None = None) -> str:
    """sha256 of a file, read in 1 MiB pieces (a shard's size never sits in memory)."""
    h = hashlib.sha256()
    if store is None:
        with Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    with store.fs.open_input_stream(store.path(path)) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def parquet_bytes(table: pa.Table) -> bytes:
    # Fixed writer settings: the same rows give the same bytes.
    buf = io.BytesIO()
    pq.write_table(table.combine_chunks(), buf, compression="zstd", row_group_size=256, write_statistics=True)
    return buf.getvalue()


class Manifest:
    """The job header plus one commit record per shard (``_commits/``)."""

    def __init__(self, out):
        self.store = as_store(out)
        self.out = self.store.local_path() or self.store.url()
        self.data = self.store.read_json(MANIFEST) if self.store.exists(MANIFEST) else None
        self._legacy = dict(self.data.get("shards") or {}) if self.data else {}

    # ---------------------------------------------------------------- header
    def init(self, *, config_hash: str, job_name: str, n_samples: int, n_shards: int, rows_per_shard: int) -> None:
        header = {"config_hash": config_hash, "n_samples": n_samples, "n_shards": n_shards,
                  "rows_per_shard": rows_per_shard}
        if self.data is not None:
            old = {k: self.data.get(k) for k in header}
            if old != header:
                diff = {k: (old[k], header[k]) for k in header if old[k] != header[k]}
                raise JobError(f"{self.out} holds the output of a different job ({diff}); "
                               "use another output folder or delete this one")
            if self._legacy:
                self._migrate()
            return
        self.data = {"format_version": FORMAT_VERSION, "job_name": job_name, **header,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.store.write_json(MANIFEST, self.data)

    def _migrate(self) -> None:
        """Format 1 → 2: each commit inside manifest.json becomes its own record (records first,
        so a crash midway leaves a folder that still reads the same)."""
        for k, e in self._legacy.items():
            self.store.write_json(commit_name(int(k)), e)
        self.data = {k: v for k, v in self.data.items() if k not in ("shards", "complete")}
        self.data["format_version"] = FORMAT_VERSION
        self.store.write_json(MANIFEST, self.data)
        log.info("converted %s to output format %d (%d commit records)", self.out, FORMAT_VERSION, len(self._legacy))
        self._legacy = {}

    @property
    def complete(self) -> bool:
        """Every shard has a whole commit record (the records decide, not the header's flag)."""
        return bool(self.data) and sum(1 for _ in self.iter_entries()) == self.data["n_shards"]

    def mark_complete(self, totals: dict) -> None:
        """Once, after the last commit: the totals the driver counted (O(tasks), not O(samples))."""
        self.data = {**self.data, "complete": True, "totals": totals}
        self.store.write_json(MANIFEST, self.data)

    # ---------------------------------------------------------------- commits
    def committed(self) -> set[int]:
        """Shards with a commit record (a cut-off record is not one: see ``entry``)."""
        ks = {int(k) for k in self._legacy}
        for name in self.store.list(COMMITS):
            if name.startswith("shard-") and name.endswith(".json"):
                ks.add(int(name[6:-5]))
        return ks

    def entry(self, k: int) -> dict | None:
        if str(k) in self._legacy:
            return self._legacy[str(k)]
        try:
            return self.store.read_json(commit_name(k))
        except FileNotFoundError:
            return None
        except ValueError:
            # cut off (an interrupted write): no commit; the next run deletes it and makes the shard
            log.warning("commit record %s is cut off; shard %d counts as not committed", commit_name(k), k)
            return None

    def iter_entries(self) -> Iterator[tuple[int, dict]]:
        """(shard, commit record) in shard order, one record in memory at a time."""
        for k in sorted(self.committed()):
            e = self.entry(k)
            if e is not None:
                yield k, e

    @property
    def shards(self) -> dict:
        """All commit records as {str(k): entry} (small outputs and tests; loops use iter_entries)."""
        return {str(k): e for k, e in self.iter_entries()}

    def commit(self, k: int, entry: dict) -> None:
        """O(1) whatever the job size: one small record, written atomically and fsynced."""
        self.store.write_json(commit_name(k), entry)

    def clean_uncommitted(self) -> list[str]:
        """Delete what a killed run left: final files without a commit record, and all part files.
        Returns the relative paths removed."""
        keep, removed = set(), []
        for k in sorted(self.committed()):
            e = self.entry(k)
            if e is None:                       # a cut-off record: the shard is made again
                self.store.delete(commit_name(k))
                removed.append(commit_name(k))
                continue
            for f in e["files"].values():
                keep.add(f["path"])
        for sub in ("data", "rejects"):
            for name in self.store.list(sub):
                rel = f"{sub}/{name}"
                if rel not in keep:
                    self.store.delete(rel)
                    removed.append(rel)
        for name in self.store.list(COMMITS):
            if name.startswith(".tmp-"):
                self.store.delete(f"{COMMITS}/{name}")
                removed.append(f"{COMMITS}/{name}")
        tmp = self.store.list(TMP, recursive=True)
        if tmp:
            removed += [f"{TMP}/{n}" for n in tmp]
            self.store.delete_dir(TMP)
        return removed


# -------------------------------------------------------------------- workers: parts and compaction

def write_part(store: Store, k: int, records: list[dict]) -> str:
    """A writer's rows of shard k (any statuses, any order) as one part file under .tmp/.
    Returns its relative path. The name is unique, so a retried batch never overwrites a part the
    driver already counted; compaction reads only the parts the driver was told about."""
    rel = f"{TMP}/shard-{k:05d}/{uuid.uuid4().hex}.parquet"
    store.write_bytes(rel, parquet_bytes(record_table(records)), durable=False)
    return rel


def compact_shard(store: Store, k: int, parts: list[str], expected: int, write_rejects: bool) -> dict:
    """Shard k's parts → data/ and rejects/ files sorted by sample index (the same bytes a single
    writer would make), and the commit record for the driver to write. Raises when the parts do not
    hold exactly ``expected`` distinct samples: then nothing final was written for a wrong count."""
    tables = [pq.read_table(store.open_input(p)) for p in parts]
    t = pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
    t = t.sort_by("sample_index")
    idx = t.column("sample_index").to_pylist()
    if len(set(idx)) != len(idx):             # a retried batch whose first try was also counted
        keep = [i for i in range(len(idx)) if i == 0 or idx[i] != idx[i - 1]]
        t = t.take(pa.array(keep))
    if t.num_rows != expected:
        raise RuntimeError(f"shard {k}: parts hold {t.num_rows} samples, {expected} expected")
    t = reject_duplicate_instructions(t)
    status = t.column("status").to_pylist()
    tasks = t.column("task").to_pylist()
    acc_i = [i for i, s in enumerate(status) if s == "accepted"]
    rej_i = [i for i, s in enumerate(status) if s == "rejected"]
    rej_rows = t.select(["reject_stage", "reject_reason"]).take(pa.array(rej_i, pa.int64())).to_pylist()
    files = {}
    for sub, sel in (("data", acc_i), ("rejects", rej_i if write_rejects else [])):
        if not sel:
            continue
        data = parquet_bytes(t.take(pa.array(sel, pa.int64())))
        rel = f"{sub}/{shard_name(k)}"
        store.write_bytes(rel, data)
        files[sub] = {"path": rel, "rows": len(sel), "sha256": sha256_bytes(data), "bytes": len(data)}
    return {
        "samples": t.num_rows, "accepted": len(acc_i), "rejected": len(rej_i),
        "tasks_accepted": dict(sorted(Counter(tasks[i] for i in acc_i).items())),
        "tasks_rejected": dict(sorted(Counter(tasks[i] for i in rej_i).items())),
        "reject_reasons": dict(sorted(Counter(f"{r['reject_stage']}:{r['reject_reason']}" for r in rej_rows).items())),
        "files": files,
    }


def reject_duplicate_instructions(t: pa.Table) -> pa.Table:
    """The same instruction twice for one caption within a shard: the later samples (by index) are
    rejected as ``instruct:duplicate_instruction``. Done here, on the shard's fixed set of rows, so
    a row never depends on which rows happened to share its batch (it did when the instruction stage
    checked its own batch: a resumed job could then differ from an undisturbed one)."""
    from pipeline.llm.answers import normalise_instruction

    caps, ins = t.column("input_caption").to_pylist(), t.column("instruction").to_pylist()
    status = t.column("status").to_pylist()
    seen, dup = set(), []
    for i, (c, x) in enumerate(zip(caps, ins)):
        if x is None:
            continue
        key = (c, normalise_instruction(x))
        if key in seen and status[i] == "accepted":
            dup.append(i)
        seen.add(key)
    if not dup:
        return t
    cols = {c: t.column(c).to_pylist() for c in ("status", "reject_stage", "reject_reason", "reject_detail")}
    for i in dup:
        cols["status"][i], cols["reject_stage"][i] = "rejected", "instruct"
        cols["reject_reason"][i], cols["reject_detail"][i] = "duplicate_instruction", ins[i][:200]
    for c, v in cols.items():
        t = t.set_column(t.schema.get_field_index(c), t.schema.field(c), pa.array(v, t.schema.field(c).type))
    return t


# -------------------------------------------------------------------- readers

def committed_files(out, which: str = "data") -> Iterator[tuple[int, dict]]:
    """(shard, file info {path, rows, sha256, bytes}) of every committed file of one kind."""
    for k, e in Manifest(out).iter_entries():
        f = e["files"].get(which)
        if f:
            yield k, f


def read_table(out, which: str = "data", columns: list[str] | None = None) -> pa.Table:
    """All committed files of one kind ('data' or 'rejects') as one table, in shard order.
    For small outputs and tests: jobs of any size are read shard by shard (``committed_files``)."""
    store = as_store(out)
    tables = [pq.read_table(store.open_input(f["path"]), columns=columns) for _, f in committed_files(store, which)]
    if not tables:
        schema = RECORD_SCHEMA if columns is None else pa.schema([RECORD_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


class ShardWriter:
    """The same parts → compaction → commit path in one process, for tests and small tools: rows
    arrive in any order and each shard is committed when its last row has come. (A job runs these
    steps on Ray workers, with the driver counting: see pipeline/runner.py.)"""

    def __init__(self, out, manifest: Manifest, expected: dict[int, int], rows_per_shard: int,
                 *, job_name: str, config_hash: str, code_version: str, write_rejects: bool):
        from pipeline.schema import to_record

        self.store, self.manifest = as_store(out), manifest
        self.expected = dict(expected)
        self.rows_per_shard, self.write_rejects = rows_per_shard, write_rejects
        self._to_record = lambda r: to_record(r, job_name=job_name, config_hash=config_hash, code_version=code_version)
        self.parts: dict[int, list[str]] = {}
        self.arrived: Counter = Counter()
        self.committed_now: list[int] = []

    def add(self, rows: list[dict]) -> list[int]:
        by_shard: dict[int, list[dict]] = {}
        for r in rows:
            by_shard.setdefault(r["sample_index"] // self.rows_per_shard, []).append(self._to_record(r))
        done = []
        for k, recs in sorted(by_shard.items()):
            self.parts.setdefault(k, []).append(write_part(self.store, k, recs))
            self.arrived[k] += len(recs)
            if self.arrived[k] == self.expected[k]:
                entry = compact_shard(self.store, k, self.parts.pop(k), self.expected[k], self.write_rejects)
                self.manifest.commit(k, entry)
                self.store.delete_dir(f"{TMP}/shard-{k:05d}")
                self.committed_now.append(k)
                done.append(k)
        if self.manifest.data and len(self.manifest.committed()) == self.manifest.data["n_shards"]:
            self.manifest.mark_complete(totals_of(self.manifest))
        return done


def totals_of(manifest: Manifest) -> dict:
    """Job totals folded from the commit records (one record in memory at a time)."""
    acc, rej = Counter(), Counter()
    for _, e in manifest.iter_entries():
        acc.update(e["tasks_accepted"])
        rej.update(e["tasks_rejected"])
    return {"accepted": sum(acc.values()), "rejected": sum(rej.values()),
            "tasks_accepted": dict(sorted(acc.items())), "tasks_rejected": dict(sorted(rej.items()))}
