"""The cost model: measured stage times → GPU-hours, CPU-hours and money per 1M accepted pairs, the
bottleneck stage, and the cluster a target needs. `pairforge cost` and `pairforge plan --measured`
both use it, so the two never disagree.

What is measured (pipeline/stages/base.py, stored per row in ``stage_times``): for every stage a row
reached, its share of the batch's wall time, and that share times what one actor of the stage holds
(declared num_cpus / num_gpus): the resource-seconds the row *held*, busy or not. Rejected rows count:
they used the stages before the one that dropped them, and that is part of the price of a pair.

The LLM server ("llm_server" entries) is not a pool: the job starts it beside the actors, or uses
one at llm.url. Its time is attributed to the rows the instruct stage sent it: while an instruct actor
works on a batch the server serves that actor and the pool's other actors together, so a row gets its
instruct share / stages.instruct.actors of server wall time, times what one server holds
(stages.llm_server.num_cpus / num_gpus). Exact when the server is kept busy, as in a sized cluster;
an idle server's time is not in any row (undercounted), and the plan below sizes it for busy.

Not counted: model loading (once per actor), the planner, writers and shard compaction (all small
against the stages; `pairforge bench` measures them), and actors' idle time waiting for input (a
pipeline-balance loss the cluster plan removes by sizing every pool for the same throughput).

Definitions:
  per accepted pair  = resource-seconds of every row of the task (accepted + rejected) / accepted rows
  bottleneck         = the stage with the highest money per accepted pair (GPU and CPU seconds at
                       the given prices): where capacity is bought, so where a speed-up or a better
                       acceptance upstream pays most. In the cluster plan, every pool is sized to
                       the same throughput, so the bottleneck is also the pool that needs the most
                       money's worth of hardware.
  cluster plan       = per stage, actors = wall-seconds per sample × samples / (hours × 3600 ×
                       utilization), rounded up; GPUs/CPUs = actors × what one actor holds. It
                       assumes the measured per-actor speed: measure on the target hardware (a
                       CPU stand-in's seconds say nothing about an H100's).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from pipeline.funnel import stage_order

DEFAULT_PRICES = {"gpu": 2.5, "cpu": 0.04}      # $ per GPU-hour / CPU-hour (on-demand cloud ballpark)
COLUMNS = ["task", "status", "stage_times"]
SERVER = "llm_server"
ALL = "(all tasks)"


@dataclass
class StageSum:
    rows: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0

    def add(self, e: dict) -> None:
        self.rows += 1
        self.wall_s += e["wall_s"]
        self.cpu_s += e["cpu_s"]
        self.gpu_s += e["gpu_s"]


@dataclass
class TaskSum:
    samples: int = 0
    accepted: int = 0
    stages: dict = field(default_factory=lambda: defaultdict(StageSum))


class Measured:
    """Sums of the stored stage times per task and stage (counters only: streaming)."""

    def __init__(self):
        self.tasks: dict[str, TaskSum] = defaultdict(TaskSum)
        self.untimed = 0            # rows without stage_times (written before rows carried them)

    def add(self, r: dict) -> None:
        t = self.tasks[r["task"]]
        t.samples += 1
        t.accepted += r["status"] == "accepted"
        times = r.get("stage_times")
        if times is None:
            self.untimed += 1
        for e in times or ():
            t.stages[e["stage"]].add(e)

    def total(self) -> TaskSum:
        """Every task together: the job's mix."""
        out = TaskSum()
        for t in self.tasks.values():
            out.samples += t.samples
            out.accepted += t.accepted
            for s, v in t.stages.items():
                o = out.stages[s]
                o.rows += v.rows
                o.wall_s += v.wall_s
                o.cpu_s += v.cpu_s
                o.gpu_s += v.gpu_s
        return out


def run_limiter(meas: Measured, pools: dict[str, int]) -> dict | None:
    """The measured run's throughput limiter: the pool whose actors were busiest, i.e. the most
    stage wall-seconds per actor (``pools``: stage → actors of the run, from OUT/job.resolved.yaml).
    The chain cannot go faster than that pool; the cluster plan gives it more actors."""
    t = meas.total()
    busy = {s: v.wall_s / pools[s] for s, v in t.stages.items() if pools.get(s)}
    if not busy:
        return None
    top = max(busy, key=busy.get)
    return {"stage": top, "busy_s_per_actor": busy[top], "actors": pools[top],
            "busy_s": {s: round(b, 3) for s, b in busy.items()}}


def run_pools(out) -> dict[str, int]:
    """stage → actors of the measured run, from the resolved job file written beside the output."""
    import yaml

    from pipeline.config import JobConfig
    from pipeline.shards import as_store
    from pipeline.stages import CHAIN
    store = as_store(out)
    if not store.exists("job.resolved.yaml"):
        return {}
    try:
        cfg = JobConfig.model_validate(yaml.safe_load(store.read_text("job.resolved.yaml")))
    except Exception:           # a job file of another version: the limiter is left out, not the cost
        return {}
    pools = {s.name: cfg.stages.for_stage(s.resources_key).actors for s in CHAIN}
    pools[SERVER] = cfg.stages.llm_server.actors
    return pools


def measure(out) -> Measured:
    """Read every committed file of an output (data and rejects), a record batch at a time."""
    from pipeline.shards import Manifest, as_store
    from pipeline.stats import iter_rows
    store = as_store(out)
    m = Manifest(store)
    if m.data is None:
        raise FileNotFoundError(f"{m.out}: no manifest.json — not a pairforge output folder")
    meas = Measured()
    for _, e in m.iter_entries():
        for sub in ("data", "rejects"):
            f = e["files"].get(sub)
            for r in iter_rows(store, f["path"], COLUMNS) if f else ():
                meas.add(r)
    return meas


def _ordered(stages) -> list[str]:
    order = {s: i for i, s in enumerate(stage_order())}
    order[SERVER] = order.get("instruct", 0) + 0.5         # shown beside the stage that uses it
    return sorted(stages, key=lambda s: (order.get(s, len(order)), s))


def _money(cpu_s: float, gpu_s: float, prices: dict) -> float:
    return cpu_s / 3600 * prices["cpu"] + gpu_s / 3600 * prices["gpu"]


def task_cost(t: TaskSum, prices: dict, per: int = 1_000_000) -> dict:
    """One task (or the total): per stage and in all, hours and money per ``per`` accepted pairs."""
    if not t.accepted:
        return {"samples": t.samples, "accepted": 0, "acceptance": 0.0, "stages": [], "bottleneck": None,
                "note": "no accepted pair: no cost per pair"}
    k = per / t.accepted
    stages = []
    for s in _ordered(t.stages):
        v = t.stages[s]
        stages.append({"stage": s, "rows": v.rows,
                       "wall_s_per_pair": v.wall_s / t.accepted, "cpu_s_per_pair": v.cpu_s / t.accepted,
                       "gpu_s_per_pair": v.gpu_s / t.accepted,
                       "cpu_hours": v.cpu_s * k / 3600, "gpu_hours": v.gpu_s * k / 3600,
                       "money": _money(v.cpu_s, v.gpu_s, prices) * k})
    cpu_h, gpu_h = sum(s["cpu_hours"] for s in stages), sum(s["gpu_hours"] for s in stages)
    money = sum(s["money"] for s in stages)
    top = max(stages, key=lambda s: (s["money"], s["gpu_hours"], s["cpu_hours"]))
    return {"samples": t.samples, "accepted": t.accepted, "acceptance": t.accepted / t.samples,
            "per_pairs": per, "cpu_hours": cpu_h, "gpu_hours": gpu_h, "money": money, "stages": stages,
            "bottleneck": {"stage": top["stage"], "share": top["money"] / money if money else 0.0}}


def cost_report(meas: Measured, prices: dict, per: int = 1_000_000) -> dict:
    tasks = {name: task_cost(t, prices, per) for name, t in sorted(meas.tasks.items())}
    return {"prices": prices, "per_pairs": per, "untimed_rows": meas.untimed,
            "tasks": tasks, "all": task_cost(meas.total(), prices, per)}


def cluster_plan(meas: Measured, *, samples: int | None = None, target: int | None = None, hours: float,
                 utilization: float = 0.8, held: dict[str, tuple[float, float]] | None = None) -> dict:
    """Actors, CPUs and GPUs per stage to make ``samples`` samples (or ``target`` accepted pairs at the
    measured acceptance) of the measured task mix in ``hours``. ``held``: stage → (num_cpus, num_gpus)
    of one actor (a job file's pools, for `pairforge plan`); default what the measured rows held."""
    if not hours > 0 or not 0 < utilization <= 1:
        raise ValueError(f"hours must be > 0 and utilization in (0, 1], got {hours:g} and {utilization:g}")
    t = meas.total()
    if not t.samples or not t.accepted:
        raise ValueError("the measured output has no accepted pair: nothing to scale from")
    acceptance = t.accepted / t.samples
    if samples is None:
        if target is None:
            raise ValueError("give samples or a target of accepted pairs")
        samples = math.ceil(target / acceptance)
    budget = hours * 3600 * utilization           # busy seconds one actor gives
    pools = []
    for s in _ordered(t.stages):
        v = t.stages[s]
        if not v.wall_s:
            continue
        cpus, gpus = (held or {}).get(s) or (v.cpu_s / v.wall_s, v.gpu_s / v.wall_s)
        actor_s = v.wall_s / t.samples * samples
        actors = max(1, math.ceil(actor_s / budget - 1e-9))
        pools.append({"stage": s, "wall_s_per_sample": v.wall_s / t.samples, "actor_hours": actor_s / 3600,
                      "actors": actors, "num_cpus": cpus, "num_gpus": gpus,
                      "cpus": actors * cpus, "gpus": actors * gpus})
    return {"samples": samples, "expected_accepted": round(samples * acceptance), "acceptance": acceptance,
            "hours": hours, "utilization": utilization, "pools": pools,
            "cpus": sum(p["cpus"] for p in pools), "gpus": sum(p["gpus"] for p in pools),
            "actors": sum(p["actors"] for p in pools)}


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def format_cost(rep: dict) -> str:
    p = rep["prices"]
    per = rep["per_pairs"]
    L = [f"per {per:,} accepted pairs, at ${p['gpu']:g}/GPU-hour and ${p['cpu']:g}/CPU-hour "
         "(resources held per stage, rejected samples included):"]
    if rep["untimed_rows"]:
        L.append(f"note: {rep['untimed_rows']} row(s) carry no stage_times (written by an older version): not counted")
    for name, c in [*rep["tasks"].items(), (ALL, rep["all"])]:
        L.append("")
        if not c["accepted"]:
            L.append(f"[{name}] {c['samples']} samples, none accepted: no cost per pair")
            continue
        b = c["bottleneck"]
        L.append(f"[{name}] {c['samples']} samples, {c['accepted']} accepted ({c['acceptance']:.1%}):  "
                 f"{_n(c['gpu_hours'])} GPU-h  {_n(c['cpu_hours'])} CPU-h  ${_n(c['money'])}   "
                 f"bottleneck: {b['stage']} ({b['share']:.0%} of the money)")
        L.append(f"  {'stage':<16}{'rows':>7}{'wall s/pair':>13}{'GPU-h':>10}{'CPU-h':>10}{'$':>10}")
        for s in c["stages"]:
            L.append(f"  {s['stage']:<16}{s['rows']:>7}{s['wall_s_per_pair']:>13.4g}{_n(s['gpu_hours']):>10}"
                     f"{_n(s['cpu_hours']):>10}{_n(s['money']):>10}")
    return "\n".join(L)


def format_cluster_plan(plan: dict, title: str = "cluster plan") -> str:
    L = [f"{title}: {plan['samples']:,} samples (the measured task mix) → ~{plan['expected_accepted']:,} accepted pairs "
         f"(measured acceptance {plan['acceptance']:.1%}) in {plan['hours']:g} h, actors busy "
         f"{plan['utilization']:.0%} of the time",
         f"  {'pool':<16}{'s/sample':>10}{'actor-h':>10}{'actors':>8}{'CPU/actor':>11}{'GPU/actor':>11}{'CPUs':>8}{'GPUs':>8}"]
    for p in plan["pools"]:
        L.append(f"  {p['stage']:<16}{p['wall_s_per_sample']:>10.4g}{_n(p['actor_hours']):>10}{p['actors']:>8}"
                 f"{p['num_cpus']:>11.3g}{p['num_gpus']:>11.3g}{_n(p['cpus']):>8}{_n(p['gpus']):>8}")
    L.append(f"  {'total':<16}{'':>10}{'':>10}{plan['actors']:>8}{'':>11}{'':>11}{_n(plan['cpus']):>8}{_n(plan['gpus']):>8}")
    if any(p["stage"] == SERVER for p in plan["pools"]):
        L.append("  (llm_server: actors = vLLM servers, each holding stages.llm_server)")
    return "\n".join(L)


def parse_prices(items: list[str] | None) -> dict:
    prices = dict(DEFAULT_PRICES)
    for it in items or []:
        k, sep, v = it.partition("=")
        k = k.strip().lower()
        if not sep or k not in prices:
            raise ValueError(f"--price expects gpu=DOLLARS or cpu=DOLLARS (per hour), got {it!r}")
        try:
            prices[k] = float(v)
        except ValueError:
            raise ValueError(f"--price {k}: {v!r} is not a number") from None
        if prices[k] < 0:
            raise ValueError(f"--price {k}: must not be negative")
    return prices
