#!/usr/bin/env python
"""Throughput of the LLM backends on the same few-shot JSON requests.

    .venv/bin/python tests/bench_llm_backends.py                 # server (16 concurrent) + transformers
    .venv/bin/python tests/bench_llm_backends.py --n 16 --skip-transformers
    .venv-llm/bin/python tests/bench_llm_backends.py --engine-only   # vllm.LLM in-process

Prints one line per backend: wall seconds, completion tokens, tokens/s, JSON-valid count.
Also importable: ``fewshot_requests`` builds the requests the tests use.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.llm.backends import ChatRequest  # noqa: E402

LLM_PYTHON = ROOT / ".venv-llm" / "bin" / "python"
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"

SYSTEM = ("You write one image-editing instruction for the given image caption and edit task. "
          "Answer with JSON only: {\"instruction\": str, \"target\": str}.")
SHOTS = [
    ("Caption: a red car parked on a street. Task: color change.",
     {"instruction": "make the car blue", "target": "car"}),
    ("Caption: a dog sitting on the grass. Task: remove object.",
     {"instruction": "remove the dog", "target": "dog"}),
    ("Caption: a bowl of apples on a table. Task: add object.",
     {"instruction": "add a banana next to the apples", "target": "banana"}),
]
QUERIES = [
    "a cat sleeping on a sofa", "a man riding a bicycle", "a lighthouse by the sea",
    "two cups of coffee on a desk", "a child holding a balloon", "a rocket on the launch pad",
    "a bird on a branch", "a plate of pasta", "an astronaut in a white suit",
    "a house with a green door", "a bus in the rain", "a vase of tulips",
    "a horse in a field", "a laptop next to a lamp", "a boat on a lake", "a snowy mountain",
]
TASKS = ["color change", "remove object", "add object", "replace object"]
SCHEMA = {
    "type": "object",
    "properties": {"instruction": {"type": "string"}, "target": {"type": "string"}},
    "required": ["instruction", "target"],
    "additionalProperties": False,
}


def fewshot_messages(i: int) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM}]
    for q, a in SHOTS:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": json.dumps(a)}]
    q = QUERIES[i % len(QUERIES)]
    msgs.append({"role": "user", "content": f"Caption: {q}. Task: {TASKS[i % len(TASKS)]}."})
    return msgs


REQUESTS = "toy"   # "agents": the real agent prompts (set by --requests)


def agent_requests(n: int, json_schema: bool = False, max_tokens: int = 160, seed0: int = 0) -> list[ChatRequest]:
    """The pipeline's real requests: every task's agent prompt (shuffled, 60%, verb swaps) on the
    evaluation captions, tasks round-robin — what the instruct stage sends."""
    from pipeline.llm.prompt import build, load_prompt
    from tasks import get_task, with_agents
    import numpy as np

    caps = [c for c in (ROOT / "pipeline" / "captions_eval.txt").read_text().splitlines() if c.strip()]
    tasks = with_agents()
    out = []
    for i in range(n):
        task = get_task(tasks[i % len(tasks)])
        cap = caps[i % len(caps)]
        spec = load_prompt(task.prompt_file.removesuffix(".yaml"))
        plan = task.plan(np.random.default_rng(seed0 + i), cap)
        p = build(spec, task.llm_query(cap, plan), seed0 + i)
        out.append(ChatRequest(messages=p.messages, seed=seed0 + i, max_tokens=max_tokens,
                               json_schema=spec.answer_schema if json_schema else None))
    return out


def fewshot_requests(n: int, json_schema: bool = False, max_tokens: int = 60,
                     seed0: int = 0) -> list[ChatRequest]:
    if REQUESTS == "agents" and n > 2:
        return agent_requests(n, json_schema=json_schema, seed0=seed0)
    return [ChatRequest(messages=fewshot_messages(i), seed=seed0 + i, max_tokens=max_tokens,
                        json_schema=SCHEMA if json_schema else None) for i in range(n)]


def valid_json(text: str | None) -> bool:
    if not text:
        return False
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("instruction"), str)


def report(label: str, results, wall: float) -> dict:
    toks = sum(r.completion_tokens for r in results)
    ok = sum(valid_json(r.text) for r in results)
    errs = [r.error for r in results if r.error]
    row = dict(backend=label, n=len(results), wall_s=round(wall, 2), completion_tokens=toks,
               tok_per_s=round(toks / wall, 1) if wall else 0.0, json_valid=ok, errors=len(errs))
    print(json.dumps(row), flush=True)
    if errs:
        print(f"  first error: {errs[0]}", flush=True)
    return row


def bench_server(n: int, concurrency: int, log_path: str, schema: bool) -> list[dict]:
    from pipeline.llm.backends import OpenAIServerBackend
    from pipeline.llm.server import VLLMServer

    rows = []
    with VLLMServer(python=LLM_PYTHON, model_dir=MODEL_DIR, served_name="smollm2-135m-instruct",
                    log_path=log_path, max_model_len=4096) as srv:
        print(f"server ready in {srv.startup_s:.1f}s at {srv.url} (log {log_path})", flush=True)
        be = OpenAIServerBackend(srv.url, srv.served_name, concurrency=concurrency)
        be.generate(fewshot_requests(2, max_tokens=8))  # warm-up
        for use_schema in ([False, True] if schema else [False]):
            reqs = fewshot_requests(n, json_schema=use_schema)
            t0 = time.perf_counter()
            res = be.generate(reqs)
            label = f"vllm-openai c={concurrency}" + (" +json_schema" if use_schema else "")
            rows.append(report(label, res, time.perf_counter() - t0))
            print(f"  sample: {res[0].text!r} structured={res[0].structured}")
        be.close()
    return rows


def bench_transformers(n: int, batch_size: int, dtype: str) -> dict:
    from pipeline.llm.backends import TransformersBackend

    t0 = time.perf_counter()
    be = TransformersBackend(str(MODEL_DIR), dtype=dtype, batch_size=batch_size)
    print(f"transformers model loaded in {time.perf_counter() - t0:.1f}s", flush=True)
    be.generate(fewshot_requests(2, max_tokens=4))  # warm-up
    reqs = fewshot_requests(n)
    t0 = time.perf_counter()
    res = be.generate(reqs)
    row = report(f"transformers {dtype} bs={batch_size}", res, time.perf_counter() - t0)
    print(f"  sample: {res[0].text!r}")
    be.close()
    return row


def bench_engine(n: int, schema: bool) -> list[dict]:
    from pipeline.llm.backends import VLLMEngineBackend

    t0 = time.perf_counter()
    be = VLLMEngineBackend(str(MODEL_DIR), model_name="smollm2-135m-instruct")
    print(f"vllm engine ready in {time.perf_counter() - t0:.1f}s", flush=True)
    be.generate(fewshot_requests(2, max_tokens=8))
    rows = []
    for use_schema in ([False, True] if schema else [False]):
        t0 = time.perf_counter()
        res = be.generate(fewshot_requests(n, json_schema=use_schema))
        rows.append(report("vllm-engine" + (" +json_schema" if use_schema else ""), res,
                           time.perf_counter() - t0))
        print(f"  sample: {res[0].text!r}")
    be.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--requests", choices=["toy", "agents"], default="toy",
                    help="toy: 3-shot toy prompts; agents: the real agent prompts of every task")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--no-schema", dest="schema", action="store_false")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--engine-only", action="store_true", help="run in .venv-llm")
    ap.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "bench_vllm_server.log"))
    a = ap.parse_args()
    global REQUESTS
    REQUESTS = a.requests
    if a.engine_only:
        bench_engine(a.n, a.schema)
        return
    if not a.skip_server:
        bench_server(a.n, a.concurrency, a.log, a.schema)
    if not a.skip_transformers:
        bench_transformers(a.n, a.batch_size, a.dtype)


if __name__ == "__main__":
    main()
