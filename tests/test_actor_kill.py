"""A stage actor killed mid-job (SIGKILL from outside, as a node's OOM killer would) loses no
sample: Ray restarts the actor and retries its batch, and the job ends with every id once and the
same rows as a run nobody disturbed."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.jobutil import ROOT, run_cli, write_job
from tests.test_resume import _rows, committed

pytestmark = pytest.mark.slow
STAGE = re.compile(r"MapWorker.*CpuPairStage|CpuPairStage.*MapWorker")


def _stage_actors(root_pid: int) -> list[psutil.Process]:
    """The CPU pair stage's actor processes under the job's driver (embedded Ray: the raylet and its
    workers descend from it; Ray's process title names the map worker and the stage class). Only
    this job's: another Ray on the machine is left alone."""
    found = []
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    for q in procs:
        try:
            if STAGE.search(" ".join(q.cmdline())):
                found.append(q)
        except psutil.Error:
            continue
    return found


def test_killed_stage_actor_loses_no_sample(vllm_url, tmp_path):
    cache = str(tmp_path / "llm_cache")
    job = write_job(tmp_path / "job.yaml", vllm_url, source__limit=6, source__repeats=3,
                    output__rows_per_shard=3, llm__cache_dir=cache,
                    stages__instruct={"actors": 1, "num_cpus": 0.25, "batch_size": 2},
                    stages__cpu={"actors": 1, "num_cpus": 0.25, "batch_size": 2})
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--out", str(out), "--no-progress", "-q"],
                         cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    killed, deadline = None, time.time() + 600
    try:
        while time.time() < deadline and killed is None:
            if p.poll() is not None:
                pytest.fail("the job finished before its stage actor could be killed")
            # mid-run: the LLM has answered some samples (their rows reach the stage) but not most,
            # so the stage has batches still to come and Ray must bring it back. (Waiting for a
            # committed shard let the stage finish first: stages run ahead of the commits, and
            # killing an idle actor proves nothing.)
            answered = len(list(Path(cache).glob("*/*.json")))
            actors = _stage_actors(p.pid)
            if 2 <= answered <= 10 and actors:
                killed = actors[0].pid
                n_done = len(committed(out))
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        assert killed is not None, "no CpuPairStage actor process seen"
        assert n_done < 6, "the kill must land mid-run"
        restarted = None                        # Ray brings the actor back in a new process
        while p.poll() is None and restarted is None:
            restarted = next((q.pid for q in _stage_actors(p.pid) if q.pid != killed), None)
            time.sleep(0.1)
        stdout, _ = p.communicate(timeout=900)
        assert restarted is not None, "no restarted stage actor was seen"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["shards_written"] == 6
    assert run_cli("verify", str(out)).returncode == 0

    clean = tmp_path / "clean"                 # same answer cache: the comparison is of the pipeline
    run_cli("run", str(job), "--out", str(clean), "--no-progress", "-q")
    a, b = _rows(out), _rows(clean)
    assert [r["id"] for r in a] == [r["id"] for r in b] and len({r["id"] for r in a}) == 18
    assert a == b
