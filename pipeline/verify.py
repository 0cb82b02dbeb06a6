"""`pairforge verify OUT`: check an output folder end to end; any problem → non-zero exit.

Checks: manifest present and complete; every listed file exists with its sha256 and row count;
every file's schema equals the record schema (including the datasets feature metadata); ids are
unique across all shards and recompute from (job seed, source id, task, attempt); per-task counts
match the manifest; no stray or temporary files.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from pipeline.schema import RECORD_SCHEMA, sample_id
from pipeline.shards import Manifest, sha256_file


def _as_read_back(schema):
    """The record schema as Parquet gives it back (list children come back named 'element')."""
    import io
    import pyarrow as pa
    buf = io.BytesIO()
    pq.write_table(schema.empty_table(), buf)
    return pq.read_table(pa.BufferReader(buf.getvalue())).schema


def verify(out: str | Path) -> list[str]:
    out = Path(out)
    problems: list[str] = []
    m = Manifest(out)
    if m.data is None:
        return [f"{out}: manifest.json missing"]
    if not m.data.get("complete"):
        problems.append(f"job incomplete: {len(m.committed())}/{m.data['n_shards']} shards committed")
    seed = None
    resolved = out / "job.resolved.yaml"
    if resolved.exists():
        seed = (yaml.safe_load(resolved.read_text()) or {}).get("seed")
    expected_schema = _as_read_back(RECORD_SCHEMA)
    ids: Counter = Counter()
    listed = set()
    for k, e in sorted(m.shards.items(), key=lambda kv: int(kv[0])):
        tasks = {"data": Counter(), "rejects": Counter()}
        for sub, f in e["files"].items():
            p = out / f["path"]
            listed.add(f["path"])
            if not p.exists():
                problems.append(f"{f['path']}: missing")
                continue
            if sha256_file(p) != f["sha256"]:
                problems.append(f"{f['path']}: sha256 mismatch (file changed or corrupt)")
            try:
                t = pq.read_table(p)
            except Exception as ex:  # corrupt parquet of any kind is a finding, not a crash
                problems.append(f"{f['path']}: unreadable: {type(ex).__name__}: {ex}")
                continue
            if not t.schema.equals(expected_schema, check_metadata=True):
                problems.append(f"{f['path']}: schema differs from the record schema")
            if t.num_rows != f["rows"]:
                problems.append(f"{f['path']}: {t.num_rows} rows, manifest says {f['rows']}")
            want_status = "accepted" if sub == "data" else "rejected"
            for r in t.select(["id", "source_id", "task", "attempt", "status", "provenance"]).to_pylist():
                planned = (r["provenance"] or {}).get("planned_task") or r["task"]   # reassigned samples
                ids[r["id"]] += 1
                tasks[sub][r["task"]] += 1
                if r["status"] != want_status:
                    problems.append(f"{f['path']}: row {r['id']} has status {r['status']!r}")
                if seed is not None and sample_id(seed, r["source_id"], planned, r["attempt"]) != r["id"]:
                    problems.append(f"{f['path']}: id {r['id']} does not match its (seed, source, task, attempt)")
        if dict(tasks["data"]) != e["tasks_accepted"]:
            problems.append(f"shard {k}: accepted per-task counts {dict(tasks['data'])} != manifest {e['tasks_accepted']}")
        if "rejects" in e["files"] and dict(tasks["rejects"]) != e["tasks_rejected"]:
            problems.append(f"shard {k}: rejected per-task counts differ from the manifest")
    dup = [i for i, c in ids.items() if c > 1]
    if dup:
        problems.append(f"{len(dup)} id(s) appear more than once, e.g. {dup[0]}")
    for sub in ("data", "rejects"):
        d = out / sub
        if d.exists():
            for p in sorted(d.iterdir()):
                if f"{sub}/{p.name}" not in listed:
                    problems.append(f"{sub}/{p.name}: not in the manifest (stray or temporary file)")
    return problems
