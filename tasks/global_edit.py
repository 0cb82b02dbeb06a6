"""The "global" free-form task (Emu Edit): an edit of the whole image that is not a pure colour or
style filter — weather, season, time of day, lighting ("make it look like winter").

The module is ``global_edit`` because ``global`` is a Python keyword; the task name is "global".

``plan`` is empty, the query is the caption, and the agent answers with an instruction and the
caption of the edited image. The pair: prompt-to-prompt with a blank mask, blend_s ∈ [0.1, 0.2],
N_c, N_s ∈ [0.4, 0.9] (pipeline/diffusion/recipes.py).
"""
from __future__ import annotations

import re
from typing import Any

from tasks import register
from tasks.base import Task

_ARTICLES = frozenset({"a", "an", "the"})


def caption_words(text: str) -> list[str]:
    """Lowercase words without punctuation or articles: what is left when case, punctuation and
    articles are ignored."""
    return [w for w in re.split(r"[\W_]+", (text or "").lower()) if w and w not in _ARTICLES]


def too_similar(caption: str, output_caption: str) -> bool:
    """True when the two captions differ only by punctuation, case or articles."""
    return caption_words(caption) == caption_words(output_caption)


@register
class GlobalTask(Task):
    name = "global"
    stage = "diffusion"
    needs_input_image = False          # the base image is generated from the caption
    prompt_file = "global.yaml"

    @classmethod
    def has_generator(cls) -> bool:
        # the pair is made by the diffusion stages (pipeline/stages/diffusion.py, recipe in
        # pipeline/diffusion/recipes.py), not by make_pair: the candidates need the UNet batch
        return True


    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        if too_similar(caption, answer.get("output_caption", "")):
            return "output_too_similar"
        return None
