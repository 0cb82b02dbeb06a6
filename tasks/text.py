"""The "text" free-form task (Emu Edit): add, remove or replace text in a real photo.

``plan`` draws the operation uniformly from ``OPS``; the query tells the agent the caption and the
operation, and the agent answers with the instruction, the text before and after (``old_text`` ""
for add, ``new_text`` "" for remove), the font family description and colour name of the new text
(either may be "" for remove), and the caption of the edited photo.

The pair generator (OCR mask of the text, inpaint; add = inpainted -> original, remove = original ->
inpainted, replace = new text drawn on the inpainted region; DESIGN.md §3) lands later; until then
``make_pair`` keeps the base default ("no_generator").
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from tasks import register
from tasks.base import Task

OPS = ("add", "remove", "replace")
_QUOTES = "\"'\u2018\u2019\u201c\u201d`"


def _squash(s: str) -> str:
    """Case-folded, whitespace-collapsed, surrounding quote marks dropped: how texts are compared
    (a model that writes new_text as '"OPEN"' or old_text as '""' means OPEN and nothing)."""
    return re.sub(r"\s+", " ", (s or "").strip().strip(_QUOTES).strip()).casefold()


def render_query(caption: str, op: str) -> str:
    return f"Caption: {caption.strip()}\nOperation: {op}"


@register
class TextTask(Task):
    name = "text"
    stage = "grounding"
    needs_input_image = True
    prompt_file = "text.yaml"

    def plan(self, rng: np.random.Generator, caption: str) -> dict[str, Any]:
        return {"op": OPS[int(rng.integers(len(OPS)))]}

    def llm_query(self, caption: str, plan: dict[str, Any]) -> str:
        return render_query(caption, plan["op"])

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        op = plan.get("op")
        old, new = _squash(answer.get("old_text", "")), _squash(answer.get("new_text", ""))
        want_old, want_new = op in ("remove", "replace"), op in ("add", "replace")
        if op not in OPS or bool(old) != want_old or bool(new) != want_new:
            return "text_op_mismatch"
        if op == "replace" and old == new:
            return "text_unchanged"
        if want_new and new not in _squash(answer.get("instruction", "")):
            return "new_text_not_in_instruction"
        return None
