"""`pairforge stats OUT`: what a job produced — per-task counts, acceptance, reject reasons per
stage, score distributions, and summaries of every sampled parameter."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from pipeline.shards import Manifest, read_table

COLUMNS = ["task", "status", "reject_stage", "reject_reason", "reject_detail", "scores", "params", "provenance"]


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
        out.setdefault(prefix, []).append(v)


def _num_summary(xs: list[float]) -> dict:
    a = np.asarray(xs, dtype=float)
    q = np.quantile(a, [0.1, 0.5, 0.9])
    return {"n": int(a.size), "mean": round(float(a.mean()), 4), "min": round(float(a.min()), 4),
            "p10": round(float(q[0]), 4), "p50": round(float(q[1]), 4), "p90": round(float(q[2]), 4),
            "max": round(float(a.max()), 4)}


def compute_stats(out: str | Path) -> dict:
    out = Path(out)
    m = Manifest(out)
    if m.data is None:
        raise FileNotFoundError(f"{out}: no manifest.json — not a pairforge output folder")
    rows = read_table(out, "data", COLUMNS).to_pylist() + read_table(out, "rejects", COLUMNS).to_pylist()
    per_task: dict = defaultdict(lambda: {"accepted": 0, "rejected": 0, "reasons": Counter(), "filters": Counter(),
                                          "reassigned_from": Counter(),
                                          "scores": defaultdict(list), "params": {}})
    backends = Counter()
    for r in rows:
        t = per_task[r["task"]]
        t[r["status"]] += 1
        if r["status"] == "rejected":
            t["reasons"][f"{r['reject_stage']}:{r['reject_reason']}"] += 1
            if r["reject_stage"] == "filter":     # the detail starts with the filter's name
                which = (r["reject_detail"] or "").split(":", 1)[0] or "?"
                t["filters"][f"{which}/{r['reject_reason']}"] += 1
        planned = (r["provenance"] or {}).get("planned_task")
        if planned and planned != r["task"]:
            t["reassigned_from"][planned] += 1
        for k, v in (r["scores"] or {}).items():
            if v is not None:
                t["scores"][k].append(v)
        if r["status"] == "accepted":
            if r["params"]:
                _flatten("", json.loads(r["params"]), t["params"])
            p = r["provenance"] or {}
            backends[f"{p.get('llm_backend')} / {p.get('llm_model')}"] += 1
    tasks = {}
    for name, t in sorted(per_task.items()):
        n = t["accepted"] + t["rejected"]
        params = {}
        for k, vs in sorted(t["params"].items()):
            nums = [v for v in vs if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if nums and len(nums) == len(vs):
                params[k] = _num_summary(nums)
            else:
                params[k] = dict(Counter(map(str, vs)).most_common(12))
        tasks[name] = {"samples": n, "accepted": t["accepted"], "rejected": t["rejected"],
                       "acceptance": round(t["accepted"] / n, 4) if n else 0.0,
                       "reject_reasons": dict(t["reasons"].most_common()),
                       "filter_drops": dict(t["filters"].most_common()),
                       "reassigned_from": dict(t["reassigned_from"].most_common()),
                       "scores": {k: _num_summary(v) for k, v in sorted(t["scores"].items())},
                       "params": params}
    acc = sum(t["accepted"] for t in tasks.values())
    total = sum(t["samples"] for t in tasks.values())
    return {"output": str(out), "job_name": m.data.get("job_name"), "config_hash": m.data.get("config_hash"),
            "complete": bool(m.data.get("complete")), "shards_committed": len(m.committed()),
            "shards_total": m.data.get("n_shards"), "samples": total, "accepted": acc,
            "acceptance": round(acc / total, 4) if total else 0.0,
            "instruction_writers": dict(backends), "tasks": tasks}


def format_stats(s: dict) -> str:
    L = [f"{s['output']}  job={s['job_name']}  config={s['config_hash']}  "
         f"shards {s['shards_committed']}/{s['shards_total']}{'' if s['complete'] else '  (INCOMPLETE)'}",
         f"samples {s['samples']}  accepted {s['accepted']}  acceptance {s['acceptance']:.1%}", ""]
    L.append(f"{'task':<14}{'samples':>8}{'accepted':>10}{'rate':>8}  top reject reasons")
    for name, t in s["tasks"].items():
        reasons = ", ".join(f"{k}×{v}" for k, v in list(t["reject_reasons"].items())[:4])
        L.append(f"{name:<14}{t['samples']:>8}{t['accepted']:>10}{t['acceptance']:>8.1%}  {reasons}")
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
    if s["instruction_writers"]:
        L += ["", "instructions written by: " + ", ".join(f"{k} ({v})" for k, v in s["instruction_writers"].items())]
    return "\n".join(L)
