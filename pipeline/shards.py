"""Shards: deterministic names, write-then-rename, a manifest that is the commit record.

Layout of an output folder:
  data/part-00000.parquet      accepted rows of shard 0
  rejects/part-00000.parquet   rejected rows of shard 0 (with reasons), if any and enabled
  manifest.json                one entry per committed shard: rows, per-task counts, sha256
  job.resolved.yaml            the resolved job config
  logs/                        server logs

Shard k holds plan samples k·N … (k+1)·N−1. A shard is committed when its entry is in the manifest;
files without an entry (a killed run) are deleted and the shard is made again, with the same rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import JobError
from pipeline.schema import RECORD_SCHEMA, record_table, to_record

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    # Fixed writer settings: the same rows give the same bytes.
    pq.write_table(table, tmp, compression="zstd", row_group_size=256, write_statistics=True)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


class Manifest:
    def __init__(self, out: Path):
        self.out = out
        self.path = out / MANIFEST
        self.data = json.loads(self.path.read_text()) if self.path.exists() else None

    def init(self, *, config_hash: str, job_name: str, n_samples: int, n_shards: int, rows_per_shard: int) -> None:
        header = {"config_hash": config_hash, "n_samples": n_samples, "n_shards": n_shards,
                  "rows_per_shard": rows_per_shard}
        if self.data is not None:
            old = {k: self.data.get(k) for k in header}
            if old != header:
                diff = {k: (old[k], header[k]) for k in header if old[k] != header[k]}
                raise JobError(f"{self.out} holds the output of a different job ({diff}); "
                                   "use another output folder or delete this one")
            return
        self.data = {"format_version": FORMAT_VERSION, "job_name": job_name, **header,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shards": {}}
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.data, self.path)

    @property
    def shards(self) -> dict:
        return self.data["shards"] if self.data else {}

    def committed(self) -> set[int]:
        return {int(k) for k in self.shards}

    def commit(self, k: int, entry: dict) -> None:
        self.data["shards"][str(k)] = entry
        self.data["complete"] = len(self.data["shards"]) == self.data["n_shards"]
        _write_json_atomic(self.data, self.path)

    def clean_uncommitted(self) -> list[Path]:
        """Delete shard files a killed run left without a manifest entry."""
        keep = set()
        for e in self.shards.values():
            for f in e["files"].values():
                keep.add(f["path"])
        removed = []
        for sub in ("data", "rejects"):
            d = self.out / sub
            if not d.exists():
                continue
            for p in d.iterdir():
                rel = f"{sub}/{p.name}"
                if rel not in keep:
                    p.unlink()
                    removed.append(p)
        return removed


class ShardWriter:
    """Collects flow rows as they arrive (in any order) and commits each shard when complete."""

    def __init__(self, out: Path, manifest: Manifest, expected: dict[int, int], rows_per_shard: int,
                 *, job_name: str, config_hash: str, code_version: str, write_rejects: bool):
        self.out, self.manifest = out, manifest
        self.expected = dict(expected)            # shard -> number of samples still to come
        self.rows_per_shard = rows_per_shard
        self.buf: dict[int, list[dict]] = {}
        self.meta = dict(job_name=job_name, config_hash=config_hash, code_version=code_version)
        self.write_rejects = write_rejects
        self.committed_now: list[int] = []

    def add(self, rows: list[dict]) -> list[int]:
        done = []
        for r in rows:
            k = r["sample_index"] // self.rows_per_shard
            self.buf.setdefault(k, []).append(r)
            if len(self.buf[k]) == self.expected[k]:
                self._commit(k)
                done.append(k)
        return done

    def _commit(self, k: int) -> None:
        rows = sorted(self.buf.pop(k), key=lambda r: r["sample_index"])
        recs = [to_record(r, **self.meta) for r in rows]
        acc = [r for r in recs if r["status"] == "accepted"]
        rej = [r for r in recs if r["status"] == "rejected"]
        files = {}
        for sub, part in (("data", acc), ("rejects", rej if self.write_rejects else [])):
            if not part:
                continue
            path = self.out / sub / shard_name(k)
            _write_atomic(record_table(part), path)
            files[sub] = {"path": f"{sub}/{shard_name(k)}", "rows": len(part), "sha256": sha256_file(path),
                          "bytes": path.stat().st_size}
        self.manifest.commit(k, {
            "samples": len(recs), "accepted": len(acc), "rejected": len(rej),
            "tasks_accepted": dict(sorted(Counter(r["task"] for r in acc).items())),
            "tasks_rejected": dict(sorted(Counter(r["task"] for r in rej).items())),
            "reject_reasons": dict(sorted(Counter(f"{r['reject_stage']}:{r['reject_reason']}" for r in rej).items())),
            "files": files,
        })
        self.committed_now.append(k)


def read_table(out: Path, which: str = "data", columns: list[str] | None = None) -> pa.Table:
    """All committed files of one kind ('data' or 'rejects') as one table, in shard order."""
    m = Manifest(out)
    tables = []
    for k in sorted(m.committed()):
        f = m.shards[str(k)]["files"].get(which)
        if f:
            tables.append(pq.read_table(out / f["path"], columns=columns))
    if not tables:
        schema = RECORD_SCHEMA if columns is None else pa.schema([RECORD_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)
