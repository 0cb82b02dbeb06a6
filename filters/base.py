"""One filter interface: a filter looks at one finished pair and returns keep, reason and scores.

The filter stage runs every filter that applies to a sample's task, stores every score with the
row, and counts drops per reason and task. A new filter is one file in this package.
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
    mask: np.ndarray | None = None


@dataclass
class Verdict:
    keep: bool
    reason: str | None = None        # snake_case code when keep is False, prefixed by nothing
    scores: dict[str, float] = field(default_factory=dict)


class Filter(ABC):
    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...] | None] = None   # None = applies to every task

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    @abstractmethod
    def __call__(self, c: Candidate) -> Verdict: ...
