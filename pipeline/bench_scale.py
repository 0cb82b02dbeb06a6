"""`pairforge bench --scale N [N ...]`: how the data plane's cost grows with the job.

For each N, one fresh driver process runs a job of N synthetic caption samples through the real
parts: source index, shard planning on workers, Ray Data stages, part writers, compaction and the
driver's commit records; then `stats` and `verify` on the output, each in its own process. Reported
per N: driver peak RSS, samples/s, the driver's commit time per shard (first and last 10% of
shards), and the time and peak RSS of stats and verify.

Two stand-ins, here and nowhere else (no job config can select them; only this module passes them
to ``run_job``), because nothing on one machine can serve a million LLM requests or diffusion runs:
  * the LLM stage: one fixed valid color-task answer for every sample;
  * the image generators: a stage that draws a small deterministic input/output pair per sample
    (32 px PNGs), so the writers and compaction carry image bytes as a job's would.
The filters are off (they need the vision models). Everything after the stages is the job's own.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANSWER = json.dumps({"instruction": "Make the whole photo warmer and a little brighter",
                     "output_caption": "the same scene in warm, bright afternoon light"})


def _stand_in_instruct():
    from pipeline.stages.base import Stage

    class StandInInstructStage(Stage):
        """In place of the LLM stage: the same fixed, valid color-task answer for every sample
        (benchmark only: nothing here could serve a million LLM requests)."""
        name = "instruct"
        resources_key = "instruct"

        def process_row(self, row):
            row["answer"] = ANSWER
            row["llm"] = json.dumps({"backend": "bench-stand-in", "model": "fixed-answer", "tries": 1})

    return StandInInstructStage


def _stand_in_pairs():
    import numpy as np

    from pipeline.sources import encode_png
    from pipeline.stages.base import Stage

    class StandInPairStage(Stage):
        """A small deterministic pair per sample, in place of the generators (benchmark only)."""
        name = "cpu"
        resources_key = "cpu"

        def process_row(self, row):
            # a smooth picture with a little noise: compresses like a photo, not like pure noise
            rng = np.random.default_rng(row["seed"])
            ramp = np.linspace(0, 200, 32, dtype=np.float32)
            x = (ramp[None, :, None] + rng.integers(0, 56, (1, 1, 3)) + rng.normal(0, 4, (32, 32, 3)))
            x = np.clip(x, 0, 255).astype(np.uint8)
            row["input_png"] = encode_png(x)
            row["output_png"] = encode_png(np.clip(x.astype(int) + 24, 0, 255).astype(np.uint8))
            row["params"] = json.dumps({"ops": [{"op": "brightness", "factor": 1.1}]})
            row["scores"] = json.dumps({"l1": 0.09})

    return StandInPairStage


def bench_chain() -> tuple:
    return (_stand_in_instruct(), _stand_in_pairs())


def _job(n: int, work: Path, rows_per_shard: int):
    from pipeline.config import JobConfig
    src = work / "captions.txt"
    with src.open("w") as f:
        for i in range(n):
            f.write(f"a photo of a red bicycle number {i} leaning on a wall\n")
    return JobConfig.model_validate({
        "name": f"bench-scale-{n}", "seed": 1, "tasks": {"color": 1.0},
        "source": {"kind": "captions", "path": str(src)},
        # the stand-in instruct stage asks no server: an in-process backend, so the job neither
        # launches one nor waits for one (its model is never loaded)
        "llm": {"backend": "transformers", "cache": False},
        "filters": {"enabled": False},
        "stages": {"instruct": {"actors": 1, "num_cpus": 0.5, "batch_size": 256},
                   "cpu": {"actors": 1, "num_cpus": 0.5, "batch_size": 256},
                   "load": {"actors": 1, "num_cpus": 0.25, "batch_size": 256},
                   "filter": {"actors": 1, "num_cpus": 0.25, "batch_size": 256}},
        "output": {"path": str(work / "out"), "rows_per_shard": rows_per_shard},
        "ray": {"num_cpus": 4},
    })


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # Linux: KiB


def one_job(n: int, work: Path, rows_per_shard: int) -> dict:
    """Runs in its own process (the parent reads its JSON line): a job of n samples."""
    import logging
    logging.basicConfig(level=logging.WARNING)
    from pipeline.runner import init_ray, run_job
    cfg = _job(n, work, rows_per_shard)
    init_ray(cfg)
    t0 = time.perf_counter()
    summary = run_job(cfg, work / "out", progress=False, chain=bench_chain(), _stats=(stats := {}))
    dt = time.perf_counter() - t0
    ms = stats["commit_ms"]
    tenth = max(1, len(ms) // 10)
    return {"n": n, "shards": summary["shards"], "seconds": round(dt, 2), "samples_per_s": round(n / dt, 1),
            "driver_peak_rss_mb": round(_peak_rss_mb(), 1),
            "commit_ms_first_shards": round(sum(ms[:tenth]) / tenth, 3),
            "commit_ms_last_shards": round(sum(ms[-tenth:]) / tenth, 3)}


def one_inspect(what: str, out: str) -> dict:
    t0 = time.perf_counter()
    if what == "stats":
        from pipeline.stats import compute_stats
        s = compute_stats(out)
        ok = s["samples"]
    else:
        from pipeline.verify import verify
        problems = verify(out)
        ok = len(problems) == 0
    return {f"{what}_s": round(time.perf_counter() - t0, 2), f"{what}_peak_rss_mb": round(_peak_rss_mb(), 1),
            f"{what}_result": ok}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "pipeline.bench_scale", *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"bench child {args} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(sizes: list[int], rows_per_shard: int = 64, keep: str | None = None, progress=print) -> list[dict]:
    results = []
    for n in sizes:
        work = Path(keep or tempfile.mkdtemp(prefix="pairforge-scale-")) / f"n{n}"
        work.mkdir(parents=True, exist_ok=True)
        r = _child(["--job", str(n), str(work), str(rows_per_shard)])
        r.update(_child(["--inspect", "stats", str(work / "out")]))
        r.update(_child(["--inspect", "verify", str(work / "out")]))
        progress(json.dumps(r))
        results.append(r)
        if not keep:
            import shutil
            shutil.rmtree(work.parent, ignore_errors=True)
    return results


def format_table(results: list[dict]) -> str:
    base = results[0]
    L = [f"{'N':>9} {'shards':>7} {'samples/s':>10} {'×N0':>6} {'driver RSS MB':>14} {'×N0':>6} "
         f"{'commit ms first/last 10%':>25} {'stats s / MB':>14} {'verify s / MB':>14}"]
    for r in results:
        L.append(f"{r['n']:>9} {r['shards']:>7} {r['samples_per_s']:>10} {r['samples_per_s'] / base['samples_per_s']:>6.2f} "
                 f"{r['driver_peak_rss_mb']:>14} {r['driver_peak_rss_mb'] / base['driver_peak_rss_mb']:>6.2f} "
                 f"{r['commit_ms_first_shards']:>12} / {r['commit_ms_last_shards']:<10} "
                 f"{r['stats_s']:>6} / {r['stats_peak_rss_mb']:<6} {r['verify_s']:>6} / {r['verify_peak_rss_mb']:<6}")
    return "\n".join(L)


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "--job":
        print(json.dumps(one_job(int(a[1]), Path(a[2]), int(a[3]))))
    elif a[0] == "--inspect":
        print(json.dumps(one_inspect(a[1], a[2])))
