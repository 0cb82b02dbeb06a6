"""The plan: the same config gives the same samples; the task column of a source row wins over the
mix; unknown tasks in the source become counted rejects."""
import json

from pipeline.config import JobConfig
from pipeline.plan import _draw_task, build_plan

import numpy as np


def test_plan_is_deterministic_and_ids_unique(tmp_path):
    cfg = JobConfig.model_validate({"source": {"kind": "demo", "repeats": 3}})
    a, b = build_plan(cfg), build_plan(cfg)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert len({r["id"] for r in a}) == len(a)
    assert [r["sample_index"] for r in a] == list(range(len(a)))


def test_task_draw_follows_weights():
    names, p = ["local", "color"], np.array([0.25, 0.75])
    draws = [_draw_task(names, p, 1, f"s:{i}", 0) for i in range(4000)]
    share = draws.count("color") / len(draws)
    assert 0.72 < share < 0.78


def test_source_task_column_overrides_and_unknown_task_is_rejected(tmp_path, monkeypatch):
    import pipeline.plan
    # sketch has a generator now: pretend it is agent-only, to see such a task refused
    monkeypatch.setattr(pipeline.plan, "implemented", lambda: ["color"])
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"caption": "a red kite", "task": "color"}, {"caption": "a blue kite", "task": "teleport"},
        {"caption": "a green kite", "task": "sketch"}]) + "\n")
    rows = build_plan(JobConfig.model_validate({"source": {"kind": "captions", "path": str(src)}}))
    assert [r["task"] for r in rows] == ["color", "teleport", "sketch"]
    assert rows[0]["status"] == "pending"
    assert (rows[1]["status"], rows[1]["reject_reason"]) == ("rejected", "unknown_task")
    assert (rows[2]["status"], rows[2]["reject_reason"]) == ("rejected", "no_generator")   # agent only (patched)
