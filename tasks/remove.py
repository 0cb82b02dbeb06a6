"""The "remove" region task (Emu Edit): remove one object from the scene ("take the vase off the
table"). The pair: x generated from the caption (or the row's photo), the object masked,
mask-blended prompt-to-prompt to y with the output caption (pipeline/diffusion/recipes.py).

Answer keys (all strings): ``instruction``; ``original_object`` — the object to remove, a short
detector phrase that appears in the input caption; ``edited_object`` — always ""; ``output_caption``
— the scene without it (the object's head noun must not appear in it).

The instruction must name the object (its head noun, plurals folded: "remove the vases" names
"the vase") and ask for a removal (tasks/removal_words.py): a pair that removes the vase under
"remove the cat" or "make the vase blue" teaches the wrong meaning.
"""
from __future__ import annotations

from typing import Any

from tasks import register
from tasks.base import Task
from tasks.phrases import appears_in, region_fields
from tasks.removal_words import asks_removal


@register
class RemoveTask(Task):
    name = "remove"
    stage = "diffusion"
    needs_input_image = False            # the base image is generated from the caption
    prompt_file = "remove.yaml"

    @classmethod
    def has_generator(cls) -> bool:
        # the pair is made by the diffusion stages (pipeline/stages/diffusion.py, recipe in
        # pipeline/diffusion/recipes.py), not by make_pair: the candidates need the UNet batch
        return True

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        original, edited, output = region_fields(answer)
        if edited.strip():                             # the schema also says so (maxLength 0)
            return "edited_not_empty"
        if not appears_in(original, caption):
            return "original_not_in_caption"
        if appears_in(original, output):
            return "removed_object_still_in_output"
        instruction = str(answer.get("instruction") or "")
        if not appears_in(original, instruction):
            return "original_not_in_instruction"
        if not asks_removal(instruction):
            return "not_a_removal"
        return None
