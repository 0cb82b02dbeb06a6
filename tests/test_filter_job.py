"""Filters in a real job: every filter that applies to the task runs, every score lands in the
shard, quantile rules calibrate on the job's own first samples (and a rerun reuses them), and
`pairforge stats` shows per task which filter dropped how many and why."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.jobutil import run_cli, stats, write_job

pytestmark = pytest.mark.slow


JUDGE_WEIGHTS = {"following": 0.40, "realism": 0.25, "preservation": 0.20, "technical": 0.15}   # the defaults

# The VLM judge rides on this job (no job of its own): the job launches the embedded judge server
# (deploy/build_judge_vlm.py's model) beside the session's LLM server; keep_top calibrates its
# threshold on the job's samples, as the filters' quantile rule does, so some pairs are judge
# rejects and some are kept.
JUDGE = {"enabled": True, "model": "judge-idefics3-smollm2", "rule": {"keep_top": 0.5}, "image_side": 128,
         "rewrite": {"tasks": ["color"], "train_on": "rewrite"}}


@pytest.fixture(scope="module")
def filter_job(vllm_url, tmp_path_factory):
    # keep the 50% of colour candidates whose depth changed least: the threshold comes from the job
    d = tmp_path_factory.mktemp("filter_job")
    job = write_job(d / "job.yaml", vllm_url, source__limit=6, source__repeats=2, judge=JUDGE,
                    filters={"rules": {"color": {"depth_l1": {"keep_top": 0.5}}}, "calibration_samples": 8})
    out = d / "out"
    run_cli("run", str(job), "--out", str(out), "--no-progress")
    return out, job


def test_quantile_rules_calibrate_on_the_job_and_stats_show_filter_drops(filter_job):
    out, job = filter_job
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


def test_the_vlm_judge_scores_every_pair_it_saw_through_its_vllm_server(filter_job):
    """Issue 17: every row that reached the judge carries the four rubric scores, the weighted score,
    the judge model and prompt version; some are rejected with judge:<criterion>_low reasons; both
    instructions are kept and `instruction` is the rewrite (train_on: rewrite) where there is one;
    the requests went through the launched vLLM server (its access log)."""
    from pipeline.judge.rubric import CRITERIA, PROMPT_VERSION, weighted

    out, _ = filter_job
    acc = pq.read_table(out / "data").to_pylist()
    rej = pq.read_table(out / "rejects").to_pylist()
    judged = acc + [r for r in rej if r["reject_stage"] == "judge"]
    assert acc and len(judged) > len(acc), "the calibrated threshold must keep some pairs and reject others"
    for r in judged:
        j = json.loads(r["provenance"]["judge"])
        assert j["model"] == "judge-idefics3-smollm2" and j["prompt_version"] == PROMPT_VERSION and j["prompt_hash"]
        got = {c: r["scores"][f"judge_{c}"] for c in CRITERIA}
        assert all(0 <= v <= 1 for v in got.values())
        assert r["scores"]["judge"] == pytest.approx(weighted(got, JUDGE_WEIGHTS))
        assert json.loads(r["provenance"]["models"])["judge"].startswith("judge-idefics3-smollm2@sha256:")
        assert r["instruction_agent"]
        assert r["instruction"] == (r["instruction_rewrite"] or r["instruction_agent"])
    assert any(r["instruction_rewrite"] for r in judged)
    # rows the earlier stages rejected never reached the judge
    assert all(r["provenance"]["judge"] is None for r in rej if r["reject_stage"] != "judge")
    reasons = {r["reject_reason"] for r in rej if r["reject_stage"] == "judge"}
    assert reasons <= {f"judge:{c}_low" for c in CRITERIA}, reasons
    bound = json.loads((out / "calibration.json").read_text())["judge_thresholds"]["color"]["min"]
    assert min(r["scores"]["judge"] for r in acc) >= bound > max(
        r["scores"]["judge"] for r in rej if r["reject_stage"] == "judge")
    log = (out / "logs" / "judge_server.log").read_text()
    posts = log.count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert posts >= 2 * len(judged), (posts, len(judged))      # a rubric and a rewrite per judged pair
    assert "judge-idefics3-smollm2" in log and "Idefics3ForConditionalGeneration" in log
