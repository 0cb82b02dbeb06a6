"""Helpers for tests that run real jobs through the `pairforge` command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAIRFORGE = [sys.executable, "-m", "pipeline.cli"]


def write_job(path: Path, url: str, **over) -> Path:
    """A small job against an already running vLLM server (the session fixture)."""
    job = {
        "name": "test-job", "seed": 7, "tasks": {"color": 1.0},
        "source": {"kind": "demo", "limit": 4, "repeats": 1},
        "llm": {"backend": "vllm-openai", "model": "smollm2-135m-instruct", "url": url, "retries": 2},
        "stages": {"load": {"actors": 1, "num_cpus": 0.25, "batch_size": 4},
                   "instruct": {"actors": 1, "num_cpus": 0.25, "batch_size": 8},
                   "ground": {"actors": 1, "num_cpus": 0.25, "batch_size": 4},
                   "diffusion": {"actors": 1, "num_cpus": 0.25, "batch_size": 2},
                   "cpu": {"actors": 1, "num_cpus": 0.25, "batch_size": 4},
                   "filter": {"actors": 1, "num_cpus": 0.25, "batch_size": 4}},
        "output": {"path": str(path.parent / "out"), "rows_per_shard": 4},
        "ray": {"num_cpus": 4},
    }
    for dotted, v in over.items():
        cur = job
        *parents, leaf = dotted.split("__")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = v
    path.write_text(yaml.safe_dump(job))
    return path


def run_cli(*args: str, timeout: float = 900, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", **(env or {})}
    p = subprocess.run([*PAIRFORGE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"pairforge {' '.join(args)} exited {p.returncode}\nSTDOUT:\n{p.stdout[-4000:]}\nSTDERR:\n{p.stderr[-6000:]}")
    return p


def stats(out: Path) -> dict:
    return json.loads(run_cli("stats", str(out), "--json").stdout)
