"""What the grounding stage looks for in each task's image, and which masks it makes.

  local, texture, remove  → ``original_object`` (it is in the input image x); region variants
  add                     → ``edited_object`` (it is in the generated y, which sits in input_png
                            for the add flow); region variants
  detect, segment         → ``edited_object`` (the agent's object to box / paint); the pair
  background              → the caption's subject (below); the background variant

Background rule: the agent's ``original_object`` names the *current setting* ("a sandy beach"),
not the thing to keep, so the foreground is the caption's subject: its words up to the first word
that starts a modifier or a clause (a preposition, a participle such as "holding" / "sitting", any
other "-ing" word, "and", ",", a verb-like word from ``SUBJECT_STOPS``), at most six words.
"A golden retriever catching a frisbee in a park" → "a golden retriever"; "Two cats on a sofa"
→ "two cats". A possessive phrase's plain form is tried second, as for every task.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tasks.phrases import POSTMODIFIERS

REGION_TASKS = frozenset({"local", "texture", "remove", "add"})
PAIR_TASKS = frozenset({"detect", "segment"})
BACKGROUND_TASK = "background"
ANSWER_KEY = {"local": "original_object", "texture": "original_object", "remove": "original_object",
              "add": "edited_object", "detect": "edited_object", "segment": "edited_object"}
SUBJECT_STOPS = frozenset({"and", "is", "are", "was", "were", "has", "have", "sits", "stands", "lies", "looks",
                           "floats", "flies", "runs", "walks", "rests", "hangs", "grows", "waits", "posing"})
MAX_SUBJECT_WORDS = 6


@dataclass(frozen=True)
class Target:
    phrase: str               # what to ground first
    plain: str | None         # the de-possessed phrase, tried when the first finds nothing
    source: str               # where the phrase came from (answer key, or "caption_subject")


def grounds(task: str) -> bool:
    return task in ANSWER_KEY or task == BACKGROUND_TASK


def caption_subject(caption: str) -> str:
    words = re.findall(r"[\w'’-]+|,", caption or "")
    out = []
    for w in words:
        lw = w.lower()
        if out and (w == "," or lw in POSTMODIFIERS or lw in SUBJECT_STOPS or (lw.endswith("ing") and len(lw) > 4)):
            break
        out.append(w)
        if len(out) == MAX_SUBJECT_WORDS:
            break
    return " ".join(out).lower()


def target_for(task: str, answer: dict, caption: str) -> Target | None:
    """None when the row has nothing to ground (its task, or an empty phrase)."""
    if task == BACKGROUND_TASK:
        phrase = caption_subject(caption)
        return Target(phrase, None, "caption_subject") if phrase else None
    key = ANSWER_KEY.get(task)
    if key is None:
        return None
    phrase = str(answer.get(key) or "").strip()
    plain = str(answer.get(f"{key}_plain") or "").strip() or None
    if not phrase:
        return None
    return Target(phrase, plain if plain and plain != phrase else None, key)


@dataclass(frozen=True)
class Grounded:
    """One grounded object, as the stage hands it to a task's ``make_pair``."""
    box: tuple[float, float, float, float]   # the detector's box, x0 y0 x1 y1 pixels
    score: float
    phrase: str                              # the phrase that found it
    mask: Any = None                         # HxW uint8 precise mask (None when not segmented)
