"""Tests for pipeline.llm: the backends and the vLLM server wrapper.

Fast tests (no model): module import hygiene, transport errors, the json_schema fallback, against
tiny stdlib HTTP servers. Slow tests (``-m slow``) need ``.venv-llm`` and
``models/smollm2-135m-instruct`` (built by ``deploy/setup_llm_env.sh``) and skip without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.llm.backends import (  # noqa: E402
    ChatRequest,
    ChatResult,
    OpenAIServerBackend,
)
from pipeline.llm.server import VLLMServer, VLLMServerError, find_free_port, group_members  # noqa: E402

LLM_PYTHON = Path(os.environ.get("PAIRFORGE_LLM_PYTHON", ROOT / ".venv-llm" / "bin" / "python"))
MODEL_DIR = Path(os.environ.get("PAIRFORGE_LLM_MODEL", ROOT / "models" / "smollm2-135m-instruct"))

_spec = importlib.util.spec_from_file_location("bench_llm_backends",
                                               ROOT / "tests" / "bench_llm_backends.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

needs_llm_env = pytest.mark.skipif(
    not LLM_PYTHON.exists(),
    reason=f"{LLM_PYTHON} missing: run deploy/setup_llm_env.sh to build the vLLM env")
needs_model = pytest.mark.skipif(
    not (MODEL_DIR / "config.json").exists(),
    reason=f"{MODEL_DIR} missing: run deploy/setup_llm_env.sh to convert the GGUF")


def _req(i: int = 0, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"hello {i}"}], seed=i, **kw)


# ------------------------------------------------------------------------------ fast tests


def test_backends_module_imports_without_heavy_deps():
    code = ("import sys; sys.path.insert(0, %r); import pipeline.llm.backends, "
            "pipeline.llm.server; heavy = {'torch', 'transformers', 'vllm'} & set(sys.modules); "
            "assert not heavy, heavy" % str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_dead_url_returns_error_not_raise():
    port = find_free_port()  # nothing listens there
    be = OpenAIServerBackend(f"http://127.0.0.1:{port}/v1", model="m", timeout_s=5, retries=1,
                             retry_backoff_s=0.01)
    try:
        res = be.generate([_req(0), _req(1)])
    finally:
        be.close()
    assert len(res) == 2
    for r in res:
        assert isinstance(r, ChatResult)
        assert r.text is None and r.error and "connection" in r.error


class _FakeOpenAI(BaseHTTPRequestHandler):
    """Answers like an OpenAI server; behaviour picked by the prompt text and server flags."""

    reject_schema = False
    seen: list = []

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        prompt = body["messages"][-1]["content"]
        if self.reject_schema and "response_format" in body:
            return self._send(400, b'{"error": "response_format not supported"}')
        if "boom" in prompt:
            return self._send(500, b"internal error")
        if "garbage" in prompt:
            return self._send(200, b"<html>not json")
        if "nochoices" in prompt:
            return self._send(200, b'{"choices": []}')
        if "slow" in prompt:
            import time

            time.sleep(3)
        answer = {"choices": [{"message": {"role": "assistant", "content": f"echo {prompt}"},
                               "finish_reason": "stop"}],
                  "usage": {"completion_tokens": 3}}
        self._send(200, json.dumps(answer).encode())

    def _send(self, code, data):
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass


@pytest.fixture
def fake_server():
    def make(reject_schema=False):
        handler = type("H", (_FakeOpenAI,), {"reject_schema": reject_schema, "seen": []})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1", handler

    servers: list = []
    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_bad_requests_do_not_sink_the_batch(fake_server):
    url, handler = fake_server()
    be = OpenAIServerBackend(url, model="m", timeout_s=1, retries=0)
    prompts = ["ok 1", "boom", "garbage", "nochoices", "slow", "ok 2"]
    reqs = [ChatRequest(messages=[{"role": "user", "content": p}], seed=i)
            for i, p in enumerate(prompts)]
    try:
        res = be.generate(reqs)
    finally:
        be.close()
    assert [r.text for r in res] == ["echo ok 1", None, None, None, None, "echo ok 2"]
    assert res[0].completion_tokens == 3 and res[0].error is None
    assert res[1].error.startswith("http 500")
    assert res[2].error and res[3].error
    assert res[4].error == "timeout"
    sent = handler.seen[0]
    assert {"temperature", "top_p", "seed", "max_tokens", "model"} <= set(sent)


def test_json_schema_sent_and_fallback_when_rejected(fake_server):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    url, handler = fake_server()
    be = OpenAIServerBackend(url, model="m")
    res = be.generate([_req(0, json_schema=schema)])
    be.close()
    assert res[0].structured and res[0].text
    rf = handler.seen[0]["response_format"]
    assert rf == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}

    url, handler = fake_server(reject_schema=True)
    be = OpenAIServerBackend(url, model="m")
    res = be.generate([_req(i, json_schema=schema) for i in range(3)])
    be.close()
    assert all(r.text and not r.structured and r.error is None for r in res)
    assert be.structured_fallbacks >= 1


def test_server_start_fails_loudly_without_model(tmp_path):
    srv = VLLMServer(python=sys.executable, model_dir=tmp_path, served_name="x",
                     log_path=tmp_path / "log.txt")
    with pytest.raises(VLLMServerError, match="config.json"):
        srv.start()


def test_server_death_quotes_log(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    # sys.executable has no vllm: the process dies at once, the error must quote the log
    srv = VLLMServer(python=sys.executable, model_dir=tmp_path, served_name="x",
                     log_path=tmp_path / "log.txt", startup_timeout_s=60)
    with pytest.raises(VLLMServerError, match="(?s)exited with code.*vllm"):
        srv.start()
    assert srv.proc is None


# ------------------------------------------------------------------------------ slow tests


@pytest.mark.slow
@needs_llm_env
@needs_model
def test_vllm_server_openai_backend(tmp_path):
    log = tmp_path / "vllm.log"
    srv = VLLMServer(python=LLM_PYTHON, model_dir=MODEL_DIR, served_name="smollm2",
                     log_path=log, startup_timeout_s=300)
    with srv:
        pgid = os.getpgid(srv.pid)
        assert srv.url.startswith("http://127.0.0.1:") and srv.url.endswith("/v1")
        assert OpenAIServerBackend.list_models(srv.url) == ["smollm2"]
        be = OpenAIServerBackend(srv.url, concurrency=8)  # model from /v1/models
        assert be.model == "smollm2"
        res = be.generate(bench.fewshot_requests(8))
        assert all(r.error is None and r.text for r in res), [r.error for r in res]
        assert sum(bench.valid_json(r.text) for r in res) >= 1, [r.text for r in res]
        assert all(r.completion_tokens > 0 for r in res)
        # constrained decoding through response_format json_schema
        res = be.generate(bench.fewshot_requests(2, json_schema=True))
        assert all(r.text for r in res), [r.error for r in res]
        if all(r.structured for r in res):
            assert all(bench.valid_json(r.text) for r in res), [r.text for r in res]
        be.close()
    assert srv.proc is None
    # zombies (already dead, waiting for init to reap them) do not count
    assert group_members(pgid) == [], "vLLM processes survived stop()"


@pytest.mark.slow
@needs_model
def test_transformers_backend_generates():
    pytest.importorskip("transformers")
    from pipeline.llm.backends import TransformersBackend

    be = TransformersBackend(str(MODEL_DIR), batch_size=4)
    try:
        reqs = bench.fewshot_requests(3, max_tokens=40)
        reqs.append(ChatRequest(messages=reqs[0].messages, seed=7, temperature=0.0, max_tokens=20))
        res = be.generate(reqs)
    finally:
        be.close()
    assert len(res) == 4
    assert all(r.error is None and r.text and r.text.strip() for r in res), res
    assert all(0 < r.completion_tokens <= 40 for r in res)
    assert be.name == "transformers" and be.model == "smollm2-135m-instruct"


_ENGINE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from pipeline.llm.backends import ChatRequest, VLLMEngineBackend

    def main():
        msgs = [{{"role": "user", "content": "Name a colour."}}]
        be = VLLMEngineBackend({model!r}, model_name="smollm2", max_model_len=1024)
        res = be.generate([ChatRequest(messages=msgs, seed=1, max_tokens=16),
                           ChatRequest(messages=msgs, seed=2, max_tokens=16)])
        be.close()
        print("RESULT " + json.dumps([r.__dict__ for r in res]), flush=True)

    if __name__ == "__main__":   # vLLM on CPU spawns workers: the guard is required
        main()
""")


@pytest.mark.slow
@needs_llm_env
@needs_model
def test_vllm_engine_backend_in_llm_env(tmp_path):
    script = tmp_path / "engine.py"
    script.write_text(_ENGINE_SCRIPT.format(root=str(ROOT), model=str(MODEL_DIR)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    p = subprocess.run([str(LLM_PYTHON), str(script)], capture_output=True, text=True,
                       timeout=600, env=env, cwd=tmp_path)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT "):])
    assert len(res) == 2
    assert all(r["error"] is None and r["text"] and r["completion_tokens"] > 0 for r in res)
