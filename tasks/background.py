"""The "background" region task (Emu Edit): replace the background / setting behind the subject
("put the dog on a snowy mountain pass"). The pair: the grounding stage's background mask of the
photo is inpainted with the output caption and blended with the input inside the mask; ten
candidates with their own noise and guidance, the filter keeps the best (pipeline/diffusion/inpaint.py).

Answer keys (all strings): ``instruction``; ``original_object`` — the current background or setting
as the caption states it, or "" when the caption states none; ``edited_object`` — the new background
("a snowy mountain pass"), which appears in ``output_caption`` and differs from the original
(the same phrase after normalisation, or a phrase the input caption already contains, counts as
unchanged: "a beach" for "a dog on a sunny beach"); ``output_caption``.

The instruction must name the new background (its head noun: "trail" of "a snowy mountain trail"),
or the pair teaches "put the dog somewhere cold" → a particular trail.
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

    @classmethod
    def has_generator(cls) -> bool:
        # the pair is made by the diffusion stages (pipeline/stages/diffusion.py, recipe in
        # pipeline/diffusion/recipes.py), not by make_pair: the candidates need the UNet batch
        return True

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        original, edited, output = region_fields(answer)
        if not appears_in(edited, output):
            return "edited_not_in_output"
        if (original.strip() and same_phrase(edited, original)) or contains_phrase(caption, edited):
            return "background_unchanged"          # the "new" background is the caption's own
        if not appears_in(edited, str(answer.get("instruction") or "")):
            return "background_not_in_instruction"
        return None
