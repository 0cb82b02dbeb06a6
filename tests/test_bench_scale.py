"""The scale benchmark runs end to end on a small N and reports what the README's table needs; its
stand-ins cannot be chosen by a job file."""
from __future__ import annotations

import json

import pytest

from tests.jobutil import run_cli

pytestmark = pytest.mark.slow


def test_scale_bench_reports_the_figures_and_writes_a_verified_output():
    r = run_cli("bench", "--scale", "600", "--rows-per-shard", "50", "--json", timeout=600)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for k in ("n", "samples_per_s", "driver_peak_rss_mb", "commit_ms_first_shards", "commit_ms_last_shards",
              "stats_s", "stats_peak_rss_mb", "verify_s", "verify_peak_rss_mb"):
        assert k in out, k
    assert out["n"] == 600 and out["shards"] == 12
    assert out["stats_result"] == 600 and out["verify_result"] is True     # every sample in the output, verified


def test_no_job_file_can_select_the_stand_ins(tmp_path):
    from pipeline.config import ConfigError, load_job
    p = tmp_path / "job.yaml"
    p.write_text("llm: {backend: bench-stand-in}\n")
    with pytest.raises(ConfigError, match="llm.backend"):
        load_job(p)
