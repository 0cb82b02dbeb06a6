"""The "local" region task (Emu Edit): replace one object of the scene by a different one
("turn the cat into a fox"). The pair: base x generated from the caption (or the row's photo), the
mask of the original object, mask-blended prompt-to-prompt to the output caption; ten candidates
with guidance, N_c, N_s and blend_s sampled (pipeline/diffusion/recipes.py).

Answer keys (all strings): ``instruction``; ``original_object`` — the object to change, a short
detector phrase that appears in the input caption; ``edited_object`` — what it becomes, which
appears in ``output_caption`` and has a different head noun; ``output_caption``.

The instruction must name both (head nouns): which object changes — a caption may hold a cat and a
vase — and what it becomes; "make it a fox" says neither which object nor, for "turn the cat into
a wolf" over a fox pair, the right result.
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

    @classmethod
    def has_generator(cls) -> bool:
        # the pair is made by the diffusion stages (pipeline/stages/diffusion.py, recipe in
        # pipeline/diffusion/recipes.py), not by make_pair: the candidates need the UNet batch
        return True

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        original, edited, output = region_fields(answer)
        if not appears_in(original, caption):
            return "original_not_in_caption"
        if not appears_in(edited, output):
            return "edited_not_in_output"
        if head_noun(edited) == head_noun(original):
            return "object_unchanged"
        instruction = str(answer.get("instruction") or "")
        if not appears_in(original, instruction):
            return "original_not_in_instruction"
        if not appears_in(edited, instruction):
            return "edited_not_in_instruction"
        return None
