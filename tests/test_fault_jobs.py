"""Faults cost time, never data: each fault is injected into a real job, which must end with no
`llm_error` or `stage_error` reject, every id exactly once, and the same rows as an undisturbed run
of the same job.

  * the job's own (launched) vLLM server SIGKILLed mid-job → the job restarts it;
  * a URL server unreachable for longer than one retry, then back → the stage waits for it;
  * a URL server that never comes back → exit 3 naming the server; the rerun completes it;
  * CUDA out-of-memory injected into the edit stage → the batch is halved;
  * a batch that fails once after mutating its rows → retried from the rows as they came in.

The LLM outages are made by a TCP proxy in front of the session's vLLM server, so the job sees a
real refused connection and the shared server keeps running. Runs compare against an undisturbed
run that replays the same LLM answer cache: the comparison is of the pipeline, not of the engine's
sampler.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.jobutil import ROOT, run_cli, write_job
from tests.test_resume import _rows, committed, row_diff

pytestmark = pytest.mark.slow

# four captions, two rows a shard: two shards, so an outage can leave one committed and one not
CAPTIONS = ["a red barn in a snowy field", "a bowl of green apples on a wooden table",
            "a sailboat on a calm lake at sunset", "a small white dog on a sofa"]
N_SHARDS = 2


class Proxy:
    """127.0.0.1:port → upstream. ``down()`` closes the listener and every open connection, so
    clients get a refused connection, as from a stopped server; ``up()`` listens on the same port."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = 0
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        s, self.listener = self.listener, None
        if s is not None:
            s.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            if self.listener is not s:
                c.close()
                return
            try:
                u = socket.create_connection(self.upstream)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


_CAPS: list[Path] = []


def _captions() -> Path:
    """One captions file for every job of the module: its path is part of the config hash."""
    if not _CAPS:
        import tempfile
        d = Path(tempfile.mkdtemp(prefix="pairforge-faults-"))
        (d / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
        _CAPS.append(d / "captions.txt")
    return _CAPS[0]


def _job(tmp_path: Path, url: str | None, cache: Path, name: str = "job.yaml", **over) -> Path:
    caps = _captions()
    # caption-only rows of the global task: the base-image stage generates their input image, so a
    # retry from mutated rows would take the generated image for a photo (the example)
    kw = dict(tasks={"global": 1.0}, source={"kind": "captions", "path": str(caps)}, llm__cache_dir=str(cache),
              diffusion={"steps": 4, "candidates": 2}, output__rows_per_shard=2,
              stages__instruct={"actors": 1, "num_cpus": 0.25, "batch_size": 2},
              stages__diffusion={"actors": 1, "num_cpus": 0.25, "batch_size": 4},
              retry={"attempts": 4, "base_s": 0.2, "max_s": 2})
    kw.update(over)
    job = write_job(tmp_path / name, url or "http://unused", **kw)
    if url is None:                                   # the job launches its own server
        import yaml
        d = yaml.safe_load(job.read_text())
        d["llm"].pop("url")
        job.write_text(yaml.safe_dump(d))
    return job


def _start(job: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--out", str(out), "--no-progress", "-q"],
                            cwd=ROOT, env=e, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _answered(cache: Path) -> int:
    return len(list(cache.glob("*/*.json")))


def _wait_answers(p: subprocess.Popen, cache: Path, n: int, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while _answered(cache) < n:
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"the job ended before the fault could be injected:\n{err[-3000:]}")
        assert time.time() < deadline, "no LLM answers arrived"
        time.sleep(0.1)


def _finish(p: subprocess.Popen, timeout: float = 900) -> tuple[str, str]:
    try:
        return p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def _check_clean(out: Path, n: int) -> list[dict]:
    rows = _rows(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == n and len(set(ids)) == n, "every id exactly once"
    bad = [(r["reject_reason"], r["reject_detail"]) for r in rows if r["reject_reason"] in ("llm_error", "stage_error")]
    assert not bad, f"a failure of the world was written as a reject: {bad}"
    assert run_cli("verify", str(out)).returncode == 0
    return rows


def _same_as_undisturbed(tmp_path: Path, job: Path, rows: list[dict], cache: Path, url: str) -> None:
    """An undisturbed run replaying a copy of the disturbed run's answers makes the same rows
    (against the session's server: where answers come from is not part of the job's hash)."""
    replay = tmp_path / "replay_cache"
    shutil.copytree(cache, replay)
    import yaml
    d = yaml.safe_load(job.read_text())
    d["llm"]["cache_dir"] = str(replay)
    d["llm"]["url"] = url
    j2 = tmp_path / "undisturbed.yaml"
    j2.write_text(yaml.safe_dump(d))
    clean = tmp_path / "undisturbed"
    run_cli("run", str(j2), "--out", str(clean), "--no-progress", "-q")
    b = _rows(clean)
    assert rows == b, row_diff(rows, b)


@pytest.fixture(scope="module")
def baseline(vllm_url, tmp_path_factory):
    """The undisturbed job, once: its rows, and its filled answer cache for the non-LLM faults."""
    d = tmp_path_factory.mktemp("baseline")
    cache = d / "llm_cache"
    job = _job(d, vllm_url, cache)
    run_cli("run", str(job), "--out", str(d / "out"), "--no-progress", "-q")
    return {"rows": _check_clean(d / "out", len(CAPTIONS)), "cache": cache, "dir": d}


def _with_baseline_cache(tmp_path: Path, baseline: dict, url: str, **over) -> Path:
    cache = tmp_path / "llm_cache"
    shutil.copytree(baseline["cache"], cache)
    return _job(tmp_path, url, cache, **over)


def test_url_server_down_longer_than_a_retry_then_back(vllm_url, tmp_path):
    proxy = Proxy(int(vllm_url.rsplit(":", 1)[1].split("/")[0]))
    cache = tmp_path / "llm_cache"
    job = _job(tmp_path, proxy.url, cache)
    out = tmp_path / "out"
    p = _start(job, out)
    try:
        _wait_answers(p, cache, 2)
        proxy.down()                                   # the first retry comes after 1 s, the next after 2 s …
        time.sleep(8)
        proxy.up()
        _, err = _finish(p)
    finally:
        proxy.down()
    assert p.returncode == 0, err[-4000:]
    assert "instruct: waiting for the LLM server" in err, "the stage never saw the outage"
    rows = _check_clean(out, len(CAPTIONS))
    _same_as_undisturbed(tmp_path, job, rows, cache, vllm_url)


def test_url_server_that_never_comes_back_stops_the_job_and_the_rerun_completes(vllm_url, tmp_path, baseline):
    proxy = Proxy(int(vllm_url.rsplit(":", 1)[1].split("/")[0]))
    cache = tmp_path / "llm_cache"
    job = _job(tmp_path, proxy.url, cache, llm__wait_s=12)
    out = tmp_path / "out"
    p = _start(job, out)
    try:
        _wait_answers(p, cache, 2)
        proxy.down()
        _, err = _finish(p)
        assert p.returncode == 3, err[-4000:]
        assert f"LLM server {proxy.url}" in err and "did not answer" in err and "rerun the same command" in err
        n_committed = len(committed(out))
        assert n_committed < N_SHARDS, "the outage must have left shards uncommitted"
        assert not (out / "data").exists() or all(
            int(f.stem.split("-")[1]) in {int(c.stem.split("-")[1]) for c in committed(out)}
            for f in (out / "data").glob("part-*.parquet")), "only committed shards have data files"
        proxy.up()
        r = run_cli("run", str(job), "--out", str(out), "--no-progress", "-q")
    finally:
        proxy.down()
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["shards_skipped"] == n_committed and summary["shards_written"] == N_SHARDS - n_committed
    rows = _check_clean(out, len(CAPTIONS))
    # the same samples as the undisturbed job (its LLM answers may differ: another cache)
    assert [r["id"] for r in rows] == [r["id"] for r in baseline["rows"]]


def test_killed_launched_server_is_restarted(vllm_url, tmp_path):
    cache = tmp_path / "llm_cache"
    job = _job(tmp_path, None, cache)
    out = tmp_path / "out"
    p = _start(job, out)
    try:
        _wait_answers(p, cache, 2)
        servers = [q for q in psutil.Process(p.pid).children(recursive=True)
                   if "vllm.entrypoints.openai.api_server" in " ".join(q.cmdline())]
        assert len(servers) == 1, servers
        old = servers[0].pid
        os.killpg(os.getpgid(old), signal.SIGKILL)      # the server and its engine process, as a crash
        _, err = _finish(p)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, err[-4000:]
    log = (out / "logs" / "vllm_server.log").read_text()
    assert log.count("$ ") == 2, "the server was started exactly twice"
    assert "restarting it on the same port" in err and "is back after" in err
    rows = _check_clean(out, len(CAPTIONS))
    _same_as_undisturbed(tmp_path, job, rows, cache, vllm_url)


def test_out_of_memory_and_a_batch_failing_after_mutating_its_rows(vllm_url, tmp_path, baseline):
    """Two faults through the hook (pipeline/faults.py) in one job, checked separately:
      * a batch of 2+ rows of the edit stage runs out of memory, twice over the job (four rows give
        at least two such batches however they are cut) → the batch is halved;
      * the base-image stage generates its rows' images, then fails once → retried from the rows as
        they came in (a retry from the mutated rows would take each generated image for a photo).
    The rows equal the undisturbed run's."""
    job = _with_baseline_cache(tmp_path, baseline, vllm_url)
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps([
        {"stage": "diffusion_edit", "kind": "oom", "times": 2, "min_rows": 2},
        {"stage": "diffusion_base", "when": "after", "kind": "error", "times": 1, "min_rows": 2}]))
    out = tmp_path / "out"
    r = run_cli("run", str(job), "--out", str(out), "--no-progress", "-q", env={"PAIRFORGE_TEST_FAULTS": str(spec)})
    assert len(list(tmp_path.glob("faults.json.fired-0-*"))) == 2, "the OOM fault fired twice"
    assert len(list(tmp_path.glob("faults.json.fired-1-*"))) == 1, "the mutate-then-fail fault fired once"
    rows = _check_clean(out, len(CAPTIONS))
    assert rows == baseline["rows"], row_diff(rows, baseline["rows"])
    assert "diffusion_edit: out of memory on" in r.stderr and "halving the batch" in r.stderr
    assert "diffusion_base: batch of" in r.stderr and "retrying row by row" in r.stderr
    bases = [json.loads(x["params"])["base"] for x in rows if x["params"] and json.loads(x["params"]).get("base")]
    assert bases and all(b.get("generated") for b in bases), bases
