"""A stage actor killed mid-job (SIGKILL, as a node's OOM killer would send it) loses no sample:
Ray restarts the actor and retries its batch, and the job ends with every id once and the same rows
as a run nobody disturbed."""
from __future__ import annotations

import json

import pytest

from tests.jobutil import run_cli
from tests.test_resume import _rows, row_diff

pytestmark = pytest.mark.slow


def test_killed_stage_actor_loses_no_sample(color_reference, tmp_path):
    # The pair stage's actor SIGKILLs itself on its third batch with work, through the fault hook:
    # mid-run by construction (batches of 2 of 18 samples), whatever the machine's speed. Without
    # the actor restarts and task retries the runner asks Ray for, the job dies here.
    job = color_reference["job"]
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps([{"stage": "pair_cpu", "kind": "kill", "skip": 2, "times": 1}]))
    out = tmp_path / "killed"
    r = run_cli("run", str(job), "--out", str(out), "--no-progress", "-q", env={"PAIRFORGE_TEST_FAULTS": str(spec)})
    fired = tmp_path / "faults.json.fired-0-0"
    assert fired.exists() and int(fired.read_text()) > 0, "the fault hook never killed the stage actor"
    assert len(list(tmp_path.glob("faults.json.seen-0-*"))) == 2
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["shards_written"] == color_reference["n_shards"]
    assert run_cli("verify", str(out)).returncode == 0
    a, b = _rows(out), color_reference["rows"]
    assert [x["id"] for x in a] == [x["id"] for x in b] and len({x["id"] for x in a}) == 18
    assert a == b, row_diff(a, b)
