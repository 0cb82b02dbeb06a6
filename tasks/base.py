"""The task interface: what a new task implements.

A task decides three things and nothing else:
  1. ``plan``      — the random parameters of one sample, drawn *before* the LLM call, so the agent
                     can be told what the pair will show (e.g. "strong blur") and its instruction
                     matches the pixels;
  2. ``llm_query`` — the user message the task's agent answers (the caption, plus the plan when the
                     instruction must describe it);
  3. ``make_pair`` — turn (input image, the agent's answer, the plan) into the pair.

Which actor runs ``make_pair`` is named by ``stage`` (stages group tasks by the hardware they need,
not by task). Everything a task returns is JSON-serialisable and lands in the row's ``params``.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


class SampleReject(Exception):
    """Raised by a task when one sample cannot be made; ``reason`` is a short snake_case code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Pair:
    input_image: np.ndarray          # HxWx3 uint8 RGB
    output_image: np.ndarray         # HxWx3 uint8 RGB
    params: dict[str, Any] = field(default_factory=dict)   # everything sampled, JSON-serialisable
    mask: np.ndarray | None = None   # HxW uint8, 255 = edited region (None for whole-image tasks)
    mask_variant: str | None = None


class Task(ABC):
    name: ClassVar[str]
    task_id: ClassVar[int]                 # stable small int for the trainer's task embedding
    stage: ClassVar[str]                   # "cpu" | later "diffusion", "grounding", ...
    needs_input_image: ClassVar[bool] = True
    prompt_file: ClassVar[str]             # file name under prompts/

    def plan(self, rng: np.random.Generator, caption: str) -> dict[str, Any]:
        return {}

    def llm_query(self, caption: str, plan: dict[str, Any]) -> str:
        return f"Caption: {caption.strip()}"

    def answer_schema(self, schema: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
        """The JSON schema the server constrains this sample's answer to: the prompt file's schema,
        narrowed by a task whose plan fixes part of the answer (text: which fields an operation
        fills). A constraint here costs nothing; the same mistake caught by ``check_answer`` costs
        an LLM round trip. ``check_answer`` still checks, for backends without structured output."""
        return schema

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        """Task-specific answer check after schema validation; return a reject reason (a short
        snake_case code, counted in the statistics) or None."""
        return None

    def make_pair(self, image: np.ndarray, answer: dict[str, Any], plan: dict[str, Any],
                  rng: np.random.Generator) -> Pair:
        """Make the pair; raise SampleReject for a sample that cannot be made.

        A task whose generator has not landed yet keeps this default: it has an instruction agent
        (usable by `pairforge agents-report` and instruction-only runs) but jobs refuse it."""
        raise SampleReject("no_generator", f"task {self.name} has no pair generator yet")

    @classmethod
    def has_generator(cls) -> bool:
        return cls.make_pair is not Task.make_pair
