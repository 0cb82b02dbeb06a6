"""The "style" free-form task (Emu Edit): render a real photo in an artistic style ("as a
watercolour", "in the style of a 1950s comic").

``plan`` is empty, the query is the caption, and the agent answers with an instruction, the style
(a short phrase) and the caption of the stylised image, which must name the style. The pair:
Plug-and-Play on the DDIM-inverted photo, ten candidates (pipeline/diffusion/pnp.py, recipes.py).
"""
from __future__ import annotations

from typing import Any

from tasks import register
from tasks.base import Task
from tasks.phrases import normalise_words

# Words of a style phrase that do not name the style: "in the style of a ..." carries nothing.
_FUNCTION_WORDS = frozenset({
    "a", "an", "the", "of", "in", "on", "as", "with", "and", "or", "by", "to", "for", "from", "like",
    "style", "styled", "look", "version", "kind", "sort", "type", "its", "their", "this", "that",
})


def style_content_words(style: str) -> set[str]:
    """The normalised words of ``style`` that actually name it ("1950s comic book" ->
    {"1950", "comic", "book"})."""
    return {w for w in normalise_words(style) if w not in _FUNCTION_WORDS}


def style_in_text(style: str, text: str) -> bool:
    """True when at least one content word of ``style`` is among the normalised words of ``text``."""
    return bool(style_content_words(style) & set(normalise_words(text)))


@register
class StyleTask(Task):
    name = "style"
    stage = "diffusion"
    needs_input_image = True           # stylises a real photo
    prompt_file = "style.yaml"

    @classmethod
    def has_generator(cls) -> bool:
        # the pair is made by the diffusion stages (pipeline/stages/diffusion.py, recipe in
        # pipeline/diffusion/recipes.py), not by make_pair: the candidates need the UNet batch
        return True


    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        if not style_in_text(answer.get("style", ""), answer.get("output_caption", "")):
            return "style_not_in_output"
        return None
