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


def test_balanced_assignment_gives_the_mix_exactly(tmp_path):
    from collections import Counter

    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps({"caption": f"a photo of kite number {i}"}) for i in range(13))
                   + "\n" + json.dumps({"caption": "a sign", "task": "color"}) + "\n")
    base = {"source": {"kind": "captions", "path": str(src), "repeats": 2}, "seed": 5,
            "tasks": {"local": 1, "color": 2, "global": 1, "sketch": 0.5}}
    bal = build_plan(JobConfig.model_validate(base | {"task_assignment": "balanced"}))
    # 26 drawn slots × (1, 2, 1, 0.5)/4.5 = 5.78, 11.56, 5.78, 2.89 → each floor or floor + 1, sum 26
    drawn = Counter(r["task"] for r in bal if r["source_id"] != bal[-1]["source_id"])
    assert sum(drawn.values()) == 26 and drawn["color"] in (11, 12) and drawn["sketch"] in (2, 3)
    assert drawn["local"] in (5, 6) and drawn["global"] in (5, 6)
    assert [r["task"] for r in bal[-2:]] == ["color", "color"]                # the source's own task wins
    again = build_plan(JobConfig.model_validate(base | {"task_assignment": "balanced"}))
    assert [r["id"] for r in again] == [r["id"] for r in bal]                  # deterministic
    # the default keeps per-sample draws: a sample's task does not depend on the rest of the source
    ind = build_plan(JobConfig.model_validate(base))
    src.write_text(src.read_text() + json.dumps({"caption": "one more kite"}) + "\n")
    grown = build_plan(JobConfig.model_validate(base))
    assert [r["id"] for r in grown[: len(ind)]] == [r["id"] for r in ind]


def test_balanced_sixteen_tasks_on_a_small_job():
    from collections import Counter

    cfg = JobConfig.model_validate({"source": {"kind": "demo", "repeats": 2, "demo_signs": 0, "demo_people": 0},
                                    "task_assignment": "balanced"})
    rows = build_plan(cfg)
    c = Counter(r["task"] for r in rows if r["task"] in cfg.tasks)
    assert set(c) == set(cfg.tasks) and max(c.values()) - min(c.values()) <= 1
