"""What a job asks of a cluster, worked out before anything runs (`pairforge plan`).

Ray Data asks for all n actors of every ``ActorPoolStrategy(size=n)`` pool when a job starts; an
actor that cannot be placed stays pending without an error. An actor bigger than any node, or pools
that together exceed the cluster (the first pools take the CPUs that the next pool or the block
tasks need), leave the job waiting forever (seen with Ray 2.60). So the pools are summed up front and
compared with the cluster — a running one (``ray.nodes()``) or the most a cluster launcher YAML can
provide — and a job that cannot fit is refused with the config field to change.

Node dicts use Ray's units: ``{"CPU": 48, "GPU": 4, "memory": bytes, "llm_host": 1}``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config import JobConfig

GIB = 2 ** 30
_EPS = 1e-9       # fractional CPUs / GPUs (0.1 + 0.2) must not fail a check by rounding


@dataclass
class PoolSpec:
    stage: str                  # the stage's name (a pool in Ray Data's logs)
    key: str                    # its resources_key in `stages:`
    config_field: str           # where the numbers came from (stages.diffusion while the split key is unset)
    actors: int
    num_cpus: float
    num_gpus: float
    memory_gb: float
    resources: dict[str, float]
    batch_size: int

    @property
    def label(self) -> str:
        """How messages name the pool: by the field to edit, and the pool when that differs."""
        same = self.config_field == f"stages.{self.stage}"
        return self.config_field if same else f"{self.config_field} (the {self.stage} pool)"

    def per_actor(self) -> dict[str, float]:
        """One actor's demand in Ray's units (memory in bytes); zero entries left out."""
        d = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": self.memory_gb * GIB, **self.resources}
        return {k: v for k, v in d.items() if v}


def pool_specs(cfg: JobConfig, tasks: set[str]) -> list[PoolSpec]:
    """One spec per actor pool the runner would create for rows of these tasks, in chain order."""
    from pipeline.stages import CHAIN

    out = []
    for stage in CHAIN:
        if not stage.needed(tasks) or not stage.enabled(cfg):
            continue
        key = stage.resources_key
        res = cfg.stages.for_stage(key)
        source = key if getattr(cfg.stages, key) is not None else "diffusion"
        out.append(PoolSpec(stage.name, key, f"stages.{source}", res.actors, res.num_cpus, res.num_gpus,
                            res.memory_gb, dict(res.resources), res.batch_size))
    return out


def count_samples(cfg: JobConfig) -> tuple[int, int, set[str]]:
    """(samples, shards, tasks the rows can have) from the source index alone: one streaming pass
    over captions / Parquet metadata / a folder listing, no image decoded. Tasks are the mix plus any
    a source column names. Raises OSError / ValueError when the source cannot be read here."""
    from pipeline.plan import job_index, n_samples, n_shards

    index = job_index(cfg)
    return n_samples(cfg, index), n_shards(cfg, index), set(cfg.tasks) | set(index.source_tasks)


def _add(into: dict, d: dict, times: float = 1) -> dict:
    for k, v in d.items():
        into[k] = into.get(k, 0) + v * times
    return into


def requirements(pools: list[PoolSpec]) -> dict:
    """Totals over all pools (CPUs, GPUs, memory GiB, custom resources) and the largest single
    actor per resource: a node smaller than that in any resource cannot host every pool."""
    total: dict[str, float] = {}
    for p in pools:
        _add(total, p.per_actor(), p.actors)
    largest = {k: max((p.per_actor().get(k, 0) for p in pools), default=0) for k in ("CPU", "GPU", "memory")}
    custom = {k: v for k, v in total.items() if k not in ("CPU", "GPU", "memory")}
    return {"actors": sum(p.actors for p in pools), "CPU": total.get("CPU", 0), "GPU": total.get("GPU", 0),
            "memory_gb": total.get("memory", 0) / GIB, "resources": custom,
            "largest_actor": {"CPU": largest["CPU"], "GPU": largest["GPU"], "memory_gb": largest["memory"] / GIB}}


def cluster_totals(nodes: list[dict]) -> dict[str, float]:
    total: dict[str, float] = {}
    for n in nodes:
        _add(total, n)
    return total


def _amount(key: str, v: float) -> str:
    """A quantity in words: '32 GPUs', '1 GPU', '16 GiB memory', '0.1 llm_host'."""
    if key == "memory":
        return f"{_num(v / GIB)} GiB memory"
    name = key + ("s" if key in ("CPU", "GPU") and v != 1 else "")
    return f"{_num(v)} {name}"


def _num(v: float) -> str:
    return f"{round(v, 2):g}" if v < 1e6 else f"{v:,.0f}"


def check_fits(pools: list[PoolSpec], nodes: list[dict]) -> list[str]:
    """Why these pools cannot all be placed on these nodes at once; empty when they can as far as
    totals and single actors show (packing several actors onto a node is Ray's job and not modelled)."""
    if not nodes:
        return ["the cluster has no nodes"]
    have = cluster_totals(nodes)
    problems = []
    need: dict[str, float] = {}
    for p in pools:
        _add(need, p.per_actor(), p.actors)
    for k, total in need.items():
        if total <= have.get(k, 0) + _EPS:
            continue
        # name the pool when it alone is too big, else every pool that asks for this resource
        alone = [p for p in pools if p.actors * p.per_actor().get(k, 0) > have.get(k, 0) + _EPS]
        for p in alone:
            per = p.per_actor()[k]
            problems.append(f"{p.label}: {p.actors} actors × {_amount(k, per)} = {_amount(k, p.actors * per)}, "
                            f"the cluster has {_amount(k, have.get(k, 0))}")
        if not alone:
            users = sorted((p for p in pools if p.per_actor().get(k)), key=lambda p: -p.actors * p.per_actor()[k])
            parts = ", ".join(f"{p.label} {p.actors} × {_num(p.per_actor()[k] / (GIB if k == 'memory' else 1))}"
                              for p in users)
            problems.append(f"{k}: the pools need {_amount(k, total)} together, the cluster has "
                            f"{_amount(k, have.get(k, 0))} ({parts})")
    for p in pools:
        one = p.per_actor()
        if not any(all(n.get(k, 0) + _EPS >= v for k, v in one.items()) for n in nodes):
            biggest = {k: max(n.get(k, 0) for n in nodes) for k in one}
            problems.append(f"{p.label}: one actor needs {', '.join(_amount(k, v) for k, v in one.items())}; "
                            f"no node has all of that (the most any node has: "
                            f"{', '.join(_amount(k, v) for k, v in biggest.items())})")
    return problems


def ray_nodes(address: str | None = None) -> list[dict]:
    """Resources of the alive nodes of a running cluster (what it has now, not what an autoscaler
    could add). A dashboard address (http://HEAD:8265, as `ray job submit` takes) goes through the
    state API; a GCS address (HOST:6379, auto) through ray.init and ray.nodes()."""
    if address and address.startswith(("http://", "https://")):
        from ray.util.state import list_nodes
        return [dict(n.resources_total) for n in list_nodes(address=address, limit=10_000) if n.state == "ALIVE"]
    import logging

    import ray
    env = os.environ.pop("RAY_ADDRESS", None) if address else None   # ray.init prefers it to `address`
    try:
        ray.init(address=address or "auto", logging_level=logging.WARNING, log_to_driver=False)
        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()
        if env is not None:
            os.environ["RAY_ADDRESS"] = env


def launcher_nodes(path: str | Path) -> list[dict]:
    """The most nodes a Ray cluster launcher YAML can provide: the head, plus ``max_workers`` copies
    of each node type's ``resources``, at most the top-level ``max_workers`` workers in all (Ray's
    defaults: 2 overall; a type without its own cap gets the overall one, the head type 0 more).
    When the overall cap is below the types' sum, types are filled in file order — the autoscaler
    picks its mix by demand, so declare caps that add up. Every type must declare CPU and GPU:
    at `ray up` Ray fills them in from the instance type, which this check cannot see."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    types = doc.get("available_node_types") or {}
    head = doc.get("head_node_type")
    if head not in types:
        raise ValueError(f"{path}: head_node_type {head!r} is not one of available_node_types")
    cap = doc.get("max_workers", 2)
    nodes: list[dict] = []
    for name, t in types.items():
        res = dict((t or {}).get("resources") or {})
        missing = [k for k in ("CPU", "GPU") if k not in res]
        if missing:
            raise ValueError(f"{path}: available_node_types.{name}.resources: declare {' and '.join(missing)} "
                             "(and memory, in bytes) so the job can be checked against it")
        workers = min(t.get("max_workers", 0 if name == head else cap), cap)
        cap -= workers
        nodes += [dict(res) for _ in range(workers + (name == head))]
    return nodes


BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")   # where `ray up` puts its config on the head


def job_cluster_nodes(bootstrap: Path = BOOTSTRAP_CONFIG) -> tuple[list[dict], str]:
    """For `run`, inside a connected Ray: the nodes the job can count on, and a description. On the
    head of a launcher-made cluster (where `ray job submit` runs the driver) the launcher's config
    at its largest, because the autoscaler adds nodes as the pools ask for them and today's alive
    nodes (2 GPU workers for paper.yaml) would refuse a job that fits; elsewhere the alive nodes."""
    path = bootstrap.expanduser()
    if path.is_file():
        try:
            nodes = launcher_nodes(path)
            return nodes, f"the autoscaler's config {path} at its largest ({describe_nodes(nodes)})"
        except ValueError:      # a provider that left CPU / GPU undeclared: count what is alive
            pass
    import ray
    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    return nodes, f"this Ray cluster's alive nodes ({describe_nodes(nodes)})"


def describe_nodes(nodes: list[dict]) -> str:
    t = cluster_totals(nodes)
    return (f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {_amount('CPU', t.get('CPU', 0))}, "
            f"{_amount('GPU', t.get('GPU', 0))}, {_amount('memory', t.get('memory', 0))}")


def format_plan(cfg: JobConfig, n_samples: int | None, n_shards: int | None, pools: list[PoolSpec],
                fit_problems: list[str] | None, against: str | None) -> str:
    """The plan as a table; ``fit_problems`` None: no cluster was checked (needs only)."""
    if n_samples is None:
        lines = [f"job {cfg.name}: samples unknown (the source cannot be read here)"]
    else:
        lines = [f"job {cfg.name}: {n_samples:,} samples in {n_shards:,} shards of {cfg.output.rows_per_shard:,}"]
    head = ("pool", "config field", "actors", "CPU/actor", "GPU/actor", "mem/actor", "batch", "CPUs", "GPUs", "memory", "other")
    rows = [head]
    for p in pools:
        other = ", ".join(f"{k} {_num(v)}" for k, v in p.resources.items())
        rows.append((p.stage, p.config_field, str(p.actors), _num(p.num_cpus), _num(p.num_gpus),
                     f"{_num(p.memory_gb)} GiB" if p.memory_gb else "-", str(p.batch_size),
                     _num(p.actors * p.num_cpus), _num(p.actors * p.num_gpus),
                     f"{_num(p.actors * p.memory_gb)} GiB" if p.memory_gb else "-", other))
    req = requirements(pools)
    rows.append(("total", "", str(req["actors"]), "", "", "", "", _num(req["CPU"]), _num(req["GPU"]),
                 f"{_num(req['memory_gb'])} GiB" if req["memory_gb"] else "-",
                 ", ".join(f"{k} {_num(v)}" for k, v in req["resources"].items())))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip())
    big = req["largest_actor"]
    lines.append(f"needs {_amount('GPU', req['GPU'])}, {_amount('CPU', req['CPU'])}, "
                 f"{_num(req['memory_gb'])} GiB reserved memory; the largest actor: {_amount('CPU', big['CPU'])}, "
                 f"{_amount('GPU', big['GPU'])}, {_num(big['memory_gb'])} GiB")
    if fit_problems is None:
        lines.append("not checked against a cluster (--cluster LAUNCHER.yaml, or --address / RAY_ADDRESS)")
    elif not fit_problems:
        lines.append(f"fits {against}")
    else:
        lines.append(f"does NOT fit {against}; Ray Data would wait forever for the missing actors:")
        lines += [f"  - {m}" for m in fit_problems]
    return "\n".join(lines)


def plan_json(cfg: JobConfig, n_samples: int | None, n_shards: int | None, pools: list[PoolSpec],
              fit_problems: list[str] | None, against: str | None) -> dict:
    return {"job": cfg.name, "samples": n_samples, "shards": n_shards,
            "pools": [asdict(p) for p in pools], "requirements": requirements(pools), "against": against,
            "fits": None if fit_problems is None else not fit_problems, "problems": fit_problems or []}


__all__ = ["PoolSpec", "pool_specs", "count_samples", "requirements", "check_fits", "cluster_totals",
           "ray_nodes", "launcher_nodes", "job_cluster_nodes", "describe_nodes", "format_plan", "plan_json", "GIB"]
