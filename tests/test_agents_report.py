"""`pairforge agents-report` summary: rates are over answered requests; transport errors (a timeout
says nothing about the model) are counted apart."""
from __future__ import annotations

import json

from pipeline.agents_report import summarise


def r(task, status, reason=None, ins=None):
    return {"task": task, "status": status, "reject_reason": reason,
            "answer": json.dumps({"instruction": ins}) if ins else None}


def test_transport_errors_are_counted_apart_from_the_rates():
    rows = [r("color", "pending", ins="Make it brighter"), r("color", "pending", ins="Blur the photo a lot"),
            r("color", "rejected", "llm_invalid_json"), r("color", "rejected", "llm_same_caption"),
            r("color", "rejected", "llm_error"), r("color", "rejected", "llm_error")]
    s = summarise(rows)
    t = s["tasks"]["color"]
    assert t["requests"] == 4 and t["transport_errors"] == 2
    assert t["valid_json"] == 0.75 and t["check_pass"] == 0.5
    assert s["transport_errors"] == 2 and s["requests"] == 4
