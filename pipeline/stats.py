"""`pairforge stats OUT`: what a job produced — per-task counts, acceptance, reject reasons per
stage, score distributions, and summaries of every sampled parameter.

Memory does not grow with the job: files are read shard by shard, a record batch at a time, and
only the columns below (never images, masks or the big provenance JSON such as candidates).
Distributions keep exact n/mean/min/max plus a fixed-size reservoir for the quantiles; value
counts of categorical parameters keep at most MAX_DISTINCT keys."""
from __future__ import annotations

import json
import random
from array import array
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq

from pipeline.funnel import Funnel, format_funnel
from pipeline.shards import Manifest, as_store

COLUMNS = ["task", "status", "reject_stage", "reject_reason", "reject_detail", "scores", "params",
           "provenance.planned_task", "provenance.llm_backend", "provenance.llm_model", "stage_times"]
RESERVOIR = 10_000          # quantiles are exact up to this many values per score/parameter
MAX_DISTINCT = 1_000        # distinct values counted per categorical parameter; the rest → "(other)"
OTHER = "(other)"


class NumSummary:
    """Exact n/mean/min/max and a seeded reservoir sample (Algorithm R) for p10/p50/p90: exact
    while n ≤ RESERVOIR, an unbiased sample beyond; the same input order gives the same numbers."""

    def __init__(self):
        self.n, self.total, self.lo, self.hi = 0, 0.0, float("inf"), float("-inf")
        self.sample = array("d")                # 8 bytes a value, at most RESERVOIR of them
        self.rng = random.Random(0)

    def add(self, x) -> None:
        x = float(x)
        self.n += 1
        self.total += x
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)
        if len(self.sample) < RESERVOIR:
            self.sample.append(x)
        else:
            j = self.rng.randrange(self.n)
            if j < RESERVOIR:
                self.sample[j] = x

    def histogram(self, bins: int) -> dict:
        """Counts in ``bins`` equal bins over [min, max] of the reservoir (exact while n ≤ RESERVOIR,
        then the sample's shape scaled to n)."""
        a = np.frombuffer(self.sample, dtype=float)
        lo, hi = self.lo, self.hi if self.hi > self.lo else self.lo + 1e-9
        counts, _ = np.histogram(a, bins=bins, range=(lo, hi))
        scale = self.n / a.size if a.size else 0.0
        return {"lo": self.lo, "hi": hi, "n": self.n, "counts": [int(round(c * scale)) for c in counts]}

    def summary(self) -> dict:
        a = np.frombuffer(self.sample, dtype=float)
        q = np.quantile(a, [0.1, 0.5, 0.9])
        # all values in hand: numpy's mean, exactly what the unbounded version printed
        mean = float(a.mean()) if self.n == a.size else self.total / self.n
        return {"n": self.n, "mean": round(mean, 4), "min": round(self.lo, 4),
                "p10": round(float(q[0]), 4), "p50": round(float(q[1]), 4), "p90": round(float(q[2]), 4),
                "max": round(self.hi, 4)}


class ParamSummary:
    """One sampled parameter: numeric summary while every value is a number, value counts (capped)
    for the categorical view, which is what is shown as soon as one value is not a number."""

    def __init__(self):
        self.nums, self.counts, self.all_numeric = NumSummary(), Counter(), True

    def add(self, v) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            self.nums.add(v)
        else:
            self.all_numeric = False
        key = str(v)
        self.counts[key if key in self.counts or len(self.counts) < MAX_DISTINCT else OTHER] += 1

    def summary(self) -> dict:
        return self.nums.summary() if self.all_numeric else dict(self.counts.most_common(12))


def _flatten(prefix: str, v, out: dict) -> None:
    """params JSON → flat leaves; a list of op dicts becomes `ops[brightness].factor`, `ops[hue].op`, ..."""
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "op" and prefix.endswith(f"[{x}]"):
                continue                        # already in the key
            _flatten(f"{prefix}.{k}" if prefix else k, x, out)
    elif isinstance(v, list):
        for x in v:
            # a list of operations is summarised per operation: ops[brightness].factor
            tag = x.get("op") if isinstance(x, dict) and isinstance(x.get("op"), str) else ""
            _flatten(f"{prefix}[{tag}]", x, out)
    else:
        if prefix not in out:
            out[prefix] = ParamSummary()
        out[prefix].add(v)


def iter_rows(store, path: str, columns: list[str], batch_size: int = 256):
    """Rows of one Parquet file as dicts, a record batch at a time, only ``columns`` (those the file
    has: outputs written before a column existed, e.g. stage_times, still read)."""
    with store.open_input(path) as fh:
        pf = pq.ParquetFile(fh)
        have = set(pf.schema_arrow.names)
        columns = [c for c in columns if c.split(".")[0] in have]
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()


def compute_stats(out, bins: int = 0) -> dict:
    """The job's statistics; ``bins`` > 0 adds per task a histogram of every score (the HTML report)."""
    store = as_store(out)
    m = Manifest(store)
    if m.data is None:
        raise FileNotFoundError(f"{m.out}: no manifest.json — not a pairforge output folder")
    per_task: dict = defaultdict(lambda: {"accepted": 0, "rejected": 0, "reasons": Counter(), "filters": Counter(),
                                          "reassigned_from": Counter(),
                                          "scores": defaultdict(NumSummary), "params": {}})
    backends = Counter()
    fun, timed = Funnel(), False
    n_records = 0
    for _, e in m.iter_entries():
        n_records += 1
        for sub in ("data", "rejects"):
            f = e["files"].get(sub)
            for r in iter_rows(store, f["path"], COLUMNS) if f else ():
                _add_row(per_task[r["task"]], r, backends)
                fun.add(r)
                timed = timed or "stage_times" in r
    tasks = {}
    for name, t in sorted(per_task.items()):
        n = t["accepted"] + t["rejected"]
        tasks[name] = {"samples": n, "accepted": t["accepted"], "rejected": t["rejected"],
                       "acceptance": round(t["accepted"] / n, 4) if n else 0.0,
                       "reject_reasons": dict(t["reasons"].most_common()),
                       "filter_drops": dict(t["filters"].most_common()),
                       "reassigned_from": dict(t["reassigned_from"].most_common()),
                       "scores": {k: v.summary() for k, v in sorted(t["scores"].items())},
                       **({"histograms": {k: v.histogram(bins) for k, v in sorted(t["scores"].items())}}
                          if bins else {}),
                       "params": {k: v.summary() for k, v in sorted(t["params"].items())}}
    acc = sum(t["accepted"] for t in tasks.values())
    total = sum(t["samples"] for t in tasks.values())
    return {"output": str(m.out), "job_name": m.data.get("job_name"), "config_hash": m.data.get("config_hash"),
            "complete": m.complete, "shards_committed": n_records,
            "shards_total": m.data.get("n_shards"), "samples": total, "accepted": acc,
            "acceptance": round(acc / total, 4) if total else 0.0,
            "instruction_writers": dict(backends), "tasks": tasks,
            # per task, per stage in chain order: samples that reached it and survived it
            # (pipeline/funnel.py); empty for outputs written before rows carried stage_times
            "funnel": fun.result() if timed else {},
            # an image folder's captions.jsonl lines that made no row (not JSON, no "image", a file not
            # in the folder) or disagreed: recorded in the manifest header by the job (SourceIndex)
            "caption_issues": m.data.get("caption_issues") or {}}


def _add_row(t: dict, r: dict, backends: Counter) -> None:
    t[r["status"]] += 1
    if r["status"] == "rejected":
        t["reasons"][f"{r['reject_stage']}:{r['reject_reason']}"] += 1
        if r["reject_stage"] == "filter":     # the detail starts with the filter's name
            which = (r["reject_detail"] or "").split(":", 1)[0] or "?"
            t["filters"][f"{which}/{r['reject_reason']}"] += 1
    p = r["provenance"] or {}
    planned = p.get("planned_task")
    if planned and planned != r["task"]:
        t["reassigned_from"][planned] += 1
    for k, v in (r["scores"] or {}).items():
        if v is not None:
            t["scores"][k].add(v)
    if r["status"] == "accepted":
        if r["params"]:
            _flatten("", json.loads(r["params"]), t["params"])
        backends[f"{p.get('llm_backend')} / {p.get('llm_model')}"] += 1


def format_stats(s: dict) -> str:
    L = [f"{s['output']}  job={s['job_name']}  config={s['config_hash']}  "
         f"shards {s['shards_committed']}/{s['shards_total']}{'' if s['complete'] else '  (INCOMPLETE)'}",
         f"samples {s['samples']}  accepted {s['accepted']}  acceptance {s['acceptance']:.1%}", ""]
    L.append(f"{'task':<14}{'samples':>8}{'accepted':>10}{'rate':>8}  top reject reasons")
    for name, t in s["tasks"].items():
        reasons = ", ".join(f"{k}×{v}" for k, v in list(t["reject_reasons"].items())[:4])
        L.append(f"{name:<14}{t['samples']:>8}{t['accepted']:>10}{t['acceptance']:>8.1%}  {reasons}")
    if s.get("funnel"):
        L += ["", "funnel per task (stage reached→survived; `pairforge cost` for the time each took)"]
        L += format_funnel(s["funnel"])
    drops = {n: t for n, t in s["tasks"].items() if t.get("filter_drops") or t.get("reassigned_from")}
    if drops:
        L += ["", "filter drops per task (filter/reason×count); samples the task predictor reassigned"]
        for name, t in drops.items():
            fd = ", ".join(f"{k}×{v}" for k, v in t.get("filter_drops", {}).items()) or "-"
            ra = ", ".join(f"from {k}×{v}" for k, v in t.get("reassigned_from", {}).items())
            L.append(f"  {name:<12} {fd}" + (f"   reassigned {ra}" if ra else ""))
    for name, t in s["tasks"].items():
        if t["scores"]:
            L += ["", f"[{name}] scores (all samples that reached the filters)"]
            for k, v in t["scores"].items():
                L.append(f"  {k:<28} mean {v['mean']:<8} p10 {v['p10']:<8} p50 {v['p50']:<8} p90 {v['p90']:<8} n={v['n']}")
        if t["params"]:
            L += ["", f"[{name}] sampled parameters (accepted)"]
            for k, v in t["params"].items():
                if "mean" in v:
                    L.append(f"  {k:<28} mean {v['mean']:<8} min {v['min']:<8} max {v['max']:<8} n={v['n']}")
                else:
                    L.append(f"  {k:<28} " + ", ".join(f"{a}×{b}" for a, b in v.items()))
    ci = s.get("caption_issues") or {}
    if ci:
        L += ["", "captions.jsonl issues: " + ", ".join(f"{k} {v}" for k, v in ci.items() if k != "examples")]
        L += [f"  {e}" for e in ci.get("examples", [])]
    if s["instruction_writers"]:
        L += ["", "instructions written by: " + ", ".join(f"{k} ({v})" for k, v in s["instruction_writers"].items())]
    return "\n".join(L)
