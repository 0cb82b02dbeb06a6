"""Shared fixtures. The LLM is real everywhere: a vLLM server from .venv-llm serving SmolLM2,
started once per test session (deploy/setup_llm_env.sh builds both)."""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LLM_PY = ROOT / ".venv-llm" / "bin" / "python"
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"


def have_llm_env() -> bool:
    return LLM_PY.exists() and (MODEL_DIR / "config.json").exists()


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory):
    """URL of a real vLLM OpenAI-compatible server for the whole session."""
    if not have_llm_env():
        if os.environ.get("CI"):
            pytest.fail("LLM environment missing in CI: run deploy/setup_llm_env.sh")
        pytest.skip("LLM environment missing: run deploy/setup_llm_env.sh")
    from pipeline.llm.server import VLLMServer
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    srv = VLLMServer(python=str(LLM_PY), model_dir=str(MODEL_DIR), served_name="smollm2-135m-instruct", max_model_len=4096,
                     log_path=str(log), port=0, startup_timeout_s=400)
    srv.start()
    yield srv.url
    srv.stop()


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def bad_inputs_folder(tmp_path):
    """An image folder with two good photos and every kind of bad input the job must survive."""
    from pipeline.demo_data import load_demo_photo
    d = tmp_path / "imgs"
    d.mkdir()
    good = {"a_coffee.png": load_demo_photo("coffee"), "b_chelsea.png": load_demo_photo("chelsea")}
    for name, arr in good.items():
        (d / name).write_bytes(png_bytes(arr))
    full = png_bytes(load_demo_photo("astronaut"))
    (d / "c_truncated.png").write_bytes(full[: len(full) // 3])
    (d / "d_notes.png").write_bytes(b"this is not an image at all\n" * 20)
    (d / "e_empty_caption.png").write_bytes(png_bytes(load_demo_photo("rocket")))
    (d / "f_long_caption.png").write_bytes(png_bytes(load_demo_photo("coffee")[::2, ::2]))
    caps = {"a_coffee.png": "A cup of coffee on a saucer seen from above",
            "b_chelsea.png": "A tabby cat looking to the side",
            "c_truncated.png": "An astronaut in an orange suit",
            "d_notes.png": "A photo of a notebook",
            "e_empty_caption.png": "   ",
            "f_long_caption.png": "coffee " * 14286}       # 100,002 characters
    with (d / "captions.jsonl").open("w") as f:
        for name, cap in caps.items():
            f.write(json.dumps({"image": name, "caption": cap}) + "\n")
    return d


def pytest_configure(config):
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def color_reference(vllm_url, tmp_path_factory):
    """One small color job (18 samples in 6 shards of 3) run once, undisturbed: the demo output the
    job tests read (tests/test_job.py; none may change it), and the reference of the tests that
    disturb the same job (a killed driver, stage actor or writer) and compare rows with it.

    Its LLM answer cache is shared by all of them, as reruns of one job share theirs: what those
    tests check is the pipeline (plan, ids, retries, commits, byte-stable rows), not the sampler of
    the LLM engine. Batches of 2 in the light stages give each many calls to disturb."""
    from tests.jobutil import run_cli, write_job
    from tests.test_resume import _rows
    d = tmp_path_factory.mktemp("color_reference")
    job = write_job(d / "job.yaml", vllm_url, source__limit=6, source__repeats=3, output__rows_per_shard=3,
                    llm__cache_dir=str(d / "llm_cache"),
                    stages__instruct={"actors": 1, "num_cpus": 0.25, "batch_size": 2},
                    stages__cpu={"actors": 1, "num_cpus": 0.25, "batch_size": 2},
                    stages__filter={"actors": 1, "num_cpus": 0.25, "batch_size": 2})
    p = run_cli("run", str(job), "--out", str(d / "clean"))      # with the progress display: test_job checks it
    (d / "console.txt").write_text(p.stderr)
    rows = _rows(d / "clean")
    assert len({r["id"] for r in rows}) == len(rows) == 18
    return {"job": job, "out": d / "clean", "rows": rows, "n_shards": 6}
