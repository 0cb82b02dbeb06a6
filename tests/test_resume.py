"""A driver killed mid-run (SIGKILL, no cleanup) and rerun ends with every id exactly once, and the
same ids and rows as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.jobutil import ROOT, run_cli, write_job

pytestmark = pytest.mark.slow


def _rows(out):
    t = pa.concat_tables([pq.read_table(p) for sub in ("data", "rejects")
                          for p in sorted((out / sub).glob("part-*.parquet"))])
    rows = sorted(t.to_pylist(), key=lambda r: r["sample_index"])
    for r in rows:
        r["provenance"].pop("code_version")   # the same checkout either way; keep the test honest anyway
    return rows


def row_diff(a: list[dict], b: list[dict]) -> str:
    """The fields that differ, row by row (a failure message that says what changed)."""
    out = []
    for x, y in zip(a, b):
        for k in x:
            if x[k] != y[k]:
                if isinstance(x[k], dict) and isinstance(y[k], dict):
                    sub = [f"{k}.{kk}: {str(x[k][kk])[:160]!r} != {str(y[k].get(kk))[:160]!r}"
                           for kk in x[k] if x[k][kk] != y[k].get(kk)]
                    out += [f"sample {x['sample_index']} {d}" for d in sub]
                else:
                    out.append(f"sample {x['sample_index']} {k}: {str(x[k])[:160]!r} != {str(y[k])[:160]!r}")
    return "\n".join(out[:40])


def committed(out) -> list:
    """Commit records of an output folder (one per committed shard)."""
    d = out / "_commits"
    return sorted(d.glob("shard-*.json")) if d.exists() else []


def test_kill_and_rerun_equals_uninterrupted(vllm_url, tmp_path):
    # Both runs share one LLM answer cache, as reruns of one job do: the killed run's answers are
    # replayed and the uninterrupted run replays them all. What is tested is the pipeline: plan,
    # ids, resume, shard commits and byte-stable rows — not the sampler of the LLM engine.
    cache = str(tmp_path / "llm_cache")
    job = write_job(tmp_path / "job.yaml", vllm_url, source__limit=6, source__repeats=3,
                    output__rows_per_shard=3, llm__cache_dir=cache,
                    stages__instruct={"actors": 1, "num_cpus": 0.25, "batch_size": 2})
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--out", str(killed),
                          "--no-progress", "-q"], cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:
        if len(committed(killed)) >= 1:
            break
        if p.poll() is not None:
            pytest.fail("the run finished before it could be killed")
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    n_before = len(committed(killed))
    assert 1 <= n_before < 6, "kill must land mid-run"

    r = run_cli("run", str(job), "--out", str(killed), "--no-progress", "-q")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["shards_skipped"] == n_before and summary["shards_written"] == 6 - n_before
    assert run_cli("verify", str(killed)).returncode == 0

    clean = tmp_path / "clean"
    run_cli("run", str(job), "--out", str(clean), "--no-progress", "-q")
    a, b = _rows(killed), _rows(clean)
    ids = [r["id"] for r in a]
    assert len(ids) == len(set(ids)) == 18
    assert ids == [r["id"] for r in b]
    assert a == b, row_diff(a, b)
