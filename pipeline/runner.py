"""Run a job: plan → skip committed shards → (launch vLLM) → Ray Data actor chain → shards.

    1. resolve the config, write it beside the output, check the output belongs to this job
    2. build the plan; drop shards the manifest already has; clean files a killed run left
    3. launch the vLLM server when the config asks for one (log kept in OUT/logs/)
    4. start or join Ray; chain the stages with map_batches over actor pools
    5. quantile filter rules: calibrate thresholds on the job's first samples (OUT/calibration.json)
    6. stream results to the shard writer, which commits each shard when its last row arrives
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline import __version__
from pipeline.config import REPO_ROOT, JobConfig, JobError, dump_resolved
from pipeline.plan import build_plan
from pipeline.schema import flow_table
from pipeline.shards import Manifest, ShardWriter
# Imported here, not lazily after ray.init: inside a `ray job submit` driver with an editable install,
# a later import of pipeline.stages resolved to the install's tree instead of the job's working dir
# and then failed to import the working dir's pipeline.grounding submodules.
from pipeline.stages import CHAIN, FilterStage

log = logging.getLogger("pairforge")


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


@contextlib.contextmanager
def llm_server(cfg: JobConfig, out: Path):
    """Launch a vLLM server from the LLM environment when the job names no URL; yields its URL."""
    llm = cfg.llm
    if llm.backend != "vllm-openai" or llm.url:
        yield llm.url
        return
    from pipeline.llm.server import VLLMServer

    def local(p: str) -> str:
        return p if os.path.isabs(p) else str(REPO_ROOT / p)

    py, model_dir = local(llm.launch.python), local(llm.launch.model_dir)
    for what, p in (("llm.launch.python", py), ("llm.launch.model_dir", model_dir)):
        if not os.path.exists(p):
            raise JobError(f"{what}: {p} not found — run deploy/setup_llm_env.sh first, "
                                    "or set llm.url to a running server")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    srv = VLLMServer(python=py, model_dir=model_dir, served_name=llm.model,
                     log_path=str(out / "logs" / "vllm_server.log"), port=llm.launch.port,
                     startup_timeout_s=llm.launch.startup_timeout_s, extra_args=llm.launch.extra_args,
                     max_model_len=llm.launch.max_model_len)
    with srv:
        log.info("vLLM server ready at %s in %.0fs (log: %s)", srv.url, time.time() - t0, out / "logs" / "vllm_server.log")
        yield srv.url


def init_ray(cfg: JobConfig):
    import ray

    if ray.is_initialized():
        return
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.ray.address or None, log_to_driver=True)
    else:
        # Stages mostly wait on the LLM server, so more logical CPUs than cores keeps them all alive.
        ray.init(num_cpus=cfg.ray.num_cpus or max(4, 2 * (os.cpu_count() or 1)), include_dashboard=False,
                 log_to_driver=True, logging_level=logging.WARNING)


def build_dataset(cfg: JobConfig, rows: list[dict], chain: tuple | None = None):
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    chain = chain or CHAIN

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    table = flow_table(rows)
    block = max(1, min(s.batch_size for s in (cfg.stages.instruct, cfg.stages.load, cfg.stages.cpu, cfg.stages.filter)))
    ds = ray.data.from_arrow([table.slice(i, block) for i in range(0, table.num_rows, block)])
    cfg_dict = cfg.model_dump(mode="json")
    tasks = {r["task"] for r in rows}
    for stage in chain:
        if not stage.needed(tasks):
            continue
        res = getattr(cfg.stages, stage.resources_key)
        ds = ds.map_batches(stage, fn_constructor_kwargs={"cfg": cfg_dict}, batch_size=res.batch_size,
                            batch_format="pyarrow", compute=ActorPoolStrategy(size=res.actors), num_cpus=res.num_cpus,
                            num_gpus=res.num_gpus or None, resources=res.resources or None)
    return ds


def run_job(cfg: JobConfig, out: Path, *, progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # 1. resolved config beside the output; the cache defaults to the output folder
    if cfg.llm.cache and not cfg.llm.cache_dir:
        cfg.llm.cache_dir = str((out / "llm_cache").resolve())
    dump_resolved(cfg, out / "job.resolved.yaml")
    # 2. plan and resume
    rows = build_plan(cfg)
    n_shards = max(1, math.ceil(len(rows) / cfg.output.rows_per_shard))
    manifest = Manifest(out)
    manifest.init(config_hash=cfg.config_hash(), job_name=cfg.name, n_samples=len(rows), n_shards=n_shards,
                  rows_per_shard=cfg.output.rows_per_shard)
    removed = manifest.clean_uncommitted()
    if removed:
        log.info("removed %d shard file(s) left uncommitted by an earlier run", len(removed))
    done = manifest.committed()
    pending = [r for r in rows if r["sample_index"] // cfg.output.rows_per_shard not in done]
    summary = {"samples": len(rows), "shards": n_shards, "shards_skipped": len(done), "samples_run": len(pending)}
    if not pending:
        log.info("all %d shards already committed in %s; nothing to do", n_shards, out)
        return summary
    expected: dict[int, int] = {}
    for r in pending:
        k = r["sample_index"] // cfg.output.rows_per_shard
        expected[k] = expected.get(k, 0) + 1
    writer = ShardWriter(out, manifest, expected, cfg.output.rows_per_shard, job_name=cfg.name,
                         config_hash=cfg.config_hash(), code_version=code_version(),
                         write_rejects=cfg.output.write_rejects)
    # Rows rejected at plan time (bad source rows) need no stage: they go straight to the writer.
    pre = [r for r in pending if r["status"] == "rejected"]
    live = [r for r in pending if r["status"] != "rejected"]
    writer.add(pre)
    t0 = time.time()
    # 3. LLM server, 4. Ray chain, 5. stream into shards
    with llm_server(cfg, out) as url:
        if url:
            cfg.llm.url = url
        if live:
            init_ray(cfg)
            scored = calibrate(cfg, out, live, progress)
            bar = _bar(len(pending), progress)
            bar.update(len(pre))
            acc = rej = 0
            for batch in _main_batches(cfg, live, scored):
                got = batch.to_pylist()
                rej += sum(r["status"] == "rejected" for r in got)
                acc += sum(r["status"] != "rejected" for r in got)
                writer.add(got)
                bar.update(len(got))
                bar.set_postfix(accepted=acc, rejected=rej, shards=f"{len(manifest.committed())}/{n_shards}")
            bar.close()
    missing = {k: v - len(writer.buf.get(k, [])) for k, v in expected.items() if k not in writer.committed_now}
    if missing:
        raise RuntimeError(f"shards {sorted(missing)} did not receive all their rows: {missing}")
    summary.update(seconds=round(time.time() - t0, 2), shards_written=len(writer.committed_now))
    return summary


def _main_batches(cfg: JobConfig, live: list[dict], scored: list[dict]):
    """The main pass: samples the calibration pass already generated and scored only go through
    the filter stage (which reuses their stored scores); all others through the whole chain."""
    if scored:
        yield from build_dataset(cfg, scored, chain=(FilterStage,)).iter_batches(batch_format="pyarrow", batch_size=None)
    seen = {r["id"] for r in scored}
    rest = [r for r in live if r["id"] not in seen]
    if rest:
        yield from build_dataset(cfg, rest).iter_batches(batch_format="pyarrow", batch_size=None)


def calibrate(cfg: JobConfig, out: Path, live: list[dict], progress: bool = True) -> list[dict]:
    """Quantile rules (``keep_top``) need thresholds: run the chain with the filters in score-only
    mode over the first ``filters.calibration_samples`` samples of each task, take the quantile of
    all their candidates' scores, save them to OUT/calibration.json and into ``cfg.filters.calibrated``.
    A rerun (resume) reuses the file, so its decisions are the same as the first run's.

    Returns the calibration samples as the score-only pass left them (all candidates and their
    scores kept), so the main pass only has to judge them, not generate them again."""
    import numpy as np

    from filters.config import HIGHER_IS_BETTER

    fc = cfg.filters
    if not fc.needs_calibration():
        return []
    path = out / "calibration.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("config_hash") == cfg.config_hash():
            fc.calibrated = saved["thresholds"]
            log.info("quantile thresholds from %s", path)
            return []
    per_task: dict[str, list[dict]] = {}
    for r in live:
        if len(per_task.setdefault(r["task"], [])) < fc.calibration_samples:
            per_task[r["task"]].append(r)
    sample = [r for rs in per_task.values() for r in rs]
    cal = cfg.model_copy(deep=True)
    cal.filters.enabled = False
    t0 = time.time()
    scores: dict[str, dict[str, list[float]]] = {}
    log.info("calibrating quantile filter thresholds on the first %d samples (score-only pass)", len(sample))
    bar = _bar(len(sample), progress, desc="calibration")
    done: list[dict] = []
    for batch in build_dataset(cal, sample).iter_batches(batch_format="pyarrow", batch_size=None):
        got = batch.to_pylist()
        done += got
        bar.update(len(got))
        for r in got:
            if not r["candidates_report"]:
                continue
            task = r["final_task"] or r["task"]
            for c in json.loads(r["candidates_report"])["candidates"]:
                for m, v in c["scores"].items():
                    scores.setdefault(task, {}).setdefault(m, []).append(v)
    thresholds: dict[str, dict[str, dict[str, float]]] = {}
    for task, per in scores.items():
        for m, rule in fc.resolved_rules(task).items():
            if rule.keep_top is None or not per.get(m):
                continue
            if HIGHER_IS_BETTER[m]:
                thresholds.setdefault(task, {})[m] = {"min": float(np.quantile(per[m], 1 - rule.keep_top))}
            else:
                thresholds.setdefault(task, {})[m] = {"max": float(np.quantile(per[m], rule.keep_top))}
    counts = {t: len(v) for t, v in per_task.items()}
    path.write_text(json.dumps({"config_hash": cfg.config_hash(), "samples": counts, "thresholds": thresholds},
                               indent=1, sort_keys=True))
    bar.close()
    fc.calibrated = thresholds
    log.info("calibrated quantile thresholds on %s in %.0fs → %s", counts, time.time() - t0, path)
    return done


def _bar(total: int, enabled: bool, desc: str = "samples"):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
