"""Shards: workers write part files, a compaction task makes each shard's final file, and the driver
commits it with one small record. Nothing here grows with the job: each commit is O(1).

Layout of an output folder (a local path or an object-store URI; see pipeline/storage.py):
  manifest.json                  the job's header (config hash, sample and shard counts); `complete`
                                 and the totals are added once, when the last shard is committed
  _commits/shard-00000.json      shard 0's commit record: rows, per-task counts, file sha256s
  data/part-00000.parquet        accepted rows of shard 0, sorted by sample index
  rejects/part-00000.parquet     rejected rows of shard 0 (with reasons), when enabled
  candidates/part-00000.parquet  the candidates that were not kept, of shard 0's samples, when
                                 output.keep_candidates is all (CANDIDATE_SCHEMA)
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
from pipeline.schema import CANDIDATE_SCHEMA, RECORD_SCHEMA, candidate_table, record_table
from pipeline.storage import Store

log = logging.getLogger("pairforge")

MANIFEST = "manifest.json"
COMMITS = "_commits"
TMP = ".tmp"
FORMAT_VERSION = 2
HEADER_KEYS = ("config_hash", "n_samples", "n_shards", "rows_per_shard")
# the shard sets: each shard's file of each set is named by its commit record, under the same rules
SHARD_SETS = ("data", "rejects", "candidates")
CANDIDATE_ROW_GROUP = 32    # candidates are mostly images: smaller row groups keep readers' memory small


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


def parquet_bytes(table: pa.Table, row_group_size: int = 256) -> bytes:
    # Fixed writer settings: the same rows give the same bytes.
    buf = io.BytesIO()
    pq.write_table(table.combine_chunks(), buf, compression="zstd", row_group_size=row_group_size,
                   write_statistics=True)
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
    def recorded(self) -> set[int]:
        """Shards with a commit record file, whole or not (a listing: no record is read)."""
        ks = {int(k) for k in self._legacy}
        for name in self.store.list(COMMITS):
            if name.startswith("shard-") and name.endswith(".json") and name[6:-5].isdigit():
                ks.add(int(name[6:-5]))
        return ks

    def committed(self) -> set[int]:
        """Shards with a whole commit record (a cut-off or malformed record is not one: see ``entry``).
        Whether the files it names are there at their size is checked by ``clean_uncommitted``
        (every run, before it skips a shard); whether they hash to its sha256s by ``pairforge verify``."""
        return {k for k, _ in self.iter_entries()}

    def entry(self, k: int) -> dict | None:
        if str(k) in self._legacy:
            e = self._legacy[str(k)]
        else:
            try:
                e = self.store.read_json(commit_name(k))
            except FileNotFoundError:
                return None
            except ValueError:          # truncated, empty or not UTF-8: an interrupted write
                e = None
        problem = "not JSON (cut off)" if e is None else entry_problem(k, e)
        if problem:
            # no commit: the next run deletes the record and makes the shard again
            log.warning("commit record %s is cut off or malformed (%s); shard %d counts as not committed",
                        commit_name(k), problem, k)
            return None
        return e

    def iter_entries(self) -> Iterator[tuple[int, dict]]:
        """(shard, commit record) in shard order, one record in memory at a time; records that are
        cut off or malformed are left out."""
        for k in sorted(self.recorded()):
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

    def clean_uncommitted(self, *, check_hashes: bool = False) -> list[str]:
        """Delete what a killed run (or a power cut) left: commit records that are cut off,
        malformed or name files that are missing or differ from their size (those shards are made
        again), final files without a whole record, and all part files. Returns the paths removed.

        Sizes come from one listing of each shard set (data/, rejects/, candidates/), so a resume costs O(shards) metadata,
        not a read of the output: a file is fsynced and renamed into place before its record is
        written, so a whole record names whole files. ``check_hashes`` also streams every file
        through sha256 (what `pairforge verify` does), for a disk that may have lost data."""
        keep, removed = set(), []
        sizes = {f"{sub}/{n}": b for sub in SHARD_SETS for n, b in self.store.sizes(sub).items()}
        for k in sorted(self.recorded()):
            e = self.entry(k)
            bad = None if e is None else self._files_problem(e, check_hashes, sizes)
            if e is None or bad:                # the shard is made again
                if bad:
                    log.warning("commit record %s: %s; shard %d counts as not committed", commit_name(k), bad, k)
                if str(k) in self._legacy:      # format 1: dropped from the header on conversion
                    self._legacy.pop(str(k))
                self.store.delete(commit_name(k))
                removed.append(commit_name(k))
                continue
            for f in e["files"].values():
                keep.add(f["path"])
        for sub in SHARD_SETS:
            for name in self.store.list(sub):
                rel = f"{sub}/{name}"
                if rel not in keep:
                    self.store.delete(rel)
                    removed.append(rel)
        for name in self.store.list(COMMITS):
            if name.startswith(".tmp-"):
                self.store.delete(f"{COMMITS}/{name}")
                removed.append(f"{COMMITS}/{name}")
        for name in self.store.list(""):       # cut-off atomic writes of manifest.json and friends
            if name.startswith(".tmp-"):
                self.store.delete(name)
                removed.append(name)
        tmp = self.store.list(TMP, recursive=True)
        if tmp:
            removed += [f"{TMP}/{n}" for n in tmp]
            self.store.delete_dir(TMP)
        return removed

    def _files_problem(self, e: dict, check_hashes: bool, sizes: dict[str, int]) -> str | None:
        """Why the files a (well-formed) record names are not what it says, or None."""
        for f in e["files"].values():
            path = f["path"]
            size = sizes.get(path)
            if size is None:
                return f"{path} missing"
            if size != f["bytes"]:
                return f"{path} has {size} bytes, the record says {f['bytes']}"
            if check_hashes and sha256_file(path, self.store) != f["sha256"]:
                return f"{path} differs from the record's sha256"
        return None


_ENTRY_COUNTS = ("samples", "accepted", "rejected")
_ENTRY_MAPS = ("tasks_accepted", "tasks_rejected", "reject_reasons")


def entry_problem(k: int, e) -> str | None:
    """What makes ``e`` not a whole commit record of shard k, or None: a field every reader uses
    missing or of the wrong type (what a record cut off and then "repaired" into JSON looks like).
    Only the record is looked at; whether its counts match its files is ``pairforge verify``'s job."""
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(e, dict):
        return f"a {type(e).__name__}, not an object"
    for key in _ENTRY_COUNTS:
        if not count(e.get(key)):
            return f"{key!r} missing or not a count"
    for key in _ENTRY_MAPS:
        m = e.get(key)
        if not isinstance(m, dict) or not all(isinstance(t, str) and count(n) for t, n in m.items()):
            return f"{key!r} missing or not a map of counts"
    files = e.get("files")
    if not isinstance(files, dict):
        return "'files' missing or not a map"
    for sub, f in files.items():
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and f["path"]
                and count(f.get("rows")) and count(f.get("bytes")) and isinstance(f.get("sha256"), str)
                and len(f["sha256"]) == 64 and all(c in "0123456789abcdef" for c in f["sha256"])):
            return f"files.{sub}: path, rows, bytes or sha256 missing or malformed"
    return None


# -------------------------------------------------------------------- workers: parts and compaction

def write_part(store: Store, k: int, records: list[dict], candidates: list[dict] | None = None) -> str:
    """A writer's rows of shard k (any statuses, any order) as one part file under .tmp/.
    Returns its relative path. The name is unique, so a retried batch never overwrites a part the
    driver already counted; compaction reads only the parts the driver was told about.

    ``candidates`` (a list, possibly empty, when output.keep_candidates is all): the rows' not-kept
    candidates, written first to the companion file ``candidate_part(rel)``; the driver learns of
    the part only after both exist, so compaction can count on the companion."""
    rel = f"{TMP}/shard-{k:05d}/{uuid.uuid4().hex}.parquet"
    if candidates is not None:
        store.write_bytes(candidate_part(rel), parquet_bytes(candidate_table(candidates), CANDIDATE_ROW_GROUP),
                          durable=False)
    store.write_bytes(rel, parquet_bytes(record_table(records)), durable=False)
    return rel


def candidate_part(part: str) -> str:
    """The companion file holding a part's candidates."""
    return part[:-len(".parquet")] + ".candidates.parquet"


def compact_shard(store: Store, k: int, parts: list[str], expected: int, write_rejects: bool,
                  keep_candidates: bool = False) -> dict:
    """Shard k's parts → data/ and rejects/ files sorted by sample index (the same bytes a single
    writer would make), with ``keep_candidates`` also candidates/ sorted by (sample index,
    candidate), and the commit record for the driver to write. Raises when the parts do not
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
    if keep_candidates:
        c = _compact_candidates(store, parts)
        if c.num_rows:
            data = parquet_bytes(c, CANDIDATE_ROW_GROUP)
            rel = f"candidates/{shard_name(k)}"
            store.write_bytes(rel, data)
            files["candidates"] = {"path": rel, "rows": c.num_rows, "sha256": sha256_bytes(data), "bytes": len(data)}
    return {
        "samples": t.num_rows, "accepted": len(acc_i), "rejected": len(rej_i),
        "tasks_accepted": dict(sorted(Counter(tasks[i] for i in acc_i).items())),
        "tasks_rejected": dict(sorted(Counter(tasks[i] for i in rej_i).items())),
        "reject_reasons": dict(sorted(Counter(f"{r['reject_stage']}:{r['reject_reason']}" for r in rej_rows).items())),
        "files": files,
    }


def _compact_candidates(store: Store, parts: list[str]) -> pa.Table:
    """The parts' companion candidate files as one table sorted by (sample index, candidate); a
    retried batch's second copy of a sample's candidates is dropped, as its rows are."""
    tables = [pq.read_table(store.open_input(candidate_part(p))) for p in parts]
    t = pa.concat_tables(tables) if tables else CANDIDATE_SCHEMA.empty_table()
    if not t.num_rows:
        return t
    t = t.sort_by([("sample_index", "ascending"), ("candidate", "ascending")])
    key = list(zip(t.column("sample_index").to_pylist(), t.column("candidate").to_pylist()))
    if len(set(key)) != len(key):
        t = t.take(pa.array([i for i in range(len(key)) if i == 0 or key[i] != key[i - 1]], pa.int64()))
    return t


def reject_duplicate_instructions(t: pa.Table) -> pa.Table:
    """The same instruction twice for one caption: every accepted sample after the first accepted
    one (by index) is rejected as ``instruct:duplicate_instruction``.

    "One caption" is one source row (its id): the same caption text on two images makes two
    different pairs. The check is job-wide although it sees one shard: a shard holds whole source
    rows (``output.rows_per_shard`` is a multiple of ``source.repeats``, pipeline/config.py). Done
    here, on the shard's fixed set of rows, so a row never depends on which rows shared its batch (it
    did when the instruction stage checked its own batch: a resumed job could then differ from an
    undisturbed one), and the driver holds nothing per sample."""
    from pipeline.llm.answers import normalise_instruction

    srcs, ins = t.column("source_id").to_pylist(), t.column("instruction").to_pylist()
    status = t.column("status").to_pylist()
    seen, dup = set(), []
    for i, (s, x) in enumerate(zip(srcs, ins)):
        if x is None or status[i] != "accepted":   # only kept pairs can duplicate each other
            continue
        key = (s, normalise_instruction(x))
        if key in seen:
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
                 *, job_name: str, config_hash: str, code_version: str, write_rejects: bool,
                 keep_candidates: bool = False):
        from pipeline.schema import to_record

        self.store, self.manifest = as_store(out), manifest
        self.expected = dict(expected)
        self.rows_per_shard, self.write_rejects = rows_per_shard, write_rejects
        self.keep_candidates = keep_candidates
        self._to_record = lambda r: to_record(r, job_name=job_name, config_hash=config_hash, code_version=code_version)
        self.parts: dict[int, list[str]] = {}
        self.arrived: Counter = Counter()
        self.committed_now: list[int] = []

    def add(self, rows: list[dict]) -> list[int]:
        from pipeline.schema import to_candidate_records

        by_shard: dict[int, list[dict]] = {}
        cands: dict[int, list[dict]] = {}
        for r in rows:
            k = r["sample_index"] // self.rows_per_shard
            by_shard.setdefault(k, []).append(self._to_record(r))
            cands.setdefault(k, []).extend(to_candidate_records(r) if self.keep_candidates else [])
        done = []
        for k, recs in sorted(by_shard.items()):
            self.parts.setdefault(k, []).append(
                write_part(self.store, k, recs, cands[k] if self.keep_candidates else None))
            self.arrived[k] += len(recs)
            if self.arrived[k] == self.expected[k]:
                entry = compact_shard(self.store, k, self.parts.pop(k), self.expected[k], self.write_rejects,
                                      self.keep_candidates)
                self.manifest.commit(k, entry)
                self.store.delete_dir(f"{TMP}/shard-{k:05d}")
                self.committed_now.append(k)
                done.append(k)
        if done and self.manifest.data and len(self.manifest.committed()) == self.manifest.data["n_shards"]:
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
