"""Garbage from the LLM server ends as counted rejects with reasons, never a crash.

A misbehaving server cannot be summoned from a real model on demand, so this test runs a tiny
stdlib HTTP server that speaks the OpenAI chat API and answers with garbage, truncated JSON,
wrong keys or a 500 — the real client (`OpenAIServerBackend`) and the real stage talk to it."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import JobConfig
from pipeline.plan import build_plan
from pipeline.schema import flow_table
from pipeline.stages.instruct import InstructStage

# The generic answer checks, on the global task: its own check (the output caption really differs)
# leaves these answers alone, while color's would reject "Make it darker" over a plan that blurs.
ANSWERS = {
    # keyed by a word of the caption → what the "server" says
    "garbage": (200, "Sure! Here is a nice instruction for you :)"),
    "truncated": (200, '{"instruction": "Make the photo much darker", "output_cap'),
    "wrongkeys": (200, '{"instr": "darker", "caption": "a dark photo"}'),
    "same": (200, '{"instruction": "Make it darker", "output_caption": "same caption here"}'),
    "fenced": (200, '```json\n{"instruction": "Make it darker", "output_caption": "a darker fenced photo"}\n```'),
    "error": (500, "internal error"),
    "short": (200, '{"instruction": "Dark", "output_caption": "a dark short photo"}'),
    "possessive": (200, json.dumps({"instruction": "Turn the dog's tail into a fluffy scarf",
                                    "original_object": "the dog's tail", "edited_object": "a fluffy scarf",
                                    "output_caption": "a dog wearing a fluffy scarf on a lawn"})),
    "twice": (200, '{"instruction": "Make the whole photo darker", "output_caption": "a darker photo, twice"}'),
    "schemacheck": (200, "{}"),
}
SEEN: list[dict] = []       # request bodies, for the tests that check what was asked


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode() if not isinstance(obj, str) else obj.encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, {"data": [{"id": "fake-model"}]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SEEN.append(req)
        caption = req["messages"][-1]["content"]
        if caption.startswith("Phrase: "):          # the de-possession agent
            code, text = 200, json.dumps({"object": caption.split("'s ", 1)[-1]})
        else:
            code, text = ANSWERS[next(k for k in ANSWERS if k in caption)]
        if code != 200:
            return self._send(code, text)
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                         "usage": {"completion_tokens": 7}})


@pytest.fixture
def fake_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_each_bad_answer_is_a_reject_with_its_reason(fake_server, tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("\n".join(["garbage photo", "truncated photo", "wrongkeys photo", "same caption here",
                               "fenced photo", "error photo"]) + "\n")
    cfg = JobConfig.model_validate({"tasks": {"global": 1.0}, "source": {"kind": "captions", "path": str(caps)},
                                    "llm": {"url": fake_server, "retries": 1, "cache": False}})
    rows = build_plan(cfg)
    out = InstructStage(cfg.model_dump(mode="json"))(flow_table(rows)).to_pylist()
    got = {r["caption"].split()[0]: (r["status"], r["reject_reason"]) for r in out}
    assert got["garbage"] == ("rejected", "llm_invalid_json")
    assert got["truncated"] == ("rejected", "llm_invalid_json")
    assert got["wrongkeys"] == ("rejected", "llm_schema")
    assert got["same"] == ("rejected", "llm_same_caption")
    assert got["error"] == ("rejected", "llm_error")
    # a 500 is a failure of the world, asked again; one that persists while the server answers its
    # health check is this request's own: a reject, so one sample cannot stall the job
    err = next(r for r in out if r["caption"].startswith("error"))
    assert "asked 3 times while the server answered its health check" in err["reject_detail"]
    assert got["fenced"] == ("pending", None)                 # fences are unwrapped, answer accepted
    for r in out:
        assert json.loads(r["llm"])["tries"] == (1 if r["caption"].startswith("fenced") else 2)
    bad = next(r for r in out if r["caption"].startswith("wrongkeys"))
    assert "instruction" in bad["reject_detail"]              # the detail names the missing key


def test_length_bounds_and_duplicates_for_one_caption(fake_server, tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("short photo\ntwice photo\n")
    cfg = JobConfig.model_validate({"tasks": {"global": 1.0}, "source": {"kind": "captions", "path": str(caps), "repeats": 3},
                                    "llm": {"url": fake_server, "retries": 0, "cache": False}})
    out = InstructStage(cfg.model_dump(mode="json"))(flow_table(build_plan(cfg))).to_pylist()
    short = [r for r in out if r["caption"].startswith("short")]
    twice = sorted((r for r in out if r["caption"].startswith("twice")), key=lambda r: r["sample_index"])
    assert all(r["reject_reason"] == "instruction_length" for r in short)
    # the three attempts got the same instruction; the shard rejects the later two, whatever batches
    # they came through (one batch, or one batch each)
    assert [r["status"] for r in twice] == ["pending"] * 3
    from pipeline.shards import Manifest, ShardWriter
    from pipeline.stats import compute_stats
    split = [InstructStage(cfg.model_dump(mode="json"))(flow_table([r])).to_pylist()[0]
             for r in build_plan(cfg) if r["caption"].startswith("twice")]
    for name, rows in (("together", twice), ("apart", split)):
        out = tmp_path / name
        m = Manifest(out)
        m.init(config_hash="h", job_name="t", n_samples=3, n_shards=1, rows_per_shard=3)
        for r in rows:
            r["sample_index"] -= 3                            # the 'twice' rows as a job of their own
        ShardWriter(out, m, {0: 3}, 3, job_name="t", config_hash="h", code_version="v", write_rejects=True).add(rows[::-1])
        t = compute_stats(out)["tasks"]["global"]
        assert (t["accepted"], t["reject_reasons"]) == (1, {"instruct:duplicate_instruction": 2}), name


def test_possessive_object_gets_a_second_prompt_and_both_phrases_are_kept(fake_server, tmp_path):
    from pipeline.agents_report import _rows   # agent-only task (no generator yet): rows built directly
    cfg = JobConfig.model_validate({"tasks": {"color": 1.0}, "llm": {"url": fake_server, "retries": 0, "cache": False}})
    rows = _rows(["possessive photo of a dog's tail on a lawn"], ["local"], seed=0)
    (row,) = InstructStage(cfg.model_dump(mode="json"))(flow_table(rows)).to_pylist()
    ans = json.loads(row["answer"])
    assert row["status"] == "pending"
    assert ans["original_object"] == "the dog's tail" and ans["original_object_plain"] == "tail"
    assert "edited_object_plain" not in ans                   # not possessive: no second prompt
    assert json.loads(row["llm"])["depossess"] == {"original_object": "llm"}


def test_the_server_is_asked_for_the_schema_of_each_sample_plan(fake_server, tmp_path):
    """Text samples: the request's JSON schema is the one narrowed to that sample's planned op, so
    the server cannot answer an add with an old text (tasks/text.py:answer_schema)."""
    from pipeline.agents_report import _rows
    cfg = JobConfig.model_validate({"tasks": {"color": 1.0}, "llm": {"url": fake_server, "retries": 0, "cache": False}})
    rows = _rows([f"schemacheck photo of a sign number {i}" for i in range(12)], ["text"], seed=3)
    SEEN.clear()
    out = InstructStage(cfg.model_dump(mode="json"))(flow_table(rows)).to_pylist()
    by_caption = {r["messages"][-1]["content"].split("\n")[0].removeprefix("Caption: "): r for r in SEEN}
    ops = set()
    for r in out:
        op = json.loads(r["plan"])["op"]
        ops.add(op)
        schema = by_caption[r["caption"]]["response_format"]["json_schema"]["schema"]
        props = schema["properties"]
        assert (props["old_text"].get("minLength"), props["old_text"].get("maxLength")) == \
            ((1, None) if op in ("remove", "replace") else (None, 0)), op
        assert (props["new_text"].get("minLength"), props["new_text"].get("maxLength")) == \
            ((1, None) if op in ("add", "replace") else (None, 0)), op
    assert ops == {"add", "remove", "replace"}
