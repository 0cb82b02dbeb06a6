"""Filters in a real job: every filter that applies to the task runs, every score lands in the
shard, quantile rules calibrate on the job's own first samples (and a rerun reuses them), and
`pairforge stats` shows per task which filter dropped how many and why."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.jobutil import run_cli, stats, write_job

pytestmark = pytest.mark.slow


def test_quantile_rules_calibrate_on_the_job_and_stats_show_filter_drops(vllm_url, tmp_path):
    # keep the 50% of colour candidates whose depth changed least: the threshold comes from the job
    job = write_job(tmp_path / "job.yaml", vllm_url, source__limit=6, source__repeats=2,
                    filters={"rules": {"color": {"depth_l1": {"keep_top": 0.5}}}, "calibration_samples": 8})
    out = tmp_path / "out"
    run_cli("run", str(job), "--out", str(out), "--no-progress")
    cal = json.loads((out / "calibration.json").read_text())
    th = cal["thresholds"]["color"]["depth_l1"]["max"]
    assert cal["samples"] == {"color": 8} and th > 0

    s = stats(out)
    drops = s["tasks"]["color"]["filter_drops"]
    assert drops.get("depth_structure/depth_l1_high", 0) >= 1
    rows = pq.read_table(out / "data").to_pylist() + pq.read_table(out / "rejects").to_pylist()
    scored = [r for r in rows if r["scores"]["clip_img"] is not None]
    assert scored, "no sample reached the filters"
    for r in scored:
        sc = r["scores"]
        # every filter that applies to color ran: pixel checks, CLIP/DINO metrics, depth, task predictor
        for k in ("l1", "clipped_frac", "clip_dir", "clip_img", "clip_out", "dino", "depth_l1", "task_pred"):
            assert sc[k] is not None, k
        if r["status"] == "accepted":
            assert sc["depth_l1"] <= th + 1e-9
        rep = json.loads(r["provenance"]["candidates"])
        assert rep["candidates"][rep["selected"]]["scores"]["depth_l1"] == pytest.approx(sc["depth_l1"], abs=1e-5)
    assert any(r["reject_reason"] == "depth_l1_high" and r["reject_detail"].startswith("depth_structure:")
               for r in rows)
    text = run_cli("stats", str(out)).stdout
    assert "filter drops per task" in text and "depth_structure/depth_l1_high" in text
    assert run_cli("verify", str(out)).returncode == 0

    # a rerun of the finished job reuses the calibration and writes nothing new
    before = (out / "calibration.json").read_text()
    run_cli("run", str(job), "--out", str(out), "--no-progress")
    assert (out / "calibration.json").read_text() == before
