"""The "add" region task (Emu Edit): add one new object to the scene ("put a hat on the dog").
The pair: y generated from the output caption, the added object masked in y, mask-blended
prompt-to-prompt back to x with the input caption; the pair is (x, y) (pipeline/diffusion/recipes.py).

Answer keys (all strings): ``instruction``; ``original_object`` — always "" (nothing is replaced);
``edited_object`` — the added object, a short detector phrase that is NOT in the input caption and
IS in ``output_caption``; ``output_caption``.

The instruction must name the added object (its head noun): "put a hat on the dog" for a pair that
adds a scarf teaches the wrong object.
"""
from __future__ import annotations

from typing import Any

from tasks import register
from tasks.base import Task
from tasks.phrases import appears_in, region_fields


@register
class AddTask(Task):
    name = "add"
    stage = "diffusion"
    needs_input_image = False            # the base image is generated from the caption
    prompt_file = "add.yaml"

    @classmethod
    def has_generator(cls) -> bool:
        # the pair is made by the diffusion stages (pipeline/stages/diffusion.py, recipe in
        # pipeline/diffusion/recipes.py), not by make_pair: the candidates need the UNet batch
        return True

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        original, edited, output = region_fields(answer)
        if original.strip():                           # the schema also says so (maxLength 0)
            return "original_not_empty"
        if appears_in(edited, caption):
            return "edited_already_in_caption"
        if not appears_in(edited, output):
            return "edited_not_in_output"
        if not appears_in(edited, str(answer.get("instruction") or "")):
            return "edited_not_in_instruction"
        return None
