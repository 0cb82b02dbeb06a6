"""The ``judge`` block of a job: which VLM judges the finished pairs, how its rubric is weighted,
which threshold keeps a pair, and whether it writes the instruction again.

Off by default. The judge is a second served model: a vLLM OpenAI-compatible server given by
``url`` or launched by the job from ``launch`` (the same launcher and watch as the instruction LLM,
pipeline/llm/server.py). Thresholds work like the filters' (filters/config.py): absolute (``min``
on the weighted score, 0..1) or quantile (``keep_top``: keep the best fraction of the task's
samples, the bound calibrated on the job's own first samples and saved in OUT/calibration.json).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.judge.rubric import CRITERIA

_LAUNCH_DIR = "models/judge-idefics3-smollm2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class JudgeLaunch(_Strict):
    python: str = Field(".venv-llm/bin/python", description="Python of the vLLM environment; relative to the repo root.")
    model_dir: str = Field(_LAUNCH_DIR, description="VLM folder the launched server loads (the embedded one is "
                           "built by deploy/setup_llm_env.sh: deploy/build_judge_vlm.py); relative to the repo root.")
    port: int = Field(0, ge=0, le=65535, description="Port on 127.0.0.1; 0 picks a free one.")
    startup_timeout_s: float = Field(600, gt=0, description="Seconds to wait for the server's health check.")
    max_model_len: int = Field(2048, ge=256, description="Context the server allocates (prompt, image tokens, answer).")
    kv_cache_gb: float = Field(0.5, gt=0, description="KV cache the CPU server reserves (GiB); a GPU server "
                               "uses --gpu-memory-utilization in extra_args instead.")
    extra_args: list[str] = Field(default_factory=list, description="Extra arguments for vllm's api_server, "
                                  "e.g. [--tensor-parallel-size, '2'] on a GPU node.")
    restarts: int = Field(5, ge=0, le=100, description="Times the job restarts its judge server when it dies.")


class JudgeRule(_Strict):
    min: float | None = Field(None, ge=0, le=1, description="Absolute: reject a pair whose weighted score is below this.")
    keep_top: float | None = Field(None, gt=0, le=1, description="Quantile: keep this best fraction of the task's "
                                   "pairs; the bound is calibrated on the job's first samples.")

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.min is None) == (self.keep_top is None):
            raise ValueError("a judge rule is either absolute (min) or quantile (keep_top): give exactly one")
        return self


class RewriteConfig(_Strict):
    tasks: list[str] = Field(default_factory=list, description="Tasks whose instruction the judge writes again from "
                             "the actual pair (empty: none). Both instructions are kept on the row "
                             "(instruction_agent, instruction_rewrite).")
    train_on: Literal["agent", "rewrite"] = Field("agent", description="Which instruction goes into the `instruction` "
                                                  "column, the one the trainer reads by default: the agent's, or the "
                                                  "judge's rewrite where it wrote a valid one.")
    max_tokens: int = Field(200, ge=32, le=1024, description="Completion token limit of a rewrite. The schema caps "
                            "the instruction at max_tokens − 16 characters (and llm.max_instruction_chars), so "
                            "guided decoding can always close the JSON before the limit: a token is at least one "
                            "character.")


class JudgeConfig(_Strict):
    enabled: bool = Field(False, description="Run the VLM judge after the filters.")
    reject: bool = Field(True, description="Apply the threshold; off records the rubric scores and rejects nothing.")
    model: str = Field("judge-vlm", description="Model name served / reported in provenance.")
    url: str | None = Field(None, description="Base URL of a running OpenAI-compatible VLM server; empty: the job "
                            "launches one (see launch).")
    api_key: str | None = Field(None, description="Bearer token for the server, if it needs one.")
    launch: JudgeLaunch = Field(default_factory=JudgeLaunch, description="How the job starts its judge server.")
    tasks: list[str] | None = Field(None, description="Tasks the judge rates (null: every task).")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"following": 0.40, "realism": 0.25, "preservation": 0.20, "technical": 0.15},
        description="Weight of each rubric criterion in the score (normalised; Pico-Banana's by default).")
    rule: JudgeRule = Field(default_factory=lambda: JudgeRule(min=0.5), description="Threshold of every task "
                            "without its own in rules.")
    rules: dict[str, JudgeRule] = Field(default_factory=dict, description="Per task: its own threshold.")
    image_side: int = Field(256, ge=32, le=4096, description="Images are sent with their longer side at most this.")
    image_format: Literal["png", "jpeg"] = Field("png", description="Encoding of the images' data URLs.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of the judge (seeded per sample).")
    max_tokens: int = Field(64, ge=16, le=1024, description="Completion token limit of a rubric answer.")
    retries: int = Field(2, ge=0, le=10, description="Extra attempts (new seed) after an invalid answer; then the "
                         "sample is rejected as judge:invalid_answer.")
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight per actor.")
    timeout_s: float = Field(120, gt=0, description="Per-request timeout.")
    wait_s: float = Field(600, gt=0, description="How long the job waits for an unreachable judge server before it "
                          "stops with its shards uncommitted.")
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig, description="Instruction rewrite by the judge model.")
    calibrated: dict[str, dict[str, float]] | None = Field(
        None, description="Set by the job itself (from OUT/calibration.json): task → {min}. Leave empty.")

    @model_validator(mode="after")
    def _check(self):
        from tasks import TASK_NAMES
        bad = set(self.weights) - set(CRITERIA)
        if bad:
            raise ValueError(f"weights: unknown criteria {sorted(bad)} (known: {', '.join(CRITERIA)})")
        if any(w < 0 for w in self.weights.values()) or not sum(self.weights.values()) > 0:
            raise ValueError("weights: must be >= 0 with a positive sum")
        for where, names in (("rules", self.rules), ("tasks", self.tasks or []), ("rewrite.tasks", self.rewrite.tasks)):
            unknown = [t for t in names if t not in TASK_NAMES]
            if unknown:
                raise ValueError(f"{where}: unknown task(s) {unknown} (known: {', '.join(TASK_NAMES)})")
        return self

    def applies_to(self, task: str) -> bool:
        return self.enabled and (self.tasks is None or task in self.tasks)

    def rule_for(self, task: str) -> JudgeRule:
        return self.rules.get(task, self.rule)

    def needs_calibration(self) -> bool:
        from tasks import TASK_NAMES
        return self.enabled and self.reject and any(
            self.rule_for(t).keep_top is not None for t in TASK_NAMES if self.applies_to(t))

    def threshold(self, task: str) -> float | None:
        """The minimum weighted score that keeps a pair of ``task``; None: nothing decides (a
        quantile rule before calibration, i.e. the calibration pass itself)."""
        r = self.rule_for(task)
        if r.keep_top is None:
            return r.min
        cal = (self.calibrated or {}).get(task)
        return None if not cal else cal.get("min")
