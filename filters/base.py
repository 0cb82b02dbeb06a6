"""One filter interface: a filter looks at one finished candidate pair and returns keep, reason and
scores.

The filter stage runs every filter that applies to a sample's task over every candidate of the
sample, stores every score, keeps the best passing candidate, and counts drops per reason and task.
Filters that need a model score a whole batch of candidates at once in ``prepare`` (one encoder call
for the batch) and read their scores back in ``__call__``. A new filter is one file in this package.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class Candidate:
    task: str
    input_image: np.ndarray          # HxWx3 uint8 RGB
    output_image: np.ndarray         # HxWx3 uint8 RGB
    instruction: str = ""
    input_caption: str = ""
    output_caption: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None   # the candidate's edit region (its mask variant)
    object_mask: np.ndarray | None = None   # the grounded object's precise mask, whatever the variant
    object_box: tuple[float, float, float, float] | None = None   # the grounded object's own box (x0, y0, x1, y1)
    answer: dict[str, Any] = field(default_factory=dict)   # the agent's answer (object phrases, ...)
    scores: dict[str, float] = field(default_factory=dict)  # filled by ``prepare`` of model filters


@dataclass
class Verdict:
    keep: bool
    reason: str | None = None        # snake_case code when keep is False
    scores: dict[str, float] = field(default_factory=dict)
    detail: str = ""                 # human-readable: which value against which threshold


class Filter(ABC):
    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...] | None] = None   # None = applies to every task

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def prepare(self, candidates: list[Candidate]) -> None:
        """Batch work before the per-candidate calls (model inference); default: nothing."""

    def model_refs(self) -> dict[str, str]:
        """provenance.models entries of the models this filter runs (pipeline/models/provenance.py);
        a filter without a model has none. Called once per actor by the filter stage."""
        return {}

    @abstractmethod
    def __call__(self, c: Candidate) -> Verdict: ...


def judge(cfg, task: str, scores: dict[str, float], metrics: tuple[str, ...]) -> tuple[str | None, str]:
    """Check ``scores`` against the task's rules (``FilterConfig.threshold``) for ``metrics``;
    returns (reason, detail) of the first failing rule, or (None, "")."""
    for m in metrics:
        th = cfg.threshold(task, m)
        if th is None or m not in scores:
            continue
        lo, hi = th
        v = scores[m]
        if lo is not None and v < lo:
            return f"{m}_low", f"{m} {v:.4f} < min {lo:.4f}"
        if hi is not None and v > hi:
            return f"{m}_high", f"{m} {v:.4f} > max {hi:.4f}"
    return None, ""
