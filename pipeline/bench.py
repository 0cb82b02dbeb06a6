"""`pairforge bench JOB`: each stage's throughput alone, the whole chain's, and peak memory.

    1. plan the job's samples (answer cache off: every run asks the LLM afresh)
    2. run the stages one at a time, each as its own Ray Data actor pool over the previous stage's
       output, timing each alone (actor start included, as in a real job)
    3. run the full job (all stages chained, shards written) and time it end to end
    4. efficiency = end-to-end samples/s ÷ the slowest stage's samples/s alone (1.0 = the chain
       costs nothing beyond its bottleneck)
A sampler thread records the peak resident memory of this process and all its descendants (Ray
workers, raylet, the vLLM server) during step 3.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import psutil


class PeakMemory:
    """Peak summed RSS of this process tree (RSS double-counts shared pages: an upper bound)."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _time_stage(cfg, stage, rows):
    import ray
    from ray.data import ActorPoolStrategy

    from pipeline.schema import flow_table

    res = cfg.stages.for_stage(stage.resources_key)
    t = flow_table(rows)
    block = max(1, res.batch_size)
    ds = ray.data.from_arrow([t.slice(i, block) for i in range(0, t.num_rows, block)])
    ds = ds.map_batches(stage, fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json")},
                        batch_size=res.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=res.actors),
                        num_cpus=res.num_cpus, num_gpus=res.num_gpus or None, resources=res.resources or None)
    t0 = time.perf_counter()
    out = [r for b in ds.iter_batches(batch_format="pyarrow", batch_size=None) for r in b.to_pylist()]
    dt = time.perf_counter() - t0
    out.sort(key=lambda r: r["sample_index"])
    return out, dt


def run_bench(cfg, scratch: Path) -> dict:
    from pipeline.plan import build_plan
    from pipeline.runner import init_ray, llm_server, run_job
    from pipeline.stages import CHAIN

    cfg.llm.cache = False
    rows = [r for r in build_plan(cfg) if r["status"] != "rejected"]
    n = len(rows)
    report: dict = {"samples": n, "stages": {}}
    with llm_server(cfg, scratch / "logs") as url:
        if url:
            cfg.llm.url = url
        init_ray(cfg)
        cur = rows
        for stage in CHAIN:
            if not stage.enabled(cfg):
                continue
            cur, dt = _time_stage(cfg, stage, cur)
            report["stages"][stage.name] = {"seconds": round(dt, 2), "samples_per_s": round(n / dt, 3),
                                            "rejected_so_far": sum(r["status"] == "rejected" for r in cur)}
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            run_job(cfg, scratch / "job", progress=False)
            e2e = time.perf_counter() - t0
    slow_name = min(report["stages"], key=lambda k: report["stages"][k]["samples_per_s"])
    slow = report["stages"][slow_name]["samples_per_s"]
    report.update(end_to_end={"seconds": round(e2e, 2), "samples_per_s": round(n / e2e, 3)},
                  slowest_stage=slow_name, efficiency=round((n / e2e) / slow, 3),
                  peak_rss_mib=round(mem.peak / 2**20, 1))
    return report


def format_report(r: dict) -> str:
    L = [f"{'stage':<12}{'alone s':>10}{'samples/s':>12}"]
    for k, v in r["stages"].items():
        L.append(f"{k:<12}{v['seconds']:>10}{v['samples_per_s']:>12}")
    e = r["end_to_end"]
    L += [f"{'chain':<12}{e['seconds']:>10}{e['samples_per_s']:>12}   (all stages + shard writing)",
          f"samples {r['samples']}; slowest stage alone: {r['slowest_stage']}; "
          f"pipeline efficiency {r['efficiency']:.2f} (goal ≥ 0.85); peak RSS of the job's process tree {r['peak_rss_mib']} MiB"]
    return "\n".join(L)


def main(a) -> int:
    from pipeline.cli import _parse_set
    from pipeline.config import load_job

    cfg = load_job(a.job, _parse_set(a.set))
    scratch = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="pairforge-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    r = run_bench(cfg, scratch)
    print(json.dumps(r, indent=1) if a.json else format_report(r))
    return 0
