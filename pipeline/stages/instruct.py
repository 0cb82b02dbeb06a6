"""Instruction stage: one LLM agent per task writes the instruction for each sample.

Per row: caption checks → the task's plan (its random parameters, drawn before the LLM call so the
instruction can describe them) → the few-shot prompt (shuffled, 60% kept, verbs swapped; seeded)
→ the backend, all rows of the batch at once → JSON parse + schema + task checks → on an invalid
answer a retry with a new seed, then a reject with the last reason. Answers are cached by a hash
of the request, so a rerun replays them.
"""
from __future__ import annotations

import json

import numpy as np

from pipeline.llm.answers import validate_answer
from pipeline.llm.backends import ChatRequest, ChatResult
from pipeline.llm.cache import AnswerCache, request_key
from pipeline.llm.prompt import build, load_prompt
from pipeline.schema import reject
from pipeline.stages.base import Stage
from tasks import get_task


def make_backend(llm):
    """Backend named by the config (imports of torch / vLLM stay inside the chosen backend)."""
    from pipeline.config import REPO_ROOT
    from pipeline.llm import backends as B

    def local(p):
        return str(p if p.startswith("/") else REPO_ROOT / p)

    if llm.backend == "vllm-openai":
        if not llm.url:
            raise ValueError("llm.url is empty: the runner launches the server and fills it in; "
                             "set llm.url to use a running server")
        return B.OpenAIServerBackend(llm.url, llm.model, api_key=llm.api_key, concurrency=llm.concurrency,
                                     timeout_s=llm.timeout_s, structured_output=llm.structured_output)
    path = local(llm.model_path or llm.launch.model_dir)
    if llm.backend == "vllm-engine":
        return B.VLLMEngineBackend(path, model_name=llm.model, **llm.engine_kwargs)
    return B.TransformersBackend(path)


class InstructStage(Stage):
    name = "instruct"
    resources_key = "instruct"

    def setup(self) -> None:
        self.llm = self.cfg.llm
        self.backend = make_backend(self.llm)
        self.cache = AnswerCache(self.llm.cache_dir if self.llm.cache else None)

    def _prepare(self, row: dict) -> dict | None:
        cap = row["caption"]
        if cap is None or not cap.strip():
            reject(row, self.name, "empty_caption")
            return None
        if len(cap) > self.cfg.max_caption_chars:
            reject(row, self.name, "caption_too_long", f"{len(cap)} characters > max_caption_chars={self.cfg.max_caption_chars}")
            return None
        task = get_task(row["task"])
        plan = task.plan(np.random.default_rng([row["seed"], 0x91A4]), cap)
        row["plan"] = json.dumps(plan, sort_keys=True)
        return {"row": row, "task": task, "spec": load_prompt(task.prompt_file.removesuffix(".yaml")),
                "query": task.llm_query(cap, plan), "tries": 0, "tokens": 0}

    def process(self, rows: list[dict]) -> None:
        jobs = [j for j in (self._prepare(r) for r in rows) if j is not None]
        for attempt in range(self.llm.retries + 1):
            todo = [j for j in jobs if "answer" not in j and j["row"]["status"] == "pending"]
            if not todo:
                break
            reqs, keys = [], []
            for j in todo:
                seed = (j["row"]["seed"] + 1_000_003 * attempt) % (2**31 - 1)
                p = build(j["spec"], j["query"], seed, keep_fraction=self.llm.keep_fraction)
                j.update(prompt=p, llm_seed=seed)
                schema = j["spec"].answer_schema if self.llm.structured_output else None
                reqs.append(ChatRequest(messages=p.messages, seed=seed, temperature=self.llm.temperature,
                                        top_p=self.llm.top_p, max_tokens=self.llm.max_tokens, json_schema=schema))
                keys.append(request_key(self.backend.model, p.messages, seed, self.llm.temperature,
                                        self.llm.top_p, self.llm.max_tokens, schema))
            results: list[ChatResult | None] = []
            for k in keys:
                hit = self.cache.get(k)
                results.append(ChatResult(text=hit["text"], error=None, completion_tokens=hit.get("tokens", 0)) if hit else None)
            miss = [i for i, r in enumerate(results) if r is None]
            if miss:
                fresh = self.backend.generate([reqs[i] for i in miss])
                for i, res in zip(miss, fresh):
                    results[i] = res
                    if res.error is None and res.text is not None:
                        self.cache.put(keys[i], {"text": res.text, "tokens": res.completion_tokens})
            for j, res in zip(todo, results):
                j["tries"] += 1
                j["tokens"] += res.completion_tokens or 0
                if res.error is not None:
                    j["last"] = ("llm_error", res.error)
                    continue
                ans, reason, detail = validate_answer(res.text, j["spec"].answer_schema, j["row"]["caption"])
                if ans is not None:
                    reason = j["task"].check_answer(j["row"]["caption"], ans, json.loads(j["row"]["plan"]))
                    detail = ""
                if reason:
                    j["last"] = (reason, detail)
                    continue
                j["answer"] = ans
        for j in jobs:
            row, p = j["row"], j.get("prompt")
            row["llm"] = json.dumps({
                "backend": self.backend.name, "model": self.backend.model,
                "prompt_hash": p.prompt_hash if p else None, "prompt_file_hash": j["spec"].file_hash,
                "exemplar_ids": p.exemplar_ids if p else None, "intro_verb": p.intro_verb if p else None,
                "verb_swaps": p.verb_swaps if p else None, "seed": j.get("llm_seed"),
                "tries": j["tries"], "completion_tokens": j["tokens"],
            })
            if "answer" in j:
                row["answer"] = json.dumps(j["answer"], sort_keys=True)
            elif row["status"] == "pending":
                reason, detail = j.get("last", ("llm_error", "no answer"))
                reject(row, self.name, reason, detail)
