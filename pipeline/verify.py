"""`pairforge verify OUT`: check an output folder end to end; any problem → non-zero exit.

Checks: manifest present and complete; every committed file exists with its sha256 and row count;
every file's schema equals the record schema (including the datasets feature metadata); per-task
counts and statuses match the commit record; ids recompute from (job seed, source id, planned task,
attempt); each shard's rows have distinct sample indices, all inside the shard; stage times
(cost accounting) are finite, non-negative and name each stage once; no stray files; every row the
VLM judge rated carries its model, prompt version and every rubric score in 0..1, and its
`instruction` is one of the two it keeps (the agent's or the judge's rewrite).
candidates/ (output.keep_candidates: all) gets the same file checks against CANDIDATE_SCHEMA, and
each candidate row names a distinct (sample, candidate) of its shard, never the kept one.

Memory does not grow with the job: shards are checked one at a time, hashing streams the file, the
schema comes from the Parquet footer and only a few small columns are read. There is no global set
of ids, yet ids are unique across the job: an id is a function of its sample (seed, source, planned
task, attempt — the plan gives every sample index its own), each row's id is recomputed from those
columns, and sample indices are checked distinct within a shard and confined to its range
[k·N, (k+1)·N), so two rows of the job can only share an id by sharing a sample index within one
shard (a duplicated row), which is reported.
"""
from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import yaml

from pipeline.schema import CANDIDATE_SCHEMA, RECORD_SCHEMA, sample_id
from pipeline.shards import Manifest, as_store, commit_name, sha256_file, shard_name

COLUMNS = ["id", "source_id", "task", "attempt", "status", "sample_index", "provenance.planned_task", "stage_times",
           "provenance.judge", "scores", "instruction", "instruction_agent", "instruction_rewrite"]
JUDGE_SCORES = ("judge", "judge_following", "judge_preservation", "judge_realism", "judge_technical")


def _as_read_back(schema):
    """The record schema as a Parquet footer gives it back (list children come back named 'element')."""
    import io
    import pyarrow as pa
    buf = io.BytesIO()
    pq.write_table(schema.empty_table(), buf)
    return pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema_arrow


def verify(out) -> list[str]:
    store = as_store(out)
    problems: list[str] = []
    m = Manifest(store)
    if m.data is None:
        return [f"{m.out}: manifest.json missing"]
    n_shards, N = m.data["n_shards"], m.data["rows_per_shard"]
    seed = None
    if store.exists("job.resolved.yaml"):
        seed = (yaml.safe_load(store.read_text("job.resolved.yaml")) or {}).get("seed")
    expected_schema = _as_read_back(RECORD_SCHEMA)
    candidate_schema = _as_read_back(CANDIDATE_SCHEMA)
    # which canonical files the records name: one byte per shard (bit 1 data, 2 rejects, 4 candidates), so
    # the stray-file check needs no set of paths; records naming other paths (none expected) aside
    named = bytearray(n_shards)
    odd_paths: set[str] = set()
    n_committed = 0
    whole = bytearray(n_shards)                 # shards whose record reads whole
    for k, e in m.iter_entries():
        n_committed += 1
        if k < n_shards:
            whole[k] = 1
        tasks = {"data": Counter(), "rejects": Counter()}
        indices: Counter = Counter()            # data + rejects of this shard: at most N keys
        for sub, f in e["files"].items():
            if f["path"] == f"{sub}/{shard_name(k)}" and k < n_shards and sub in _BITS:
                named[k] |= _BITS[sub]
            else:
                odd_paths.add(f["path"])
            if sub != "candidates":
                problems += _check_file(store, f, sub, seed, expected_schema, tasks[sub], indices)
        if "candidates" in e["files"]:
            # after data/rejects: ``indices`` then holds the shard's samples (when rejects are written)
            problems += _check_candidates(store, e["files"]["candidates"], candidate_schema, k, N,
                                          indices if "rejects" in e["files"] or not e["rejected"] else None)
        outside = [i for i in indices if not k * N <= i < (k + 1) * N]
        if outside:
            problems.append(f"shard {k}: {len(outside)} row(s) with a sample index outside "
                            f"[{k * N}, {(k + 1) * N}), e.g. {min(outside)}")
        dup = [i for i, c in indices.items() if c > 1]
        if dup:
            problems.append(f"shard {k}: {len(dup)} sample index(es) appear more than once "
                            f"(duplicated rows: ids not unique), e.g. {min(dup)}")
        if dict(tasks["data"]) != e["tasks_accepted"]:
            problems.append(f"shard {k}: accepted per-task counts {dict(tasks['data'])} != manifest {e['tasks_accepted']}")
        if "rejects" in e["files"] and dict(tasks["rejects"]) != e["tasks_rejected"]:
            problems.append(f"shard {k}: rejected per-task counts differ from the manifest")
    for k in sorted(m.recorded()):
        if k >= n_shards:
            problems.append(f"{commit_name(k)}: a commit record for shard {k}, outside the job's {n_shards} shards")
        elif not whole[k]:
            problems.append(f"{commit_name(k)}: commit record cut off or malformed (shard {k} is not "
                            "committed; rerunning the job makes it again)")
    if not m.complete:
        problems.insert(0, f"job incomplete: {n_committed}/{n_shards} shards committed")
    for sub, bit in _BITS.items():
        for name in store.list(sub):
            rel = f"{sub}/{name}"
            k = _shard_of(name)
            if rel not in odd_paths and (k is None or k >= n_shards or not named[k] & bit):
                problems.append(f"{rel}: not in the manifest (stray or temporary file)")
    return problems


_BITS = {"data": 1, "rejects": 2, "candidates": 4}


def _check_parquet(store, f: dict, schema, what: str, rows) -> list[str]:
    """One committed Parquet file: existence, sha256 (streamed), footer schema and row count; then
    ``rows(pf)``, the file's own row checks, as messages. A file that cannot be read is a finding."""
    path = f["path"]
    if not store.exists(path):
        return [f"{path}: missing"]
    problems = []
    if sha256_file(path, store) != f["sha256"]:
        problems.append(f"{path}: sha256 mismatch (file changed or corrupt)")
    try:
        with store.open_input(path) as fh:
            pf = pq.ParquetFile(fh)
            if not pf.schema_arrow.equals(schema, check_metadata=True):
                problems.append(f"{path}: schema differs from the {what} schema")
            if pf.metadata.num_rows != f["rows"]:
                problems.append(f"{path}: {pf.metadata.num_rows} rows, manifest says {f['rows']}")
            problems += [f"{path}: {m}" for m in rows(pf)]
    except Exception as ex:  # corrupt parquet of any kind is a finding, not a crash
        problems.append(f"{path}: unreadable: {type(ex).__name__}: {ex}")
    return problems


def _first(bad: list[str]) -> list[str]:
    """One line per file and kind of problem, not per row: the first example and the count."""
    return [bad[0] + (f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else "")] if bad else []


def _check_candidates(store, f: dict, schema, k: int, N: int, samples) -> list[str]:
    """candidates/ file of shard k: the file checks; every row a distinct (sample index, candidate)
    of a sample of this shard (of ``samples`` when the shard's rows are all stored), never the
    candidate that was kept."""
    def rows(pf) -> list[str]:
        seen, bad = set(), []
        for batch in pf.iter_batches(batch_size=1024, columns=["sample_index", "candidate", "selected"]):
            for i, c, sel in zip(*(batch.column(n).to_pylist() for n in ("sample_index", "candidate", "selected"))):
                if (i, c) in seen:
                    bad.append(f"candidate {c} of sample {i} appears twice")
                seen.add((i, c))
                if not k * N <= i < (k + 1) * N or (samples is not None and i not in samples):
                    bad.append(f"sample {i} is not a sample of shard {k}")
                if c == sel:
                    bad.append(f"candidate {c} of sample {i} is the kept one (it belongs in data/ or rejects/)")
        return _first(bad)
    return _check_parquet(store, f, schema, "candidate", rows)


def _shard_of(name: str) -> int | None:
    if name.startswith("part-") and name.endswith(".parquet") and name[5:-8].isdigit():
        k = int(name[5:-8])
        return k if shard_name(k) == name else None
    return None


def _stage_times_problem(times: list[dict]) -> str | None:
    import math
    names = [e["stage"] for e in times]
    if len(set(names)) != len(names):
        return f"a stage listed twice ({names})"
    for e in times:
        for k in ("wall_s", "cpu_s", "gpu_s"):
            v = e[k]
            if v is None or not math.isfinite(v) or v < 0:
                return f"{e['stage']}.{k} = {v} (must be a finite number ≥ 0)"
    return None


def _check_file(store, f: dict, sub: str, seed, expected_schema, tasks: Counter, indices: Counter) -> list[str]:
    """One committed data/rejects file: the file checks, then the small columns a record batch at a
    time. Counts rows per task and sample index into the args."""
    want_status = "accepted" if sub == "data" else "rejected"

    def rows(pf) -> list[str]:
        bad_status, bad_id, bad_time, bad_judge = [], [], [], []
        for batch in pf.iter_batches(batch_size=1024, columns=COLUMNS):
            for r in batch.to_pylist():
                planned = (r["provenance"] or {}).get("planned_task") or r["task"]   # reassigned samples
                tasks[r["task"]] += 1
                indices[r["sample_index"]] += 1
                if r["status"] != want_status:
                    bad_status.append(f"row {r['id']} has status {r['status']!r}")
                if seed is not None and sample_id(seed, r["source_id"], planned, r["attempt"]) != r["id"]:
                    bad_id.append(f"id {r['id']} does not match its (seed, source, task, attempt)")
                why = _stage_times_problem(r.get("stage_times") or [])
                if why:
                    bad_time.append(f"row {r['id']} stage_times: {why}")
                why = _judge_problem(r)
                if why:
                    bad_judge.append(f"row {r['id']}: {why}")
        return [m for bad in (bad_status, bad_id, bad_time, bad_judge) for m in _first(bad)]
    return _check_parquet(store, f, expected_schema, "record", rows)


def _judge_problem(r: dict) -> str | None:
    """What is wrong with a row's judge record, or None (also for rows the judge never saw)."""
    import json
    raw = (r["provenance"] or {}).get("judge")
    if raw is None:
        return None
    try:
        j = json.loads(raw)
    except ValueError:
        return "provenance.judge is not JSON"
    if not j.get("model") or not j.get("prompt_version"):
        return "provenance.judge lacks the judge model or its prompt version"
    if r["instruction"] not in (r["instruction_agent"], r["instruction_rewrite"]):
        return "instruction is neither the agent's nor the judge's rewrite"
    if "score" not in j:             # the judge gave no usable answer: only a reject may say so
        return None if r["status"] == "rejected" else "accepted without a judge score"
    scores = r["scores"] or {}
    bad = [k for k in JUDGE_SCORES if scores.get(k) is None or not 0 <= scores[k] <= 1]
    return f"judge scores missing or outside 0..1: {bad}" if bad else None
