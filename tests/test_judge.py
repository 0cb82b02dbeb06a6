"""The VLM judge's fast parts: rubric schema and parsing, weights, thresholds (absolute and
calibrated), the verdict's reason, the record's columns and their check in `verify`, the trainer's
choice of instruction column, and the stage's handling of a server that fails (a real local HTTP
server answering errors). The judge's real VLM server runs in the slow demo job (tests/test_job.py)."""
from __future__ import annotations

import copy
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.config import JobConfig
from pipeline.judge.config import JudgeConfig
from pipeline.judge.rubric import (CRITERIA, image_data_url, parse_rewrite, parse_rubric, rubric_messages,
                                   rubric_schema, verdict, weighted)
from pipeline.schema import flow_table, new_flow_row, record_table, to_record

PICO = {"following": 0.40, "realism": 0.25, "preservation": 0.20, "technical": 0.15}


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_schema_asks_integers_for_every_criterion_and_parsing_checks_them():
    s = rubric_schema()
    assert s["required"] == list(CRITERIA) and not s["additionalProperties"]
    assert all(p["enum"] == list(range(11)) for p in s["properties"].values())
    got, why = parse_rubric('{"following": 8, "preservation": 10, "realism": 5, "technical": 0}')
    assert why == "" and got == {"following": 0.8, "preservation": 1.0, "realism": 0.5, "technical": 0.0}
    for bad, says in [("", "empty"), ("{", "not JSON"), ("[1]", "not a JSON object"),
                      ('{"following": 8, "preservation": 10, "realism": 5}', "technical"),
                      ('{"following": 11, "preservation": 1, "realism": 1, "technical": 1}', "outside"),
                      ('{"following": true, "preservation": 1, "realism": 1, "technical": 1}', "following")]:
        got, why = parse_rubric(bad)
        assert got is None and says in why, (bad, why)


def test_default_weights_are_pico_banana_and_combine_to_a_weighted_mean():
    assert JudgeConfig().weights == PICO
    s = {"following": 1.0, "preservation": 0.0, "realism": 0.0, "technical": 0.0}
    assert weighted(s, PICO) == pytest.approx(0.40)
    assert weighted(s, {c: 2.0 for c in CRITERIA}) == pytest.approx(0.25)        # normalised
    assert weighted({c: 0.7 for c in CRITERIA}, PICO) == pytest.approx(0.7)


def test_verdict_names_the_costliest_criterion():
    s = {"following": 0.9, "preservation": 0.2, "realism": 0.9, "technical": 0.9}
    assert verdict(s, PICO, 0.5) == (None, "")                       # 0.36+0.04+0.225+0.135 = 0.76
    reason, detail = verdict(s, PICO, 0.8)
    assert reason == "judge:preservation_low" and "0.760 < min 0.800" in detail and "preservation 2/10" in detail
    reason, _ = verdict({c: 0.0 for c in CRITERIA}, PICO, 0.5)        # all zero: the heaviest criterion
    assert reason == "judge:following_low"
    assert verdict({c: 0.0 for c in CRITERIA}, PICO, None) == (None, "")   # nothing decides (calibration)


def test_config_rules_thresholds_and_calibration():
    with pytest.raises(ValidationError, match="unknown criteria"):
        JudgeConfig(weights={"following": 1, "beauty": 1})
    with pytest.raises(ValidationError, match="exactly one"):
        JudgeConfig(rule={"min": 0.5, "keep_top": 0.5})
    with pytest.raises(ValidationError, match="unknown task"):
        JudgeConfig(rules={"colour": {"min": 0.1}})
    jc = JudgeConfig(enabled=True, rule={"min": 0.6}, rules={"color": {"keep_top": 0.7}})
    assert jc.threshold("local") == 0.6 and jc.needs_calibration()
    assert jc.threshold("color") is None                              # quantile, not calibrated yet
    jc.calibrated = {"color": {"min": 0.45}}
    assert jc.threshold("color") == 0.45
    assert not JudgeConfig(enabled=True).needs_calibration()
    assert not JudgeConfig(enabled=True, reject=False, rule={"keep_top": 0.5}).needs_calibration()


def test_a_job_without_the_judge_keeps_its_config_hash_and_pools():
    from pipeline.resources import pool_specs
    off, on = JobConfig(), JobConfig(judge={"enabled": True, "url": "http://x:1/v1"})
    assert "judge" not in {p.stage for p in pool_specs(off, {"color"})}
    assert "judge" in {p.stage for p in pool_specs(on, {"color"})}
    assert off.config_hash() != on.config_hash()
    moved = JobConfig(judge={"enabled": True, "url": "http://elsewhere:2/v1", "concurrency": 3})
    assert moved.config_hash() == on.config_hash()                   # where answers come from: not the rows


def test_messages_carry_both_images_as_data_urls():
    big = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    url = image_data_url(_png(big), 128, "png")
    from PIL import Image
    import base64
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert url.startswith("data:image/png;base64,") and max(im.size) == 128
    assert image_data_url(_png(big), 128, "jpeg").startswith("data:image/jpeg;base64,")
    msgs = rubric_messages("make it blue", "data:a", "data:b")
    parts = msgs[1]["content"]
    assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == ["data:a", "data:b"]
    assert "make it blue" in parts[0]["text"] and all(c in parts[-1]["text"] for c in CRITERIA)


def test_rewrite_parsing():
    assert parse_rewrite('{"instruction": "  turn the  sky red "}', 8, 300) == ("turn the sky red", "")
    assert parse_rewrite('{"instruction": "red"}', 8, 300)[0] is None
    assert parse_rewrite('nope', 8, 300)[0] is None


def _judged_flow_row(i: int, rewrite: str | None, train_on: str, score: float | None = 0.7) -> dict:
    judge = {"model": "judge-vlm", "prompt_version": "judge-rubric-v1", "train_on": train_on,
             "rewrite": {"instruction": rewrite}}
    scores = {"l1": 0.1}
    if score is not None:
        judge["score"] = score
        scores.update({"judge": score, **{f"judge_{c}": score for c in CRITERIA}})
    img = _png(np.full((16, 16, 3), 40 * i % 255, np.uint8))
    return new_flow_row(sample_index=i, id=f"id{i}", source_id="s", attempt=0, task="color", seed=i, caption="a cup",
                        answer=json.dumps({"instruction": f"agent says {i}"}), input_png=img, output_png=img,
                        scores=json.dumps(scores), judge=json.dumps(judge))


def test_record_keeps_both_instructions_and_the_trainer_reads_the_chosen_one(tmp_path):
    from trainer.data import PairStream
    rows = [_judged_flow_row(0, "judge says 0", "rewrite"), _judged_flow_row(1, "judge says 1", "agent"),
            _judged_flow_row(2, None, "rewrite")]                  # no usable rewrite: the agent's trains
    recs = [to_record(r, job_name="j", config_hash="h", code_version="v") for r in rows]
    assert [r["instruction"] for r in recs] == ["judge says 0", "agent says 1", "agent says 2"]
    assert [r["instruction_agent"] for r in recs] == ["agent says 0", "agent says 1", "agent says 2"]
    assert recs[0]["scores"]["judge_following"] == 0.7 and json.loads(recs[0]["provenance"]["judge"])["model"]
    f = tmp_path / "part-00000.parquet"
    pq.write_table(record_table(recs), f)

    def read(col):
        return [r["instruction"] for r in PairStream([str(f)], holdout_fraction=0.0, instruction_column=col).rows()]
    assert read("instruction") == ["judge says 0", "agent says 1", "agent says 2"]
    assert read("instruction_agent") == ["agent says 0", "agent says 1", "agent says 2"]
    assert read("instruction_rewrite") == ["judge says 0", "judge says 1", None]
    from trainer.config import TrainConfig
    with pytest.raises(ValidationError):
        TrainConfig(data={"instruction_column": "caption"})


def test_verify_flags_a_judged_row_without_its_scores():
    from pipeline.verify import _judge_problem
    ok = to_record(_judged_flow_row(0, "judge says 0", "rewrite"), job_name="j", config_hash="h", code_version="v")
    assert _judge_problem(ok) is None
    broken = copy.deepcopy(ok)
    broken["scores"]["judge_realism"] = None
    assert "judge_realism" in _judge_problem(broken)
    nomodel = copy.deepcopy(ok)
    nomodel["provenance"]["judge"] = json.dumps({"score": 0.7})
    assert "model" in _judge_problem(nomodel)
    unanswered = to_record(_judged_flow_row(1, None, "agent", score=None), job_name="j", config_hash="h", code_version="v")
    assert _judge_problem(unanswered) == "accepted without a judge score"


class _Failing(BaseHTTPRequestHandler):
    """A real HTTP server whose model list answers and whose completions fail with 503 (overloaded)."""
    posts = 0

    def do_GET(self):
        body = json.dumps({"data": [{"id": "judge-vlm", "root": "/nonexistent"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        type(self).posts += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def failing_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Failing.posts = 0
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", srv
    srv.shutdown()


def test_a_failing_judge_server_is_a_world_failure_never_a_reject(failing_server, monkeypatch):
    """503 while the server answers its health check: asked HEALTHY_TRIES times, then the request is
    at fault (judge:llm_error). The server gone altogether: WorldFailure after judge.wait_s."""
    import time

    from pipeline.faults import WorldFailure
    from pipeline.stages.judge import JudgeStage
    monkeypatch.setattr(time, "sleep", lambda s: None)
    url, srv = failing_server
    cfg = JobConfig(tasks={"color": 1.0}, llm={"cache": False},
                    judge={"enabled": True, "url": url, "model": "judge-vlm", "wait_s": 1, "retries": 0})
    stage = JudgeStage(cfg.model_dump(mode="json"))
    stage.backend.retries = 0
    out = stage(flow_table([_judged_flow_row(0, None, "agent")])).to_pylist()[0]
    assert out["status"] == "rejected" and out["reject_reason"] == "judge:llm_error"
    assert "503" in out["reject_detail"] and _Failing.posts == JudgeStage.HEALTHY_TRIES
    srv.shutdown()
    srv.server_close()
    row = _judged_flow_row(1, None, "agent")
    with pytest.raises(WorldFailure, match="did not answer"):
        stage.process([row])                    # the stage's own retries (Stage._run) sit above this
    assert row["status"] == "pending"           # the world failed, not the sample
