"""Transient and permanent failures (pipeline/faults.py, pipeline/stages/base.py, the instruct stage's
server wait): fast tests of the mechanisms. The job-level fault tests, each against an undisturbed
run of the same job, are in tests/test_fault_jobs.py."""
from __future__ import annotations

import errno
import http.server
import json
from pathlib import Path
import threading
import time
import urllib.error

import pyarrow as pa
import pytest

from pipeline import faults
from pipeline.config import JobConfig
from pipeline.schema import flow_table
from pipeline.stages.base import Stage


def _oom():
    import torch
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")


@pytest.mark.parametrize("exc, kind", [
    (_oom(), "oom"),
    (RuntimeError("CUDA error: out of memory"), "oom"),
    (MemoryError(), "oom"),
    (ConnectionRefusedError(111, "Connection refused"), "transient"),
    (TimeoutError("timed out"), "transient"),
    (urllib.error.URLError(ConnectionRefusedError(111, "refused")), "transient"),
    (urllib.error.HTTPError("http://x", 503, "unavailable", {}, None), "transient"),
    (urllib.error.HTTPError("http://x", 429, "slow down", {}, None), "transient"),
    (OSError(errno.EIO, "I/O error"), "transient"),
    (OSError("When reading information for key 'a.png' in bucket 'b': AWS Error NETWORK_CONNECTION"), "transient"),
    (faults.TransientError("server down"), "transient"),
    # the sample's own defects: permanent
    (urllib.error.HTTPError("http://x", 400, "prompt too long", {}, None), None),
    (FileNotFoundError(errno.ENOENT, "no such file", "a.png"), None),
    (PermissionError(errno.EACCES, "denied"), None),
    (ValueError("invalid literal"), None),
    (KeyError("caption"), None),
    (RuntimeError("shape mismatch"), None),
])
def test_classify(exc, kind):
    assert faults.classify(exc) == kind


def test_world_failure_is_found_through_wrappers():
    try:
        try:
            raise faults.WorldFailure("LLM server http://127.0.0.1:1/v1 did not answer")
        except faults.WorldFailure as e:
            raise RuntimeError("ray wrapped it") from e
    except RuntimeError as outer:
        assert faults.find_world_failure(outer) == "LLM server http://127.0.0.1:1/v1 did not answer"
    # Ray sometimes hands back only the text
    assert faults.find_world_failure(RuntimeError(f"Traceback …\n{faults.MARKER} stage x: OOM\nmore")) == "stage x: OOM"
    assert faults.find_world_failure(RuntimeError("a plain bug")) is None


def test_retry_call_backs_off_then_names_the_cause(monkeypatch):
    sleeps = []
    monkeypatch.setattr(faults.time, "sleep", sleeps.append)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "Connection reset by peer")
        return "ok"
    assert faults.retry_call(flaky, "writing part", attempts=5, base_s=0.5, max_s=30) == "ok"
    assert sleeps == [0.5, 1.0]
    with pytest.raises(faults.WorldFailure, match="writing part: ConnectionResetError"):
        faults.retry_call(lambda: (_ for _ in ()).throw(ConnectionResetError(104, "reset")), "writing part",
                          attempts=3, base_s=0.5, max_s=0.75)
    assert sleeps[2:] == [0.5, 0.75]                      # capped
    with pytest.raises(ValueError):                      # permanent: no retry
        faults.retry_call(lambda: int("x"), "parsing", attempts=5)


# ---------------------------------------------------------------- the stage's retry rules

def _cfg(**retry) -> dict:
    return JobConfig(retry={"attempts": 3, "base_s": 0, "max_s": 0, **retry}).model_dump(mode="json")


def _batch(n: int) -> pa.Table:
    return flow_table([{"sample_index": i, "id": f"s{i}", "task": "color", "seed": i, "caption": f"caption {i}",
                        "status": "pending"} for i in range(n)])


class _Recorder(Stage):
    """Writes the row's caption into ``answer`` and records the batch sizes it was given."""
    name = "recorder"
    resources_key = "cpu"

    def setup(self):
        self.sizes: list[int] = []
        self.fail: list = []          # exceptions to raise, one per call, after mutating the rows

    def process(self, rows):
        self.sizes.append(len(rows))
        for r in rows:
            # a stage that trusts its input: a row seen twice would be marked twice
            assert r["answer"] is None, "the stage was given a row a failed attempt had already changed"
            r["answer"] = json.dumps({"from": r["caption"]})
        if self.fail:
            raise self.fail.pop(0)


def test_out_of_memory_halves_the_batch():
    st = _Recorder(_cfg())
    st.fail = [_oom(), _oom()]                            # 8 rows fail, then the first 4 fail
    out = st(_batch(8)).to_pylist()
    assert st.sizes == [8, 4, 2, 2, 4]
    assert [r["status"] for r in out] == ["pending"] * 8
    assert [json.loads(r["answer"])["from"] for r in out] == [f"caption {i}" for i in range(8)]


def test_a_retry_starts_from_the_rows_as_they_came_in():
    st = _Recorder(_cfg())
    st.fail = [RuntimeError("no known cause, after the rows were changed")]
    out = st(_batch(4)).to_pylist()
    # row by row, each from a fresh copy (the assert in process would fail on a mutated row)
    assert st.sizes == [4, 1, 1, 1, 1]
    assert all(r["status"] == "pending" for r in out)
    assert [json.loads(r["answer"])["from"] for r in out] == [f"caption {i}" for i in range(4)]


def test_a_bad_row_is_rejected_as_it_came_in_and_the_rest_go_on():
    class OneBad(_Recorder):
        def process(self, rows):
            super().process(rows)
            if any(r["sample_index"] == 2 for r in rows):
                raise KeyError("plan")

    st = OneBad(_cfg())
    out = st(_batch(4)).to_pylist()
    assert [r["status"] for r in out] == ["pending", "pending", "rejected", "pending"]
    assert out[2]["reject_reason"] == "stage_error" and out[2]["reject_stage"] == "recorder"
    assert out[2]["answer"] is None                       # not the failed attempt's half-done row


def test_transient_failure_is_retried_then_stops_the_job_never_a_reject():
    st = _Recorder(_cfg(attempts=3))
    st.fail = [ConnectionRefusedError(111, "Connection refused")]
    out = st(_batch(3)).to_pylist()
    assert st.sizes == [3, 3] and all(r["status"] == "pending" for r in out)

    st = _Recorder(_cfg(attempts=3))
    st.fail = [ConnectionRefusedError(111, "Connection refused")] * 3
    with pytest.raises(faults.WorldFailure, match="stage recorder: ConnectionRefusedError.*after 3 tries"):
        st(_batch(3))
    assert st.sizes == [3, 3, 3]

    st = _Recorder(_cfg(attempts=2))                      # out of memory on a single row: backoff, then stop
    st.fail = [_oom()] * 3
    with pytest.raises(faults.WorldFailure, match="OutOfMemoryError"):
        st(_batch(1))


def test_the_fault_hook_fires_the_given_number_of_times_across_processes(tmp_path, monkeypatch):
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps([{"stage": "recorder", "when": "after", "kind": "oom", "times": 2, "min_rows": 2}]))
    monkeypatch.setenv(faults.ENV, str(spec))
    st = _Recorder(_cfg())
    out = st(_batch(4)).to_pylist()
    assert st.sizes == [4, 2, 1, 1, 2]                    # 4 → OOM; 2 → OOM; 1, 1; then the other 2
    assert len(list(tmp_path.glob("faults.json.fired-*"))) == 2
    assert all(r["status"] == "pending" for r in out)
    monkeypatch.delenv(faults.ENV)
    st2 = _Recorder(_cfg())
    st2(_batch(4))
    assert st2.sizes == [4]


def test_the_fault_hook_skips_batches_then_kills_its_process(tmp_path):
    """``skip`` lets the first batches pass, counted across processes; ``kill`` is a SIGKILL of the
    process that hit it (what the actor-kill test relies on), which leaves its pid for the test."""
    import signal
    import subprocess
    import sys
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps([{"stage": "s", "kind": "kill", "skip": 2, "times": 1}]))
    code = ("import sys; from pipeline import faults; faults.inject('s', [{}], 'before'); print('passed')")
    env = {**__import__("os").environ, faults.ENV: str(spec), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True) for _ in range(4)]
    assert [r.returncode for r in runs] == [0, 0, -signal.SIGKILL, 0], [r.stderr[-500:] for r in runs]
    assert [r.stdout.strip() for r in runs] == ["passed", "passed", "", "passed"]
    assert int((tmp_path / "faults.json.fired-0-0").read_text()) > 0


# ---------------------------------------------------------------- the LLM client

class _Flaky(http.server.BaseHTTPRequestHandler):
    """An HTTP endpoint that answers with the status codes it is told (transport only: no LLM here)."""
    codes: list[int] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        code = self.codes.pop(0) if self.codes else 200
        body = (json.dumps({"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}]})
                if code == 200 else "overloaded")
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *a):
        pass


@pytest.fixture
def flaky_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


def test_openai_backend_marks_world_failures_transient(flaky_server):
    from pipeline.llm.backends import ChatRequest, OpenAIServerBackend
    from pipeline.llm.server import find_free_port
    url = f"http://127.0.0.1:{flaky_server.server_address[1]}/v1"
    rq = [ChatRequest(messages=[{"role": "user", "content": "hi"}], seed=1)]
    b = OpenAIServerBackend(url, "m", retries=0)
    for code, transient in ((503, True), (429, True), (400, False), (200, False)):
        _Flaky.codes = [code]
        res = b.generate(rq)[0]
        assert res.transient is transient, (code, res)
        assert (res.error is None) == (code == 200)
    dead = OpenAIServerBackend(f"http://127.0.0.1:{find_free_port()}/v1", "m", retries=0)
    res = dead.generate(rq)[0]
    assert res.transient and "connection" in res.error.lower()


def test_instruct_waits_for_the_server_then_asks_again(monkeypatch):
    """The server is down for the first two requests: the stage waits (health check) and gets every
    answer; with the server gone for good it raises WorldFailure naming the server, no reject."""
    from pipeline.llm.backends import ChatResult
    from pipeline.stages.instruct import InstructStage

    class Backend:
        name, model = "vllm-openai", "m"

        def __init__(self, down_calls):
            self.down_calls, self.calls = down_calls, 0

        def generate(self, reqs):
            self.calls += 1
            if self.calls <= self.down_calls:
                return [ChatResult(None, "connection error: [Errno 111] Connection refused", transient=True)] * len(reqs)
            return [ChatResult(f"answer {i}", None) for i in range(len(reqs))]

    health = {"up": False}
    from pipeline.llm import backends as B

    def list_models(url, api_key=None, timeout_s=10):
        if not health["up"]:
            raise ConnectionRefusedError(111, "Connection refused")
        return ["m"]
    monkeypatch.setattr(B.OpenAIServerBackend, "list_models", staticmethod(list_models))
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        health["up"] = len(sleeps) >= 3                    # back after three pauses
    monkeypatch.setattr("pipeline.stages.instruct.time.sleep", sleep)

    st = InstructStage.__new__(InstructStage)
    st.cfg = JobConfig(llm={"url": "http://127.0.0.1:9/v1", "wait_s": 300})
    st.llm, st.backend = st.cfg.llm, Backend(down_calls=2)
    from pipeline.llm.backends import ChatRequest
    reqs = [ChatRequest(messages=[{"role": "user", "content": str(i)}], seed=i) for i in range(3)]
    got = st._generate(reqs)
    assert [r.text for r in got] == ["answer 0", "answer 1", "answer 2"]
    assert sleeps[:3] == [1.0, 2.0, 4.0]                 # backoff while it was down

    st.backend = Backend(down_calls=10**9)
    health["up"] = False
    monkeypatch.setattr("pipeline.stages.instruct.time.sleep", lambda s: None)
    clock = iter(range(0, 10**6, 50))
    monkeypatch.setattr("pipeline.stages.instruct.time.monotonic", lambda: next(clock))
    with pytest.raises(faults.WorldFailure, match=r"LLM server http://127.0.0.1:9/v1 did not answer .*llm.wait_s=300"):
        st._generate(reqs)


def test_server_watch_restarts_a_dead_server_and_reports_its_state():
    from pipeline.llm.server import ServerWatch

    class Proc:
        def __init__(self, rc):
            self.rc = rc

        def poll(self):
            return self.rc

    class FakeServer:            # the process handling only; the real restart is in test_fault_jobs.py
        log_path = "server.log"

        def __init__(self):
            self.proc, self.starts = Proc(None), 0

        def stop(self):
            self.proc = None

        def start(self):
            self.starts += 1
            self.proc = Proc(None)

    srv, states = FakeServer(), []
    w = ServerWatch("LLM server X", check=lambda: True, server=srv, restarts=1, on_change=states.append)
    w.tick()
    assert states == [] and srv.starts == 0
    srv.proc = Proc(-9)
    w.tick()
    assert srv.starts == 1 and states == ["restarting", "restarted 1x"]
    srv.proc = Proc(-9)
    w.tick()
    assert srv.starts == 1 and states[-1] == "failed" and "died 2 times" in w.error

    up = {"v": False}
    w = ServerWatch("LLM server Y", check=lambda: up["v"], on_change=states.append)
    w.tick()
    assert states[-1] == "down 0s"
    up["v"] = True
    w.tick()
    assert states[-1] == "ok"


def test_url_server_is_waited_for_with_a_message(monkeypatch, caplog):
    from pipeline import runner
    from pipeline.config import JobError
    from pipeline.llm.server import find_free_port
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    url = f"http://127.0.0.1:{find_free_port()}/v1"
    t = [0.0]

    def mono():
        t[0] += 10
        return t[0]
    monkeypatch.setattr(runner.time, "monotonic", mono)
    with caplog.at_level("WARNING", logger="pairforge"):
        with pytest.raises(JobError, match=rf"LLM server {url} \(llm.url\) did not answer for \d+s \(llm.wait_s=45\)"):
            runner.wait_for_server(f"LLM server {url} (llm.url)", url, None, 45)
    assert f"waiting for LLM server {url}" in caplog.text
