"""The "text" free-form task (Emu Edit): add, remove or replace text in a real photo.

``plan`` draws the operation uniformly from ``OPS``; the query tells the agent the caption and the
operation, and the agent answers with the instruction, the text before and after (``old_text`` ""
for add, ``new_text`` "" for remove), the font family description and colour name of the new text
(either may be "" for remove), and the caption of the edited photo.

The pair generator is ``pipeline.text.editor.TextEditor`` (EasyOCR finds the named text, its mask is
inpainted; add = inpainted -> original, remove = original -> inpainted, replace = new text drawn on
the inpainted region in the chosen font and colour; DESIGN.md §3). The text stage
(``pipeline/stages/text.py``) holds one editor per actor and passes it in.

The checks tie the instruction to the pair: add and replace name the new text; remove names the
old text and asks for a removal (tasks/removal_words.py); texts are matched as whole words.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from tasks import register
from tasks.base import Pair, Task
from tasks.removal_words import asks_removal

OPS = ("add", "remove", "replace")
_QUOTES = "\"'\u2018\u2019\u201c\u201d`"


def _squash(s: str) -> str:
    """Case-folded, whitespace-collapsed, surrounding quote marks dropped: how texts are compared
    (a model that writes new_text as '"OPEN"' or old_text as '""' means OPEN and nothing)."""
    return re.sub(r"\s+", " ", (s or "").strip().strip(_QUOTES).strip()).casefold()


def _words(s: str) -> list[str]:
    return re.findall(r"[^\W_]+", (s or "").casefold())


def names_text(text: str, instruction: str) -> bool:
    """The text's words occur in the instruction, in order and as whole words, whatever the
    punctuation and case around them ("soup of the day - tomato!" names "Soup of the day, tomato";
    "number 142" does not name "42"). A text without letters or digits is matched as a string."""
    need, hay = _words(text), _words(instruction)
    if not need:
        return _squash(text) in _squash(instruction)
    n = len(need)
    return any(hay[i:i + n] == need for i in range(len(hay) - n + 1))


def render_query(caption: str, op: str) -> str:
    return f"Caption: {caption.strip()}\nOperation: {op}"


@register
class TextTask(Task):
    name = "text"
    stage = "text"
    needs_input_image = True
    prompt_file = "text.yaml"

    def plan(self, rng: np.random.Generator, caption: str) -> dict[str, Any]:
        return {"op": OPS[int(rng.integers(len(OPS)))]}

    def llm_query(self, caption: str, plan: dict[str, Any]) -> str:
        return render_query(caption, plan["op"])

    def answer_schema(self, schema: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
        # the operation decides which texts exist: add has no old text, remove no new text. Left
        # free, SmolLM2 copies the caption's sign text into old_text for most "add" plans.
        op = plan.get("op")
        if op not in OPS:
            return schema
        props = dict(schema["properties"])
        for key, filled in (("old_text", op in ("remove", "replace")), ("new_text", op in ("add", "replace"))):
            props[key] = {"type": "string", "minLength": 1} if filled else {"type": "string", "maxLength": 0}
        return {**schema, "properties": props}

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        op = plan.get("op")
        old, new = _squash(answer.get("old_text", "")), _squash(answer.get("new_text", ""))
        want_old, want_new = op in ("remove", "replace"), op in ("add", "replace")
        if op not in OPS or bool(old) != want_old or bool(new) != want_new:
            return "text_op_mismatch"
        if op == "replace" and old == new:
            return "text_unchanged"
        instruction = answer.get("instruction", "")
        if want_new and not names_text(new, instruction):
            return "new_text_not_in_instruction"
        if op == "add" and asks_removal(instruction):
            # "Remove the cat from the banner and print TABBY CAT": the pair only adds text
            return "removal_for_add"
        if op == "remove":
            # the pair erases old_text: the instruction names it and asks for it to go
            if not names_text(old, instruction):
                return "old_text_not_in_instruction"
            if not asks_removal(instruction):
                return "not_a_removal"
        return None

    def make_pair(self, image: np.ndarray, answer: dict[str, Any], plan: dict[str, Any],
                  rng: np.random.Generator, *, editor=None) -> Pair:
        """``editor``: the stage's ``TextEditor`` (OCR loaded once per actor); None builds one with
        the default ``TextConfig`` (loads EasyOCR: for scripts, not for a stage)."""
        if editor is None:
            from pipeline.text.config import TextConfig
            from pipeline.text.editor import TextEditor
            editor = TextEditor(TextConfig())
        return editor.make_pair(image, answer, plan, rng)
