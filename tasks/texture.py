"""The "texture" region task (Emu Edit): change the material, surface or pattern of one object
("make the table marble"). The pair is made as for "local" (pipeline/diffusion/recipes.py).

Answer keys (all strings): ``instruction``; ``original_object`` — the object as it is, a short
detector phrase that appears in the input caption; ``edited_object`` — the same object with its new
texture ("a marble table"), which appears in ``output_caption``; ``output_caption``.

Checks: the original object is in the caption, the edited one in the output caption, the edited
phrase differs from the original after normalisation (the texture word makes the difference), and
both name the same thing (same head noun: a texture edit keeps the object, "local" swaps it).
The instruction names the object (head noun) and at least one word the edited phrase adds to the
original — the texture ("marble" for "the wooden table" → "a marble table"; a noun and its
adjective count as one: "gold" ~ "golden").
"""
from __future__ import annotations

from typing import Any

from tasks import register
from tasks.base import Task
from tasks.phrases import added_words, appears_in, head_noun, mentions_any, region_fields, same_phrase


@register
class TextureTask(Task):
    name = "texture"
    stage = "diffusion"
    needs_input_image = False            # the base image is generated from the caption
    prompt_file = "texture.yaml"

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
        if same_phrase(edited, original):
            return "object_unchanged"
        if head_noun(edited) != head_noun(original):
            return "texture_changes_object"
        instruction = str(answer.get("instruction") or "")
        if not appears_in(original, instruction):
            return "original_not_in_instruction"
        if not mentions_any(added_words(edited, original), instruction):
            return "texture_not_in_instruction"
        return None
