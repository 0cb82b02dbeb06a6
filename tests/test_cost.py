"""Survival and cost accounting on a small synthetic output written with the real shard writer (no
Ray, no LLM): the funnel and `pairforge cost` are recomputed by hand from the stage_times stored in
the Parquet rows and compared with what the commands print."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.schema import add_stage_time, new_flow_row, reject, sample_id, sample_seed
from pipeline.shards import Manifest, ShardWriter
from pipeline.sources import encode_png

# per task: the stages its rows pass, and (wall, cpus, gpus) each takes per row; which stage rejects
# which sample index (i % 5) — so every number below depends on the stored times and statuses
CHAINS = {"color": [("load", 0.01, 0.25, 0), ("instruct", 0.2, 0.25, 0), ("llm_server", 0.1, 1, 1),
                    ("pair_cpu", 0.05, 0.5, 0), ("filter", 0.03, 0.5, 0)],
          "add": [("load", 0.01, 0.25, 0), ("instruct", 0.3, 0.25, 0), ("llm_server", 0.15, 1, 1),
                  ("diffusion_base", 1.0, 1, 1), ("ground", 0.4, 1, 0.5), ("diffusion_edit", 2.0, 1, 1),
                  ("filter", 0.05, 0.5, 0)]}
REJECT_AT = {1: "instruct", 2: "filter", 3: "ground"}     # i % 5 → stage (ground: only "add" has it)


def _rows(n=20):
    rows = []
    for i in range(n):
        task = "color" if i % 2 else "add"
        sid = sample_id(5, f"src:{i}", task, 0)
        r = new_flow_row(sample_index=i, id=sid, source_id=f"src:{i}", attempt=0, task=task,
                         seed=sample_seed(sid), caption=f"caption {i}")
        img = np.full((8, 8, 3), i, np.uint8)
        r.update(input_png=encode_png(img), output_png=encode_png(255 - img),
                 answer=json.dumps({"instruction": f"edit {i}", "output_caption": f"edited {i}"}))
        if i == 19:                                     # the planner's reject: no stage reached
            reject(r, "source", "unknown_task")
            rows.append(r)
            continue
        for stage, wall, c, g in CHAINS[task]:
            add_stage_time(r, stage, wall * (1 + i / 100), wall * (1 + i / 100) * c, wall * (1 + i / 100) * g)
            if REJECT_AT.get(i % 5) == stage:
                reject(r, stage, "synthetic")
                break
        rows.append(r)
    return rows


@pytest.fixture
def out(tmp_path):
    o = tmp_path / "out"
    o.mkdir()
    (o / "job.resolved.yaml").write_text("seed: 5\n")
    m = Manifest(o)
    m.init(config_hash="h", job_name="t", n_samples=20, n_shards=2, rows_per_shard=10)
    w = ShardWriter(o, m, {0: 10, 1: 10}, 10, job_name="t", config_hash="h", code_version="v", write_rejects=True)
    w.add(_rows())
    return o


def _stored(out):
    rows = []
    for sub in ("data", "rejects"):
        for p in sorted((out / sub).glob("*.parquet")):
            rows += pq.read_table(p, columns=["task", "status", "reject_stage", "stage_times"]).to_pylist()
    return rows


def test_funnel_counts_reached_and_survived(out):
    from pipeline.stats import compute_stats
    rows = _stored(out)
    assert len(rows) == 20
    fun = compute_stats(out)["funnel"]
    for task in ("add", "color"):
        mine = [r for r in rows if r["task"] == task]
        steps = {s["stage"]: s for s in fun[task]}
        assert steps["source"]["reached"] == len(mine)
        for stage in [s for s, *_ in CHAINS[task] if s != "llm_server"]:
            reached = sum(any(e["stage"] == stage for e in r["stage_times"]) for r in mine)
            dead = sum(r["reject_stage"] == stage for r in mine)
            assert (steps[stage]["reached"], steps[stage]["rejected"], steps[stage]["survived"]) == (reached, dead, reached - dead)
        # survivors of the last stage are the accepted rows; the order is the chain's
        assert fun[task][-1]["stage"] == "filter"
        assert fun[task][-1]["survived"] == sum(r["status"] == "accepted" for r in mine)
    assert "llm_server" not in {s["stage"] for t in fun.values() for s in t}
    assert [s["stage"] for s in fun["add"]] == ["source", "load", "instruct", "diffusion_base", "ground",
                                                 "diffusion_edit", "filter"]


def _cli(capsys, *argv):
    from pipeline.cli import main
    rc = main(list(argv))
    return rc, capsys.readouterr().out


def test_cost_arithmetic_matches_stored_stage_times(out, capsys):
    rc, text = _cli(capsys, "cost", str(out), "--price", "gpu=3", "--price", "cpu=0.1", "--json")
    assert rc == 0
    rep = json.loads(text)
    rows = _stored(out)
    for task in ("add", "color", None):
        mine = [r for r in rows if task is None or r["task"] == task]
        acc = sum(r["status"] == "accepted" for r in mine)
        got = rep["all"] if task is None else rep["tasks"][task]
        assert got["accepted"] == acc and got["samples"] == len(mine)
        per_stage = {}
        for r in mine:                          # rejected rows too: they used the stages before
            for e in r["stage_times"]:
                w, c, g = per_stage.get(e["stage"], (0, 0, 0))
                per_stage[e["stage"]] = (w + e["wall_s"], c + e["cpu_s"], g + e["gpu_s"])
        k = 1e6 / acc
        gpu_h = sum(g for _, _, g in per_stage.values()) * k / 3600
        cpu_h = sum(c for _, c, _ in per_stage.values()) * k / 3600
        assert got["gpu_hours"] == pytest.approx(gpu_h) and got["cpu_hours"] == pytest.approx(cpu_h)
        assert got["money"] == pytest.approx(gpu_h * 3 + cpu_h * 0.1)
        money = {s: (c * 0.1 + g * 3) * k / 3600 for s, (w, c, g) in per_stage.items()}
        assert got["bottleneck"]["stage"] == max(money, key=money.get)
        assert {s["stage"]: s["money"] for s in got["stages"]} == pytest.approx(money)
    assert rep["tasks"]["add"]["bottleneck"]["stage"] == "diffusion_edit"     # 2 s × 1 GPU a row
    # the plain-text table says the same
    rc, text = _cli(capsys, "cost", str(out), "--price", "gpu=3", "--price", "cpu=0.1")
    assert rc == 0 and f"${rep['all']['money']:,.0f}" in text and "bottleneck: diffusion_edit" in text


def test_cluster_plan_sizes_pools_from_stage_times(out, capsys):
    import math
    rc, text = _cli(capsys, "cost", str(out), "--target", "1000000", "--hours", "48", "--utilization", "0.5", "--json")
    assert rc == 0
    plan = json.loads(text)["cluster_plan"]
    rows = _stored(out)
    acc = sum(r["status"] == "accepted" for r in rows)
    samples = math.ceil(1_000_000 / (acc / len(rows)))
    assert plan["samples"] == samples
    pools = {p["stage"]: p for p in plan["pools"]}
    for stage in ("diffusion_edit", "llm_server", "load"):
        es = [e for r in rows for e in r["stage_times"] if e["stage"] == stage]
        wall = sum(e["wall_s"] for e in es)
        actors = math.ceil(wall / len(rows) * samples / (48 * 3600 * 0.5))
        assert pools[stage]["actors"] == actors
        assert pools[stage]["gpus"] == pytest.approx(actors * sum(e["gpu_s"] for e in es) / wall)
    assert plan["gpus"] == pytest.approx(sum(p["gpus"] for p in plan["pools"]))
    # twice the hours, about half the actors of the big pool
    rc, text = _cli(capsys, "cost", str(out), "--target", "1000000", "--hours", "96", "--utilization", "0.5", "--json")
    longer = {p["stage"]: p for p in json.loads(text)["cluster_plan"]["pools"]}
    assert longer["diffusion_edit"]["actors"] == math.ceil(pools["diffusion_edit"]["actor_hours"] * 3600 / (96 * 3600 * 0.5))
    assert longer["diffusion_edit"]["actors"] < pools["diffusion_edit"]["actors"]


def test_cost_refuses_bad_price_and_non_output(out, tmp_path, capsys):
    from pipeline.cli import main
    assert main(["cost", str(out), "--price", "tpu=1"]) == 2
    assert "--price expects gpu=DOLLARS or cpu=DOLLARS" in capsys.readouterr().err
    assert main(["cost", str(tmp_path / "nothing")]) == 2
    assert "not a pairforge output folder" in capsys.readouterr().err


def test_verify_checks_stage_times(out, tmp_path):
    import pyarrow as pa

    from pipeline.verify import verify
    assert verify(out) == []
    # a negative time written into one committed file: besides the checksum, the row is named
    f = sorted((out / "data").glob("*.parquet"))[0]
    t = pq.read_table(f)
    times = t.column("stage_times").to_pylist()
    times[0][0]["wall_s"] = -1.0
    field = t.schema.field("stage_times")
    t = t.set_column(t.schema.get_field_index("stage_times"), field, pa.array(times, type=field.type))
    from pipeline.shards import parquet_bytes
    f.write_bytes(parquet_bytes(t))
    problems = verify(out)
    assert any("stage_times" in p and "wall_s = -1.0" in p for p in problems), problems


def test_plan_measured_uses_the_same_model_with_the_job_files_pools(out, capsys):
    """`pairforge plan JOB --measured OUT`: speed from the measured rows, what an actor holds from
    the job file (here one GPU per edit actor, where the measured rows held one too, and 4 GPUs per
    LLM server where they held one)."""
    import math

    from pipeline import cost as C
    rc, text = _cli(capsys, "plan", "deploy/profiles/local.yaml", "--measured", str(out), "--target", "500000",
                    "--hours", "24", "--set", "stages.diffusion_edit={num_gpus: 1}",
                    "--set", "stages.llm_server={num_gpus: 4, num_cpus: 8}", "--json")
    assert rc == 0
    plan = {p["stage"]: p for p in json.loads(text)["measured_plan"]["pools"]}
    same = C.cluster_plan(C.measure(out), target=500000, hours=24)     # what `pairforge cost` would say
    for stage, p in plan.items():
        ref = next(q for q in same["pools"] if q["stage"] == stage)
        assert p["actors"] == ref["actors"]                                  # same speed, same count
    assert plan["diffusion_edit"]["gpus"] == plan["diffusion_edit"]["actors"] * 1
    assert plan["llm_server"]["gpus"] == plan["llm_server"]["actors"] * 4
    assert plan["filter"]["gpus"] == 0                                        # local.yaml: CPU filter
    assert plan["llm_server"]["actors"] == math.ceil(plan["llm_server"]["actor_hours"] / (24 * 0.8) - 1e-9)
