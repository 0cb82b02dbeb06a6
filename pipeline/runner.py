"""Run a job: the driver holds counters per shard, never samples; workers plan, make and write.

    1. resolve the config, write it beside the output, check the output belongs to this job
    2. index the source (one cheap pass); drop shards already committed; delete what a killed run left
    3. start or join Ray (an embedded one gets room for every pool); refuse a job whose actor pools
       cannot fit the cluster
    4. launch the vLLM server when the config asks for one (log kept in OUT/logs/)
    5. quantile filter rules: calibrate thresholds on the job's first samples (OUT/calibration.json)
    6. shard numbers → PlanShards → stages → write_parts on the workers; the driver counts the rows
       each shard has received, and when a shard is whole a compaction task makes its final files
       and the driver writes its commit record (O(1) per shard)
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from pipeline import __version__
from pipeline.config import REPO_ROOT, JobConfig, JobError
from pipeline import faults
from pipeline.console import Console
from pipeline.faults import retry_call
from pipeline.plan import job_index, n_samples, n_shards, plan_shard, shard_range
from pipeline.shards import TMP, Manifest, as_store, compact_shard
from pipeline.stages.io import CALIBRATION_DIR, PlanShards, save_calibration, write_parts
# Imported here, not lazily after ray.init: inside a `ray job submit` driver with an editable install,
# a later import of pipeline.stages resolved to the install's tree instead of the job's working dir
# and then failed to import the working dir's pipeline.grounding submodules.
from pipeline.stages import CHAIN, FilterStage, JudgeStage
from pipeline.llm.backends import OpenAIServerBackend
from pipeline.llm.server import ServerWatch, VLLMServer      # (the same: it is used after ray.init)
from pipeline.storage import Store

log = logging.getLogger("pairforge")


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


@contextlib.contextmanager
def llm_server(cfg: JobConfig, log_dir: Path):
    """The job's LLM server URL (None for in-process backends), watched while the block runs."""
    with llm_service(cfg, log_dir) as (url, _):
        yield url


@contextlib.contextmanager
def llm_service(cfg: JobConfig, log_dir: Path, on_change=None):
    """(URL, ServerWatch) of the job's LLM server, or (None, None) for in-process backends.

    A server given by URL is waited for (bounded by llm.wait_s, saying what is being waited for),
    then watched. Without a URL the job launches one from the LLM environment and restarts it when
    it dies (llm.launch.restarts). ``on_change`` gets the watch's state for the progress display."""

    llm = cfg.llm
    if llm.backend != "vllm-openai":
        yield None, None
        return
    with served_model("LLM server", llm.url, llm.api_key, llm.wait_s, llm.model, llm.launch, log_dir / "vllm_server.log",
                      on_change=on_change) as got:
        yield got


@contextlib.contextmanager
def judge_service(cfg: JobConfig, log_dir: Path, on_change=None):
    """(URL, ServerWatch) of the job's VLM judge server (judge.enabled), or (None, None): given by
    judge.url and watched, or launched from judge.launch (log OUT/logs/judge_server.log) and
    restarted when it dies, like the instruction LLM's."""
    jc = cfg.judge
    if not jc.enabled:
        yield None, None
        return
    launch = jc.launch.model_copy()
    # two images per request; guided JSON without free whitespace (a sampled judge otherwise pads
    # its answer with newlines and runs into max_tokens): unless the job's extra_args say otherwise
    if not any(a.startswith("--limit-mm-per-prompt") for a in launch.extra_args):
        launch.extra_args = ["--limit-mm-per-prompt", '{"image": 2}', *launch.extra_args]
    if not any(a.startswith("--structured-outputs-config") for a in launch.extra_args):
        launch.extra_args = ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}', *launch.extra_args]
    with served_model("judge server", jc.url, jc.api_key, jc.wait_s, jc.model, launch, log_dir / "judge_server.log",
                      field="judge", kv_cache_bytes=int(jc.launch.kv_cache_gb * 2**30), on_change=on_change) as got:
        yield got


@contextlib.contextmanager
def served_model(what: str, url: str | None, api_key: str | None, wait_s: float, served_name: str, launch, log_path: Path,
                 field: str = "llm", kv_cache_bytes: int | None = 1 << 30, on_change=None):
    """A model behind an OpenAI-compatible server: waited for and watched when ``url`` is given,
    else launched from ``launch`` (python, model_dir, port, ...) and restarted when it dies."""
    if url:
        name = f"{what} {url} ({field}.url)"
        wait_for_server(name, url, api_key, wait_s)
        with ServerWatch(name, lambda: OpenAIServerBackend.answers(url, api_key, timeout_s=5), on_change=on_change) as watch:
            yield url, watch
        return

    def local(p: str) -> str:
        return p if os.path.isabs(p) else str(REPO_ROOT / p)

    py, model_dir = local(launch.python), local(launch.model_dir)
    for what_field, p in ((f"{field}.launch.python", py), (f"{field}.launch.model_dir", model_dir)):
        if not os.path.exists(p):
            raise JobError(f"{what_field}: {p} not found — run deploy/setup_llm_env.sh first, "
                           f"or set {field}.url to a running server")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    srv = VLLMServer(python=py, model_dir=model_dir, served_name=served_name,
                     log_path=str(log_path), port=launch.port,
                     startup_timeout_s=launch.startup_timeout_s, extra_args=launch.extra_args,
                     max_model_len=launch.max_model_len, kv_cache_bytes=kv_cache_bytes)
    with srv:
        log.info("%s (vLLM) ready at %s in %.0fs (log: %s)", what, srv.url, time.time() - t0, log_path)
        with ServerWatch(f"{what} {srv.url} (launched by the job)", srv.healthy, server=srv,
                         restarts=launch.restarts, on_change=on_change) as watch:
            yield srv.url, watch


def wait_for_server(name: str, url: str, api_key: str | None, wait_s: float) -> None:
    """Block until the server lists its models; JobError naming it after ``wait_s`` seconds."""
    from pipeline.faults import backoff_s
    t0, attempt = time.monotonic(), 0
    while True:
        try:
            OpenAIServerBackend.list_models(url, api_key=api_key, timeout_s=10)
            if attempt:
                log.warning("%s is up after %.0fs", name, time.monotonic() - t0)
            return
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
        down = time.monotonic() - t0
        if down >= wait_s:
            raise JobError(f"{name} did not answer for {down:.0f}s (llm.wait_s={wait_s:g}): {why}. "
                           "Start it, or leave llm.url empty to let the job launch its own.")
        pause = min(backoff_s(attempt, 1.0, 15.0), wait_s - down)
        log.warning("waiting for %s: %s; next try in %.0fs (gives up after %.0fs)", name, why, pause, wait_s)
        attempt += 1
        time.sleep(pause)


def init_ray(cfg: JobConfig, tasks: set[str] | None = None):
    import ray

    if ray.is_initialized():
        return
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.ray.address or None, log_to_driver=True)
    else:
        init_local_ray(num_cpus=cfg.ray.num_cpus or embedded_cpus(cfg, tasks), include_dashboard=False,
                       log_to_driver=True, logging_level=logging.WARNING)


def init_local_ray(**kwargs) -> None:
    """An embedded Ray for this machine alone: every listener it opens (GCS, raylet, object
    manager, workers, dashboard and runtime-env agents) on 127.0.0.1. Ray turns a loopback node
    address into the machine's network address and then binds its gRPC servers on every
    interface, unless its single-machine mode is on: that mode, for ray.init and for the
    processes it starts (they read it from the environment), and only while they start."""
    import ray
    from ray._private import ray_constants
    env, flag = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(_node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag
        if env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = env


def embedded_cpus(cfg: JobConfig, tasks: set[str] | None) -> int:
    """Logical CPUs for an embedded Ray: every pool's actors at once (Ray Data waits for them all)
    plus room for the planner, writer and compaction tasks. More than the cores is fine: the stages
    mostly wait on the LLM server."""
    import math

    from pipeline.resources import pool_specs, requirements
    need = requirements(pool_specs(cfg, tasks if tasks is not None else set(cfg.tasks)))["CPU"]
    return max(4, 2 * (os.cpu_count() or 1), math.ceil(need + 1.5))


def _res(cfg: JobConfig, stage):
    return cfg.stages.for_stage(stage.resources_key)


def _block(cfg: JobConfig) -> int:
    """Rows per block between stages: the smallest batch of the light stages, so they overlap."""
    return max(1, min(_res(cfg, s).batch_size for s in CHAIN if s.resources_key in ("instruct", "load", "cpu", "filter")))


def add_stages(ds, cfg: JobConfig, tasks: set[str], chain: tuple | None = None):
    """The stage chain as one actor pool per stage this job's tasks need."""
    from ray.data import ActorPoolStrategy

    cfg_dict = cfg.model_dump(mode="json")
    for stage in chain or CHAIN:
        if not stage.needed(tasks) or not stage.enabled(cfg):
            continue
        res = _res(cfg, stage)
        mem = int(res.memory_gb * 2**30) or None
        ds = ds.map_batches(stage, fn_constructor_kwargs={"cfg": cfg_dict}, batch_size=res.batch_size,
                            batch_format="pyarrow", compute=ActorPoolStrategy(size=res.actors), num_cpus=res.num_cpus,
                            num_gpus=res.num_gpus or None, memory=mem, resources=res.resources or None)
    return ds


def build_dataset(cfg: JobConfig, rows: list[dict], chain: tuple | None = None):
    """A small in-memory list of flow rows through the chain (tests, the calibration pass)."""
    import ray
    from pipeline.schema import flow_table

    _quiet_ray_data()
    table = flow_table(rows)
    block = _block(cfg)
    ds = ray.data.from_arrow([table.slice(i, block) for i in range(0, table.num_rows, block)])
    return add_stages(ds, cfg, {r["task"] for r in rows}, chain)


def _quiet_ray_data():
    from ray.data import DataContext
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    # the high-memory detector prints a paragraph every 30 s when a stage's tasks hold a few GB,
    # which model-holding stages always do; our own progress line says where the job is
    ctx.issue_detectors_config.detectors = []


def _local_dir(store: Store, name: str, cfg: JobConfig) -> Path:
    """A folder on this machine for what cannot live in an object store (server logs, the LLM
    answer cache): inside the output when it is local, else under the system temp folder."""
    if store.local:
        return store.local_path(name)
    return Path(tempfile.gettempdir()) / "pairforge" / f"{cfg.name}-{cfg.config_hash()}" / name


def run_job(cfg: JobConfig, out, *, progress: bool = True, chain: tuple | None = None,
            _stats: dict | None = None, quiet_logs: bool = True) -> dict:
    """``chain``: other stages than the job's (Python callers only: the scale benchmark's stand-ins;
    no job file can choose it). ``_stats``: filled with the driver's commit times per shard.
    ``quiet_logs``: Ray's and the actors' output to OUT/logs/ instead of the terminal
    (pipeline/console.py); the summary names the files."""
    from pipeline.storage import check_apart    # before anything is written: output and source apart
    check_apart(cfg.source.path if cfg.source.kind != "demo" else None, out)
    store = as_store(out)
    store.mkdirs()
    # 1. resolved config beside the output; the cache defaults to the output folder
    if cfg.llm.cache and not cfg.llm.cache_dir:
        cfg.llm.cache_dir = str(_local_dir(store, "llm_cache", cfg).resolve())
    import yaml
    store.write_text("job.resolved.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    # 2. index, resume
    t_index = time.time()
    index = job_index(cfg)
    total, n_sh = n_samples(cfg, index), n_shards(cfg, index)
    log.info("source indexed: %d rows → %d samples in %d shards (%.1fs)", index.n_rows, total, n_sh, time.time() - t_index)
    manifest = Manifest(store)
    manifest.init(config_hash=cfg.config_hash(), job_name=cfg.name, n_samples=total, n_shards=n_sh,
                  rows_per_shard=cfg.output.rows_per_shard)
    if index.caption_issues:
        log.warning("captions.jsonl: %s", index.caption_issues)
        if manifest.data.get("caption_issues") != index.caption_issues:
            manifest.data["caption_issues"] = index.caption_issues      # `pairforge stats` shows them
            store.write_json("manifest.json", manifest.data)
    removed = manifest.clean_uncommitted()
    if removed:
        log.info("removed %d file(s) left uncommitted by an earlier run", len(removed))
    done = manifest.committed()
    pending = [k for k in range(n_sh) if k not in done]
    expected = {k: len(shard_range(cfg, index, k)) for k in pending}
    summary = {"samples": total, "shards": n_sh, "shards_skipped": len(done), "samples_run": sum(expected.values())}
    if not pending:
        log.info("all %d shards already committed in %s; nothing to do", n_sh, store.url())
        return summary
    t0 = time.time()
    tasks = set(cfg.tasks) | index.source_tasks
    keep_candidates = cfg.output.keep_candidates == "all"
    committer = Committer(store, manifest, expected, cfg.output.write_rejects, keep_candidates)
    # 3. Ray, and the pools checked against it before anything is started; 4. LLM server,
    # 5. calibration, 6. the chain into shards
    log_dir = _local_dir(store, "logs", cfg)
    # Ray's and vLLM's own lines to OUT/logs/, one progress display per pass on the terminal
    with Console(log_dir, enabled=quiet_logs) as console:
        init_ray(cfg, tasks)
        console.hook_ray()
        _check_fits(cfg, tasks)
        display, watch, jwatch = _Display(), None, None
        try:
            with llm_service(cfg, log_dir, on_change=display.llm) as (url, watch), \
                    judge_service(cfg, log_dir, on_change=display.judge) as (judge_url, jwatch):
                if url:
                    cfg.llm.url = url
                if judge_url:
                    cfg.judge.url = judge_url
                _quiet_ray_data()
                if watch is not None:       # the servers' health from the first display on
                    display.post["llm"] = watch.state
                if jwatch is not None:
                    display.post["judge"] = jwatch.state
                calibrated = calibrate(cfg, store, index, pending, tasks, progress, display, console.stream)
                # the pass that makes the shards: one display, whatever datasets it runs
                display.bar = bar = _bar(summary["samples_run"], progress, "generate", console.stream)
                display.update(accepted=0, rejected=0, shards=f"{len(done)}/{n_sh}")
                # writers are Ray tasks (as many as there is room for); one killed mid-write is retried
                writer = dict(fn_kwargs=dict(out=store.url(), job_name=cfg.name, config_hash=cfg.config_hash(),
                                             code_version=code_version(), rows_per_shard=cfg.output.rows_per_shard,
                                             keep_candidates=keep_candidates),
                              batch_format="pyarrow", batch_size=None, num_cpus=0.25, max_retries=10)
                import ray
                passes = []
                if calibrated:          # samples the calibration pass made: judge them only
                    ds = ray.data.read_parquet(store.path(CALIBRATION_DIR), filesystem=store.fs, schema=None)
                    passes.append(add_stages(ds, cfg, tasks, chain=(FilterStage, JudgeStage)).map_batches(write_parts, **writer))
                ds = ray.data.from_items([{"shard": k} for k in pending])
                ds = ds.map_batches(PlanShards, fn_constructor_kwargs=dict(cfg=cfg.model_dump(mode="json"), index=index,
                                                                           skip=sorted(calibrated), block=_block(cfg)),
                                    batch_size=max(1, _block(cfg) // cfg.output.rows_per_shard), batch_format="pyarrow",
                                    num_cpus=0.25)
                passes.append(add_stages(ds, cfg, tasks, chain).map_batches(write_parts, **writer))
                for ds in passes:
                    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                        for part in batch.to_pylist():
                            committer.add(part)
                            bar.update(part["rows"])
                        committer.harvest()
                        display.update(accepted=committer.accepted, rejected=committer.rejected,
                                       shards=f"{len(done) + len(committer.committed_now)}/{n_sh}")
                committer.finish()
                bar.close()
        except Exception as e:
            _stop_on_world_failure(e, committer, n_sh - len(done), jwatch if jwatch is not None and jwatch.error else watch)
            raise
    committed_now = set(committer.committed_now)
    missing = {k: v - committer.arrived[k] for k, v in expected.items() if k not in committed_now}
    if missing:
        raise RuntimeError(f"shards {sorted(missing)} did not receive all their rows: {missing}")
    store.delete_dir(TMP)
    if manifest.complete:
        from pipeline.shards import totals_of
        manifest.mark_complete(totals_of(manifest))
    summary.update(seconds=round(time.time() - t0, 2), shards_written=len(committer.committed_now),
                   accepted=committer.accepted, rejected=committer.rejected, output=store.url(),
                   logs=str(log_dir), log_files=console.paths, worker_log_lines=console.worker_lines,
                   worker_warnings=console.worker_warnings)
    if _stats is not None:
        _stats["commit_ms"] = committer.commit_ms
    return summary


def _stop_on_world_failure(e: Exception, committer: "Committer", n_pending: int, watch=None) -> None:
    """A transient failure that outlived its retries (pipeline/faults.py) ends the job with a message
    naming the cause. Shards already whole are still committed; the rest stay uncommitted and the
    rerun makes them. Any other exception is left to propagate as it is."""
    from pipeline.faults import find_world_failure
    why = find_world_failure(e)
    if why is None:
        return
    try:
        committer.finish()
    except Exception as e2:             # the world may still be failing: those shards wait for the rerun
        log.warning("could not commit the shards already whole: %s", e2)
    if watch is not None and watch.error:
        why += f"\n({watch.error})"
    left = n_pending - len(committer.committed_now)
    raise JobStopped(f"the job stopped: {why}\n{len(committer.committed_now)} shard(s) committed in this run, {left} "
                   "left uncommitted; rerun the same command once the cause is fixed to make only those.") from None


class JobStopped(JobError):
    """The world failed for longer than the retries last; what was whole is committed (exit 3)."""


class _Display:
    """The progress bar's postfix: the driver's counters plus the LLM server's health, which the
    watch thread updates between batches (when no batch arrives, e.g. during an outage)."""

    def __init__(self):
        self.bar = None
        self.post: dict = {}

    def update(self, **kw) -> None:
        self.post.update(kw)
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix(self.post, refresh=True)

    def llm(self, state: str) -> None:
        self.update(llm=state)

    def judge(self, state: str) -> None:
        self.update(judge=state)


def _check_fits(cfg: JobConfig, tasks: set[str]) -> None:
    """Ray Data waits without end for pool actors it cannot place: refuse such a job up front."""
    from pipeline.resources import check_fits, job_cluster_nodes, pool_specs
    nodes, against = job_cluster_nodes()
    problems = check_fits(pool_specs(cfg, tasks), nodes)
    if problems:
        raise JobError(f"the job's actor pools do not fit {against} (`pairforge plan JOB.yaml` lists them):\n  "
                       + "\n  ".join(problems))


class Committer:
    """The driver's side of the data plane: per pending shard, the rows arrived and the part files
    that hold them. A whole shard goes to a compaction task on a worker; when it returns, the commit
    record is written. Memory: the shards in flight, never rows."""

    MAX_IN_FLIGHT = 64

    def __init__(self, store: Store, manifest: Manifest, expected: dict[int, int], write_rejects: bool,
                 keep_candidates: bool = False):
        self.store, self.manifest, self.expected, self.write_rejects = store, manifest, expected, write_rejects
        self.keep_candidates = keep_candidates
        self.arrived: Counter = Counter()
        self.parts: dict[int, list[str]] = {}
        self.running: dict = {}                 # compaction future → shard
        self.committed_now: list[int] = []
        self.accepted = self.rejected = 0
        self.commit_ms: list[float] = []        # driver time per commit record (the benchmark reads it)

    def add(self, part: dict) -> None:
        k = part["shard"]
        self.parts.setdefault(k, []).append(part["part"])
        self.arrived[k] += part["rows"]
        self.accepted += part["accepted"]
        self.rejected += part["rows"] - part["accepted"]
        if self.arrived[k] > self.expected[k]:
            raise RuntimeError(f"shard {k} received {self.arrived[k]} rows, {self.expected[k]} expected")
        if self.arrived[k] == self.expected[k]:
            fut = _compact.remote(self.store.url(), k, self.parts.pop(k), self.expected[k], self.write_rejects,
                                  self.keep_candidates)
            self.running[fut] = k
            if len(self.running) >= self.MAX_IN_FLIGHT:
                self.harvest(wait=1)

    def harvest(self, wait: int = 0) -> None:
        import ray
        if not self.running:
            return
        ready, _ = ray.wait(list(self.running), num_returns=max(wait, 1) if wait else len(self.running),
                            timeout=None if wait else 0)
        for fut in ready:
            k = self.running.pop(fut)
            entry = ray.get(fut)
            t = time.perf_counter()
            retry_call(lambda: self.manifest.commit(k, entry), f"writing the commit record of shard {k}")
            self.commit_ms.append((time.perf_counter() - t) * 1000)
            self.store.delete_dir(f"{TMP}/shard-{k:05d}")
            self.committed_now.append(k)
            faults.inject("commit", [entry], "after")      # test hook: a driver killed between commits

    def finish(self) -> None:
        while self.running:
            self.harvest(wait=1)


def _compact_fn(out: str, k: int, parts: list[str], expected: int, write_rejects: bool,
                keep_candidates: bool = False) -> dict:
    return retry_call(lambda: compact_shard(Store(out), k, parts, expected, write_rejects, keep_candidates),
                      f"compacting shard {k} in {out}")


class _LazyRemote:
    """ray.remote applied on first use, so importing the runner does not import ray."""

    def __init__(self, fn, **opts):
        self.fn, self.opts, self._r = fn, opts, None

    def remote(self, *a, **kw):
        if self._r is None:
            import ray
            self._r = ray.remote(**self.opts)(self.fn)
        return self._r.remote(*a, **kw)


_compact = _LazyRemote(_compact_fn, num_cpus=0.25, max_retries=10)


def calibrate(cfg: JobConfig, store: Store, index, pending: list[int], tasks: set[str], progress: bool = True,
              display: "_Display | None" = None, stream=None) -> set[int]:
    """Quantile rules (``keep_top``) need thresholds: run the chain with the filters in score-only
    mode over the first ``filters.calibration_samples`` samples of each task, take the quantile of
    all their candidates' scores, save them to OUT/calibration.json and into ``cfg.filters.calibrated``.
    A rerun (resume) reuses the file, so its decisions are the same as the first run's.

    The calibration rows themselves (all candidates) are written by workers under .tmp/calibration,
    and their sample indices returned, so the main pass judges them instead of making them again.
    The driver holds only their scores: at most tasks × calibration_samples rows' worth."""
    import numpy as np

    from filters.config import quantile_threshold

    fc, jc = cfg.filters, cfg.judge
    if not fc.needs_calibration() and not jc.needs_calibration():
        return set()
    if store.exists("calibration.json"):
        saved = store.read_json("calibration.json")
        if saved.get("config_hash") == cfg.config_hash():
            fc.calibrated = saved["thresholds"]
            if jc.needs_calibration():
                jc.calibrated = saved.get("judge_thresholds") or {}
            log.info("quantile thresholds from %s", store.url("calibration.json"))
            return set()
    # the first N live samples of each task, planned shard by shard until every task has its N
    per_task: dict[str, list[dict]] = {}
    quota = fc.calibration_samples
    for k in pending:
        for r in plan_shard(cfg, index, k):
            if r["status"] != "rejected" and len(per_task.setdefault(r["task"], [])) < quota:
                per_task[r["task"]].append(r)
        if len(per_task) >= len(cfg.tasks) and all(len(v) >= quota for v in per_task.values()):
            break
    sample = [r for rs in per_task.values() for r in rs]
    if not sample:
        return set()
    cal = cfg.model_copy(deep=True)
    cal.filters.enabled = False
    cal.judge.reject = False            # the judge scores the calibration samples, rejects none
    t0 = time.time()
    scores: dict[str, dict[str, list[float]]] = {}
    judged: dict[str, list[float]] = {}
    log.info("calibrating quantile filter thresholds on the first %d samples (score-only pass)", len(sample))
    bar = _bar(len(sample), progress, "calibrate", stream)
    if display is not None:             # the LLM server's health on this pass's display too
        display.bar = bar
        display.update()
    store.delete_dir(CALIBRATION_DIR)
    ds = build_dataset(cal, sample).map_batches(save_calibration, fn_kwargs={"out": store.url()},
                                                batch_format="pyarrow", batch_size=None, num_cpus=0.25, max_retries=10)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        got = batch.to_pylist()
        bar.update(len(got))
        for r in got:
            task = r["final_task"] or r["task"]
            judge = json.loads(r["judge"]).get("score") if r.get("judge") else None
            if judge is not None:
                judged.setdefault(task, []).append(judge)
            if not r["candidates_report"]:
                continue
            for c in json.loads(r["candidates_report"])["candidates"]:
                for m, v in c["scores"].items():
                    scores.setdefault(task, {}).setdefault(m, []).append(v)
    thresholds: dict[str, dict[str, dict[str, float]]] = {}
    for task, per in scores.items():
        for m, rule in fc.resolved_rules(task).items():
            if rule.keep_top is None or not per.get(m):
                continue
            thresholds.setdefault(task, {})[m] = quantile_threshold(m, per[m], rule.keep_top)
    judge_thresholds = {}
    for task, values in judged.items():   # the judge's weighted score: higher is better
        rule = jc.rule_for(task)
        if jc.needs_calibration() and rule.keep_top is not None:
            judge_thresholds[task] = {"min": float(np.quantile(values, 1 - rule.keep_top))}
    counts = {t: len(v) for t, v in per_task.items()}
    store.write_json("calibration.json", {"config_hash": cfg.config_hash(), "samples": counts, "thresholds": thresholds,
                                          "judge_thresholds": judge_thresholds})
    bar.close()
    fc.calibrated = thresholds
    if jc.needs_calibration():
        jc.calibrated = judge_thresholds
    log.info("calibrated quantile thresholds on %s in %.0fs → %s", counts, time.time() - t0, store.url("calibration.json"))
    return {r["sample_index"] for r in sample}


def _bar(total: int, enabled: bool, desc: str = "samples", stream=None):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, file=stream or sys.stderr,
                dynamic_ncols=True)
