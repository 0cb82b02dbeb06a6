"""The "background" region task (Emu Edit): replace the background / setting behind the subject
("put the dog on a snowy mountain pass"). Instruction agent only; the pair generator (inpaint the
complement of the foreground mask of the input photo, blend, best of 10 by CLIP) comes later.

Answer keys (all strings): ``instruction``; ``original_object`` — the current background or setting
as the caption states it, or "" when the caption states none; ``edited_object`` — the new background
("a snowy mountain pass"), which appears in ``output_caption`` and differs from the original
(the same phrase after normalisation, or a phrase the input caption already contains, counts as
unchanged: "a beach" for "a dog on a sunny beach"); ``output_caption``.
"""
from __future__ import annotations

from typing import Any

from tasks import register
from tasks.base import Task
from tasks.phrases import appears_in, contains_phrase, region_fields, same_phrase


@register
class BackgroundTask(Task):
    name = "background"
    stage = "diffusion"
    needs_input_image = True             # edits the background of a real photo
    prompt_file = "background.yaml"

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        original, edited, output = region_fields(answer)
        if not appears_in(edited, output):
            return "edited_not_in_output"
        if (original.strip() and same_phrase(edited, original)) or contains_phrase(caption, edited):
            return "background_unchanged"          # the "new" background is the caption's own
        return None
