"""Instruction stage: one LLM agent per task writes the instruction for each sample.

    1. caption checks (empty, too long)
    2. the task's plan: its random parameters, drawn before the LLM call so the instruction can
       describe them
    3. the few-shot prompt (shuffled, 60% kept, verbs swapped; all from the sample's seed)
    4. the backend, all rows of the batch at once (concurrent HTTP or one batched engine call);
       answers cached by a hash of the request so a rerun replays them. A request the world failed
       (server down or restarting, timeout, HTTP 429/5xx) is asked again once the server answers
       its health check; after ``llm.wait_s`` without one the stage raises WorldFailure and the job
       stops with the shard uncommitted. It never becomes a reject.
    5. checks: JSON, schema, output caption differs, instruction length, the task's own checks;
       an invalid answer is retried with a new seed, then rejected with the last reason
    6. possessive object phrases ("a dog's tail") get a second prompt for the object alone; both
       phrases are kept (`<key>_plain`)
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np

from pipeline.faults import WorldFailure

from pipeline.llm.answers import OBJECT_KEYS, instruction_issue, validate_answer
from pipeline.llm.backends import ChatRequest, ChatResult
from pipeline.llm.cache import AnswerCache, request_key
from pipeline.llm.prompt import build, load_prompt
from pipeline.models.provenance import add_models
from pipeline.schema import reject
from pipeline.stages.base import Stage
from tasks import get_task
from tasks.phrases import is_possessive, strip_possession

log = logging.getLogger("pairforge")


def _local(p: str) -> str:
    from pipeline.config import REPO_ROOT
    return str(p if p.startswith("/") else REPO_ROOT / p)


def make_backend(llm):
    """Backend named by the config (imports of torch / vLLM stay inside the chosen backend)."""
    from pipeline.llm import backends as B

    local = _local
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


def llm_ref(llm, backend) -> str:
    """The LLM's provenance reference: the served / reported name, with the checksum of its model
    folder when that folder is on this machine (the folder a vLLM server says it loaded, or the
    configured one of the in-process backends); a remote server's model is its name only."""
    import os

    from pipeline.models.provenance import model_ref

    if backend.name == "vllm-openai":
        root = backend.model_root() if hasattr(backend, "model_root") else None
        path = root if root and os.path.isdir(root) else None
    else:
        path = _local(llm.model_path or llm.launch.model_dir)
    return model_ref(backend.model, path=path)


class InstructStage(Stage):
    name = "instruct"
    resources_key = "instruct"

    def setup(self) -> None:
        self.llm = self.cfg.llm
        self.backend = make_backend(self.llm)
        self.cache = AnswerCache(self.llm.cache_dir if self.llm.cache else None)
        self.model_refs = {"llm": llm_ref(self.llm, self.backend)}       # once per actor

    def shared_times(self, share: float) -> dict[str, tuple[float, float, float]]:
        """The LLM server's time (vllm-openai only; the other backends run inside this actor, whose
        own num_cpus/num_gpus already count them). The instruct actors' requests share the server's
        batches, so while one actor works on a batch the server is 1/actors of the time its own:
        row's server-seconds = row's share / instruct actors, times what the server holds
        (stages.llm_server). An idle, unsaturated server is still held: this undercounts such a
        job's server cost and is exact for a saturated one, which is what a sized cluster runs."""
        if self.llm.backend != "vllm-openai":
            return {}
        srv, n = self.cfg.stages.llm_server, self.cfg.stages.instruct.actors
        w = share / n
        return {"llm_server": (w, w * srv.num_cpus, w * srv.num_gpus)}

    # ---------------------------------------------------------------- LLM round trip with cache
    def _ask(self, prompts: list, schemas: list[dict], seeds: list[int]) -> list[ChatResult]:
        llm = self.llm
        reqs, keys = [], []
        for p, schema, seed in zip(prompts, schemas, seeds):
            schema = schema if llm.structured_output else None
            reqs.append(ChatRequest(messages=p.messages, seed=seed, temperature=llm.temperature, top_p=llm.top_p,
                                    max_tokens=llm.max_tokens, json_schema=schema))
            keys.append(request_key(self.backend.model, p.messages, seed, llm.temperature, llm.top_p,
                                    llm.max_tokens, schema))
        results: list[ChatResult | None] = []
        for k in keys:
            hit = self.cache.get(k)
            results.append(ChatResult(text=hit["text"], error=None, completion_tokens=hit.get("tokens", 0)) if hit else None)
        miss = [i for i, r in enumerate(results) if r is None]
        if miss:
            for i, res in zip(miss, self._generate([reqs[i] for i in miss])):
                results[i] = res
                if res.error is None and res.text is not None:
                    self.cache.put(keys[i], {"text": res.text, "tokens": res.completion_tokens})
        return results

    # A request that fails with a server error or a timeout while the server answers its health
    # check is asked this many times; then the request, not the world, is at fault: llm_error.
    # (429, "too many requests", is always the world: it is only ever waited out.)
    HEALTHY_TRIES = 3

    def _generate(self, reqs: list[ChatRequest]) -> list[ChatResult]:
        """The backend's answers, with the requests the world failed asked again once the server is
        back; none of the returned results is transient."""
        results = self.backend.generate(reqs)
        t0, tries = None, [0] * len(reqs)
        while True:
            bad = [i for i, r in enumerate(results) if r.transient]
            if not bad:
                return results
            t0 = t0 or time.monotonic()
            why = results[bad[0]].error
            if self._server_answers():
                for i in bad:
                    if not (results[i].error or "").startswith("http 429"):
                        tries[i] += 1
                        if tries[i] >= self.HEALTHY_TRIES:
                            results[i] = ChatResult(text=None, error=f"{results[i].error} (asked {tries[i]} times "
                                                    "while the server answered its health check)")
                bad = [i for i in bad if results[i].transient]
                if not bad:
                    return results
                self._check_deadline(t0, why)
                time.sleep(0.5 * 2 ** min(max(tries[i] for i in bad), 4))
            else:
                self._wait_for_server(t0, why)
            for i, res in zip(bad, self.backend.generate([reqs[i] for i in bad])):
                results[i] = res

    def _server(self) -> str:
        return f"LLM server {self.llm.url}" if self.llm.url else f"LLM backend {self.backend.name}"

    def _server_answers(self) -> bool:
        from pipeline.llm.backends import OpenAIServerBackend
        return not self.llm.url or OpenAIServerBackend.answers(self.llm.url, self.llm.api_key)

    def _check_deadline(self, t0: float, why: str) -> None:
        down = time.monotonic() - t0
        if down >= self.llm.wait_s:
            raise WorldFailure(f"{self._server()} did not answer for {down:.0f}s (llm.wait_s={self.llm.wait_s:g}): {why}")

    def _wait_for_server(self, t0: float, why: str) -> None:
        """Block until the server answers its model list, raising WorldFailure once ``llm.wait_s``
        has passed since the first failure."""
        wait_s, pause = self.llm.wait_s, 1.0
        while True:
            self._check_deadline(t0, why)
            down = time.monotonic() - t0
            log.warning("instruct: waiting for the %s (%s); down %.0fs, the job stops after %.0fs",
                        self._server(), why, down, wait_s)
            time.sleep(min(pause, max(0.0, wait_s - down)))
            pause = min(pause * 2, 15.0)
            if self._server_answers():
                return

    def _build(self, spec, query: str, seed: int):
        return build(spec, query, seed, keep_fraction=self.llm.keep_fraction,
                     shuffle=self.llm.shuffle_exemplars, swap=self.llm.swap_verbs)

    # ---------------------------------------------------------------- steps
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
        spec = load_prompt(task.prompt_file.removesuffix(".yaml"))
        return {"row": row, "task": task, "plan": plan, "spec": spec, "schema": task.answer_schema(spec.answer_schema, plan),
                "query": task.llm_query(cap, plan), "tries": 0, "tokens": 0}

    def _check(self, j: dict, text: str | None) -> tuple[dict | None, str | None, str]:
        cap = j["row"]["caption"]
        ans, reason, detail = validate_answer(text, j["spec"].answer_schema, cap)
        if ans is None:
            return None, reason, detail
        issue = instruction_issue(ans, cap, self.llm.min_instruction_chars, self.llm.max_instruction_chars)
        if issue:
            return None, *issue
        reason = j["task"].check_answer(cap, ans, j["plan"])
        return (None, reason, "") if reason else (ans, None, "")

    def _depossess(self, jobs: list[dict]) -> None:
        spec = load_prompt("depossess")
        todo = [(j, k) for j in jobs if "answer" in j for k in OBJECT_KEYS if is_possessive(j["answer"].get(k))]
        if not todo:
            return
        seeds = [(j["row"]["seed"] + 7 * (i + 1)) % (2**31 - 1) for i, (j, _) in enumerate(todo)]
        prompts = [self._build(spec, f"Phrase: {j['answer'][k]}", s) for (j, k), s in zip(todo, seeds)]
        for (j, k), res in zip(todo, self._ask(prompts, [spec.answer_schema] * len(todo), seeds)):
            ans, _, _ = validate_answer(res.text, spec.answer_schema, "")
            plain = ans.get("object") if ans else None
            # the answer must be a part of the phrase, not a new object; else the rule decides
            source = "llm" if plain and plain.lower() in j["answer"][k].lower() and not is_possessive(plain) else "rule"
            j["answer"][f"{k}_plain"] = plain if source == "llm" else strip_possession(j["answer"][k])
            j.setdefault("depossess", {})[k] = source
            j["tokens"] += res.completion_tokens or 0

    def process(self, rows: list[dict]) -> None:
        jobs = [j for j in (self._prepare(r) for r in rows) if j is not None]
        for attempt in range(self.llm.retries + 1):
            todo = [j for j in jobs if "answer" not in j and j["row"]["status"] == "pending"]
            if not todo:
                break
            for j in todo:
                j["llm_seed"] = (j["row"]["seed"] + 1_000_003 * attempt) % (2**31 - 1)
                j["prompt"] = self._build(j["spec"], j["query"], j["llm_seed"])
            results = self._ask([j["prompt"] for j in todo], [j["schema"] for j in todo], [j["llm_seed"] for j in todo])
            for j, res in zip(todo, results):
                j["tries"] += 1
                j["tokens"] += res.completion_tokens or 0
                if res.error is not None:
                    j["last"] = ("llm_error", res.error)
                    continue
                ans, reason, detail = self._check(j, res.text)
                if ans is None:
                    j["last"] = (reason, detail or (res.text or "")[:200])
                    continue
                j["answer"] = ans
        # (the same instruction twice for one caption is rejected when the shard is compacted,
        # pipeline/shards.py: here it would depend on which rows share this batch)
        if self.llm.depossess:
            self._depossess([j for j in jobs if "answer" in j])
        for j in jobs:
            row, p = j["row"], j.get("prompt")
            add_models(row, self.model_refs)
            row["llm"] = json.dumps({
                "backend": self.backend.name, "model": self.backend.model,
                "prompt_hash": p.prompt_hash if p else None, "prompt_file_hash": j["spec"].file_hash,
                "exemplar_ids": p.exemplar_ids if p else None, "intro_verb": p.intro_verb if p else None,
                "verb_swaps": p.verb_swaps if p else None, "seed": j.get("llm_seed"),
                "tries": j["tries"], "completion_tokens": j["tokens"], "depossess": j.get("depossess"),
            })
            if "answer" in j:
                row["answer"] = json.dumps(j["answer"], sort_keys=True)
            elif row["status"] == "pending":
                reason, detail = j.get("last", ("llm_error", "no answer"))
                reject(row, self.name, reason, detail)
