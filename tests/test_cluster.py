"""A real two-node Ray cluster on this machine (`ray start --head` + a second `ray start
--address=...` node with its own resources); the job is submitted with `ray job submit` and one
stage is pinned to the second node through a custom resource, so work really crosses nodes."""
from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.jobutil import ROOT, run_cli, write_job

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_this_cluster(tmp: Path, port: int, timeout: float = 20) -> int:
    """Stop the processes of this cluster only — those whose command line names its temp dir or its
    GCS port, and their children (workers, agents, the submitted driver). `ray stop --force` would
    kill every Ray on the machine, a developer's own demo job included."""
    import psutil

    pat = re.compile(rf"{re.escape(str(tmp))}|:{port}\b")
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    family: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid in me or not any(pat.search(a) for a in (p.info["cmdline"] or [])):
                continue
            family |= {q.pid: q for q in (p, *p.children(recursive=True)) if q.pid not in me}
        except psutil.Error:
            continue
    for q in family.values():
        try:
            q.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(family.values()), timeout=timeout)
    for q in alive:
        try:
            q.kill()
        except psutil.Error:
            pass
    return len(family)


@pytest.fixture
def two_node_cluster(tmp_path):
    port, dash = _free_port(), _free_port()
    # Ray 2.60 turns token authentication on for `ray start --head`; every node, the job client
    # and the driver share one token, as on a real cluster.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # Ray's unix socket paths must stay under ~107 characters: pytest's tmp_path is too deep.
    tmp = Path(tempfile.mkdtemp(prefix="pf-ray-", dir="/tmp"))

    def ray(*args, check=True):
        return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=300, check=check)

    def own_ports():
        # Ray's fixed defaults (agent 52365, client server 10001) collide with any other Ray on the
        # machine, e.g. a developer's demo job: the head's job agent then never comes up.
        return [f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}"]

    ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--temp-dir={tmp}", *own_ports(),
        "--resources", json.dumps({"head_node": 1}))
    try:
        ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=2", *own_ports(),
            "--resources", json.dumps({"worker_node": 1}))
        nodes = subprocess.run([sys.executable, "-c", "import ray, json; ray.init(address='auto', logging_level='ERROR'); "
                                "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))"],
                               env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True, text=True, timeout=120)
        alive = json.loads(nodes.stdout.strip().splitlines()[-1])
        assert len(alive) == 2 and sum("worker_node" in r for r in alive) == 1, nodes.stdout + nodes.stderr
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_this_cluster(tmp, port)
        shutil.rmtree(tmp, ignore_errors=True)


def test_job_submitted_to_two_node_cluster(two_node_cluster, vllm_url, tmp_path):
    address, env = two_node_cluster
    out = tmp_path / "out"
    job = write_job(ROOT / f".pytest-cluster-job-{os.getpid()}.yaml", vllm_url, source__limit=3,
                    stages__filter={"actors": 1, "num_cpus": 0.25, "batch_size": 4, "resources": {"worker_node": 0.5}},
                    stages__cpu={"actors": 1, "num_cpus": 0.25, "batch_size": 4, "resources": {"head_node": 0.5}})
    try:
        # the head's job agent comes up some time after `ray start` returns (late on a loaded
        # machine); until then a submission is refused before anything runs, so it is safe to retry
        deadline = time.monotonic() + 180
        while True:
            p = subprocess.run(
                [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
                 "--", "python", "-m", "pipeline.cli", "run", job.name, "--out", str(out), "--no-progress"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent to submit job" not in p.stderr + p.stdout or time.monotonic() > deadline:
                break
            time.sleep(5)
    finally:
        job.unlink(missing_ok=True)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-3000:]
    assert "succeeded" in (p.stdout + p.stderr).lower()
    assert run_cli("verify", str(out)).returncode == 0
    s = json.loads(run_cli("stats", str(out), "--json").stdout)
    assert s["samples"] == 3
