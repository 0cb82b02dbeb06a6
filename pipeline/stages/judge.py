"""Judge stage: a served VLM rates every finished pair on the rubric and may rewrite its instruction.

After the filters, for the pending rows of the tasks the judge covers (``judge.tasks``):
  1. both images go out as data URLs (longer side ``judge.image_side``) in an OpenAI multimodal
     chat request to the judge's vLLM server, with the rubric's JSON schema as ``response_format``
     (guided decoding: the answer is four integers 0..10); all rows of the batch at once,
     ``judge.concurrency`` in flight, answers cached by a hash of the request like the agents';
  2. an unusable answer is asked again with a new seed (``judge.retries``), then the sample is
     rejected as ``judge:invalid_answer``; a request the world failed (server down, timeout,
     HTTP 429/5xx) is asked again once the server answers, and after ``judge.wait_s`` the stage
     raises WorldFailure (the same loop as the instruction stage, InstructStage._generate);
  3. the weighted score (``judge.weights``) against the task's threshold (absolute ``min``, or the
     ``keep_top`` bound calibrated on the job's first samples): below it the sample is rejected as
     ``judge:<criterion>_low``, the criterion that cost the most points;
  4. rewrite (tasks in ``judge.rewrite.tasks``): a second request shows the judge only the two
     images and asks for the instruction; an unusable rewrite is recorded as such, never a reject.
Every rubric score goes to ``scores`` (judge, judge_following, ...), the judge's model, prompt
version, seed and rewrite to ``judge`` (the record's provenance.judge), the model's reference to
provenance.models.
"""
from __future__ import annotations

import json

from pipeline.judge.rubric import (CRITERIA, PROMPT_VERSION, REWRITE_PROMPT_VERSION, image_data_url, parse_rewrite,
                                   parse_rubric, prompt_hash, rewrite_messages, rewrite_schema, rubric_messages,
                                   rubric_schema, verdict, weighted)
from pipeline.llm.backends import ChatRequest, ChatResult, OpenAIServerBackend
from pipeline.llm.cache import AnswerCache, request_key
from pipeline.models.provenance import add_models
from pipeline.schema import reject
from pipeline.stages.base import Stage
from pipeline.stages.instruct import InstructStage

SEED_SALT = 0x1D6E


class JudgeStage(Stage):
    name = "judge"
    resources_key = "judge"

    # The instruction stage's loop for requests the world failed (wait for the server, ask again,
    # WorldFailure after wait_s) reads self.llm.{url, api_key, wait_s} and self.backend: the judge
    # config has those fields, so the loop is shared, not copied.
    HEALTHY_TRIES = InstructStage.HEALTHY_TRIES
    _generate = InstructStage._generate
    _server = InstructStage._server
    _server_answers = InstructStage._server_answers
    _check_deadline = InstructStage._check_deadline
    _wait_for_server = InstructStage._wait_for_server

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.judge.enabled

    def setup(self) -> None:
        self.jc = self.llm = self.cfg.judge
        if not self.jc.url:
            raise ValueError("judge.url is empty: the runner launches the judge server and fills it in; "
                             "set judge.url to use a running server")
        self.backend = OpenAIServerBackend(self.jc.url, self.jc.model, api_key=self.jc.api_key,
                                           concurrency=self.jc.concurrency, timeout_s=self.jc.timeout_s)
        cc = self.cfg.llm
        self.cache = AnswerCache(cc.cache_dir if cc.cache else None)
        self.schema = rubric_schema()
        self.refs = {"judge": self._model_ref()}                     # once per actor

    def _model_ref(self) -> str:
        import os

        from pipeline.models.provenance import model_ref
        root = self.backend.model_root()
        return model_ref(self.backend.model, path=root if root and os.path.isdir(root) else None)

    def wants(self, row: dict) -> bool:
        return (self.jc.applies_to(row.get("final_task") or row["task"])
                and row["input_png"] is not None and row["output_png"] is not None)

    # ---------------------------------------------------------------- requests with cache
    def _ask(self, reqs: list[ChatRequest]) -> list[ChatResult]:
        keys = [request_key(self.backend.model, r.messages, r.seed, r.temperature, r.top_p, r.max_tokens,
                            r.json_schema) for r in reqs]
        results: list[ChatResult | None] = []
        for k in keys:
            hit = self.cache.get(k)
            results.append(ChatResult(text=hit["text"], error=None, completion_tokens=hit.get("tokens", 0))
                           if hit else None)
        miss = [i for i, r in enumerate(results) if r is None]
        for i, res in zip(miss, self._generate([reqs[i] for i in miss]) if miss else []):
            results[i] = res
            if res.error is None and res.text is not None:
                self.cache.put(keys[i], {"text": res.text, "tokens": res.completion_tokens})
        return results

    # ---------------------------------------------------------------- steps
    def process(self, rows: list[dict]) -> None:
        jc = self.jc
        jobs = []
        for r in rows:                                                   # 1. the images, once per row
            answer = json.loads(r["answer"] or "{}")
            jobs.append({"row": r, "task": r.get("final_task") or r["task"],
                         "instruction": answer.get("instruction") or "", "tries": 0, "tokens": 0,
                         "in": image_data_url(r["input_png"], jc.image_side, jc.image_format),
                         "out": image_data_url(r["output_png"], jc.image_side, jc.image_format)})
        for attempt in range(jc.retries + 1):                            # 2. rubric, retried when unusable
            todo = [j for j in jobs if "scores" not in j]
            if not todo:
                break
            reqs = []
            for j in todo:
                j["seed"] = (j["row"]["seed"] + SEED_SALT + 1_000_003 * attempt) % (2**31 - 1)
                j["messages"] = rubric_messages(j["instruction"], j["in"], j["out"])
                reqs.append(ChatRequest(messages=j["messages"], seed=j["seed"], temperature=jc.temperature,
                                        top_p=1.0, max_tokens=jc.max_tokens, json_schema=self.schema))
            for j, res in zip(todo, self._ask(reqs)):
                j["tries"] += 1
                j["tokens"] += res.completion_tokens or 0
                if res.error is not None:
                    j["last"] = ("judge:llm_error", res.error)
                    continue
                scores, why = parse_rubric(res.text)
                if scores is None:
                    j["last"] = ("judge:invalid_answer", f"{why}: {(res.text or '')[:160]}")
                else:
                    j["scores"] = scores
        self._rewrite([j for j in jobs if "scores" in j and j["task"] in jc.rewrite.tasks])   # 4.
        for j in jobs:
            self._record(j)

    def _rewrite(self, jobs: list[dict]) -> None:
        if not jobs:
            return
        jc, llm = self.jc, self.cfg.llm
        # a babbling model's string must end before max_tokens, or the answer is cut mid-string
        # (the embedded random-weight judge did that to half its rewrites with a 60-token limit)
        schema = rewrite_schema(min(llm.max_instruction_chars, jc.rewrite.max_tokens - 16))
        reqs = [ChatRequest(messages=rewrite_messages(j["in"], j["out"]), seed=j["seed"], temperature=jc.temperature,
                            top_p=1.0, max_tokens=jc.rewrite.max_tokens, json_schema=schema) for j in jobs]
        for j, rq, res in zip(jobs, reqs, self._ask(reqs)):
            j["tokens"] += res.completion_tokens or 0
            ins, why = (None, res.error) if res.error else parse_rewrite(
                res.text, llm.min_instruction_chars, llm.max_instruction_chars)
            j["rewrite"] = {"instruction": ins, "issue": why or None, "prompt_version": REWRITE_PROMPT_VERSION,
                            "prompt_hash": prompt_hash(rq.messages)}

    def _record(self, j: dict) -> None:                                  # 3. weighted score, verdict
        jc, row = self.jc, j["row"]
        add_models(row, self.refs)
        threshold = jc.threshold(j["task"])
        info = {"model": self.backend.model, "prompt_version": PROMPT_VERSION,
                "prompt_hash": prompt_hash(j["messages"]) if "messages" in j else None, "seed": j.get("seed"),
                "tries": j["tries"], "completion_tokens": j["tokens"], "weights": jc.weights,
                "threshold": threshold, "rule": jc.rule_for(j["task"]).model_dump(exclude_none=True)}
        if "rewrite" in j:
            info["rewrite"] = j["rewrite"]
            info["train_on"] = jc.rewrite.train_on
        scores = j.get("scores")
        if scores is not None:
            info["criteria"] = {c: scores[c] for c in CRITERIA}
            info["score"] = weighted(scores, jc.weights)
            s = json.loads(row["scores"] or "{}")
            s.update({f"judge_{c}": v for c, v in scores.items()}, judge=info["score"])
            row["scores"] = json.dumps(s, sort_keys=True)
        row["judge"] = json.dumps(info, sort_keys=True)
        if scores is None:
            reason, detail = j.get("last", ("judge:llm_error", "no answer"))
            reject(row, self.name, reason, detail)
        elif jc.reject:
            reason, detail = verdict(scores, jc.weights, threshold)
            if reason:
                reject(row, self.name, reason, detail)
