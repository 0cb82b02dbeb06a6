"""Real jobs end to end: vLLM (SmolLM2) writes the instructions, Ray runs the stages, shards land.

These start Ray and talk to a real vLLM server (session fixture), so they are marked slow; CI runs
them."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.models.provenance import path_checksum
from tests.conftest import MODEL_DIR
from tests.jobutil import run_cli, stats, write_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_out(color_reference):
    """The session's color job (tests/conftest.py), shared with the kill tests: one run, not two.
    It runs with the progress display; its console is beside the output (console.txt)."""
    return color_reference["out"], color_reference["job"]


def test_bad_inputs_are_counted_rejects_and_the_job_finishes(vllm_url, bad_inputs_folder, tmp_path):
    job = write_job(tmp_path / "job.yaml", vllm_url, source={"kind": "images", "path": str(bad_inputs_folder), "repeats": 2})
    out = tmp_path / "out"
    run_cli("run", str(job), "--out", str(out), "--no-progress")
    s = stats(out)
    reasons = s["tasks"]["color"]["reject_reasons"]
    assert s["samples"] == 12
    assert reasons.get("load:truncated_image") == 2           # truncated PNG, ×2 repeats
    assert reasons.get("load:not_an_image") == 2              # a text file named .png, ×2 repeats
    assert reasons.get("instruct:empty_caption") == 2
    assert reasons.get("instruct:caption_too_long") == 2
    assert s["accepted"] + sum(reasons.values()) == 12         # nothing lost silently
    rej = pq.read_table(out / "rejects").to_pylist()
    bad = [r for r in rej if r["reject_stage"] == "load"]
    assert len(bad) == 4 and all(r["reject_detail"] for r in bad)   # the detail says what was wrong
    assert run_cli("verify", str(out)).returncode == 0


def test_demo_job_accepts_color_with_vllm_provenance(demo_out):
    out, _ = demo_out
    s = stats(out)
    assert s["complete"] and s["tasks"]["color"]["accepted"] > 0
    rows = pq.read_table(out / "data").to_pylist()
    for r in rows:
        p = r["provenance"]
        assert p["llm_backend"] == "vllm-openai" and p["llm_model"] == "smollm2-135m-instruct"
        assert r["instruction"] and r["output_caption"] and r["task"] == "color" and r["task_id"] == 10
        ops = json.loads(r["params"])["ops"]
        assert ops and all("op" in o for o in ops)
        assert r["scores"]["l1"] is not None and r["scores"]["l1"] > 0
        assert len(p["exemplar_ids"]) > 0 and p["prompt_hash"]
        # every model that made or judged the pair: the served LLM with its folder's checksum (the
        # session's server loads MODEL_DIR), the filter's models (tiny-random: hashed weights)
        models = json.loads(p["models"])
        assert models["llm"] == f"smollm2-135m-instruct@sha256:{path_checksum(MODEL_DIR)[:16]}"
        assert {"clip", "dino", "depth", "task_predictor", "sentence_encoder"} <= set(models), models
    assert (out / "job.resolved.yaml").exists()
    assert run_cli("verify", str(out)).returncode == 0


def test_console_is_calm_and_rows_carry_stage_times(demo_out):
    """Issue 17: the terminal shows our progress display and closing summary, none of Ray's or
    vLLM's own lines (they are in OUT/logs/); every row, rejects too, carries its stage times."""
    import re
    out, _ = demo_out
    console = (out.parent / "console.txt").read_text()
    ray_lines = [ln for ln in re.split(r"[\r\n]", console)
                 if re.search(r"\(raylet\)|pid=\d+\)|core_worker\.cc|streaming_executor|RayDeprecationWarning"
                              r"|\bINFO\b|-- |vllm|ray\.data", ln, re.I)
                 and "vllm_server.log" not in ln]
    assert not ray_lines, ray_lines[:5]
    assert "generate:" in console and "accepted=" in console and "shards=" in console
    assert f"output: {out}" in console and f"logs:   {out / 'logs'}" in console
    assert (out / "logs" / "ray.log").stat().st_size > 0          # what Ray said is kept, not lost
    for sub in ("data", "rejects"):
        t = pq.read_table(out / sub, columns=["status", "stage_times"]).to_pylist()
        assert all(any(e["stage"] == "load" and e["wall_s"] > 0 for e in r["stage_times"]) for r in t)
    s = stats(out)
    assert s["funnel"]["color"][0]["reached"] == s["tasks"]["color"]["samples"]


def test_shards_open_with_datasets_duckdb_polars(demo_out):
    out, _ = demo_out
    import datasets
    import duckdb
    import polars as pl
    from PIL import Image

    files = sorted(str(p) for p in (out / "data").glob("part-*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(ds[0]["input_image"], Image.Image) and isinstance(ds[0]["output_image"], Image.Image)
    assert ds[0]["input_image"].size == ds[0]["output_image"].size
    n = duckdb.sql(f"select count(*) from read_parquet({files!r})").fetchall()[0][0]
    assert n == len(ds)
    df = pl.read_parquet(files)
    assert df.height == len(ds) and df["input_image"].struct.field("bytes")[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_writes_nothing_new(demo_out):
    out, job = demo_out
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.parquet")}
    man = (out / "manifest.json").read_text()
    r = run_cli("run", str(job), "--out", str(out), "--no-progress", "-q")
    assert json.loads(r.stdout.strip().splitlines()[-1])["samples_run"] == 0
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.parquet")}
    assert before == after and (out / "manifest.json").read_text() == man


def test_verify_catches_corruption_and_strays(demo_out, tmp_path):
    import shutil
    out, _ = demo_out
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert run_cli("verify", str(copy)).returncode == 0
    f = sorted((copy / "data").glob("part-*.parquet"))[0]
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    (copy / "data" / "part-99999.parquet").write_bytes(b"junk")
    p = run_cli("verify", str(copy), check=False)
    assert p.returncode == 1
    assert "sha256 mismatch" in p.stdout and "part-99999.parquet: not in the manifest" in p.stdout


def test_output_of_another_job_is_refused(demo_out, tmp_path, vllm_url):
    out, _ = demo_out
    other = write_job(tmp_path / "other.yaml", vllm_url, seed=99)
    p = run_cli("run", str(other), "--out", str(out), "--no-progress", check=False)
    assert p.returncode == 2 and "different job" in p.stderr


def test_every_accepted_pair_changes_more_than_the_floor(demo_out):
    """Issue 16: no accepted row's output is (nearly) its input — each clears its task's
    minimum-change floor, measured where the filter measures it, and says so in its scores."""
    import numpy as np

    from filters.config import FilterConfig
    from filters.min_change import OBJECT_TASKS, change_measures
    from pipeline.sources import decode_png

    out, _ = demo_out
    fc = FilterConfig()
    rows = pq.read_table(out / "data").to_pylist()
    assert rows
    low, recorded = [], []
    for r in rows:
        a, b = decode_png(r["input_image"]["bytes"]), decode_png(r["output_image"]["bytes"])
        masks = {m["variant"]: m["mask"]["bytes"] for m in (r.get("masks") or []) if m["mask"]}
        png = masks.get("precise") if r["task"] in OBJECT_TASKS else None
        png = png or ((r.get("mask") or {}).get("bytes"))
        region = decode_png(png) > 0 if png else None
        if region is not None and region.ndim == 3:
            region = region.any(axis=2)
        l1, frac = change_measures(a, b, region, fc.min_change_delta)
        floor = fc.change_floor(r["task"])
        if not (l1 >= floor.min_l1 or frac >= floor.min_frac) or np.abs(a.astype(int) - b.astype(int)).max() <= 8:
            low.append((r["task"], r["id"], round(l1, 4), round(frac, 4)))
        recorded.append(r["scores"].get("change_l1") == pytest.approx(l1, abs=1e-6))
    assert not low, f"accepted pairs below the minimum-change floor: {low}"
    assert all(recorded)
