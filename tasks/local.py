"""The "local" region task (Emu Edit): replace one object of the scene by a different one
("turn the cat into a fox"). Instruction agent only; the pair generator (mask-blended
prompt-to-prompt from the base image generated from the caption) comes later.

Answer keys (all strings): ``instruction``; ``original_object`` — the object to change, a short
detector phrase that appears in the input caption; ``edited_object`` — what it becomes, which
appears in ``output_caption`` and has a different head noun; ``output_caption``.
"""
from __future__ import annotations

from typing import Any

from tasks import register
from tasks.base import Task
from tasks.phrases import appears_in, head_noun, region_fields


@register
class LocalTask(Task):
    name = "local"
    stage = "diffusion"
    needs_input_image = False            # the base image is generated from the caption
    prompt_file = "local.yaml"

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        original, edited, output = region_fields(answer)
        if not appears_in(original, caption):
            return "original_not_in_caption"
        if not appears_in(edited, output):
            return "edited_not_in_output"
        if head_noun(edited) == head_noun(original):
            return "object_unchanged"
        return None
