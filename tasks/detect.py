"""The "detect" vision task (Emu Edit): the output is the input photo with a box drawn around one
object ("draw a box around the dog").

Instruction agent only: ``plan`` is empty, the query is the caption, and the agent answers with an
instruction and ``edited_object``, the object to locate as a short detector phrase whose head noun
must occur in the caption. The pair generator (detector box drawn on the image, DESIGN.md §3) lands
later; until then ``make_pair`` keeps the base default ("no_generator").
"""
from __future__ import annotations

from typing import Any

from tasks import register
from tasks.base import Task
from tasks.phrases import appears_in


@register
class DetectTask(Task):
    name = "detect"
    stage = "grounding"
    needs_input_image = True
    prompt_file = "detect.yaml"


    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        if not appears_in(answer.get("edited_object", ""), caption):
            return "object_not_in_caption"
        return None
