"""The "detect" vision task (Emu Edit): the output is the input photo with a box drawn around one
object ("draw a box around the dog").

Agent: ``plan`` is empty, the query is the caption, and the agent answers with an instruction and
``edited_object``, the object to locate as a short detector phrase whose head noun must occur in
the caption and in the instruction (the box is drawn around that object: "find it", or "find the
rug" over a box around the dog, would teach the wrong request).

Pair (made in the grounding stage, ``stage = "grounding"``): the stage detects ``edited_object``
(or its de-possessed form) and hands the best detection to ``make_pair``, which draws the box's
outline in a colour and line width sampled per sample (both stored in ``params``). The mask of the
pair is the box (variant ``bbox``).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from tasks import register
from tasks.base import Pair, SampleReject, Task
from tasks.phrases import appears_in

# Saturated colours that stand out on photos; the name is stored so a later prompt can use it.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 35), "green": (30, 200, 60), "blue": (30, 90, 235), "yellow": (250, 220, 20),
    "magenta": (220, 40, 200), "cyan": (20, 210, 230), "orange": (250, 140, 20), "white": (255, 255, 255),
}
LINE_WIDTH_FRAC = (0.005, 0.02)      # of the image's shorter side
MIN_LINE_WIDTH = 2


def sample_colour(rng: np.random.Generator) -> tuple[str, tuple[int, int, int]]:
    name = list(PALETTE)[int(rng.integers(len(PALETTE)))]
    return name, PALETTE[name]


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise SampleReject("bad_input_image", f"want HxWx3 uint8, got {getattr(image, 'shape', None)} "
                                              f"{getattr(image, 'dtype', None)}")


def draw_box(image: np.ndarray, box, colour: tuple[int, int, int], width: int) -> np.ndarray:
    """The box outline drawn *inside* the box's pixel rectangle (so it stays in the image)."""
    from pipeline.grounding.masks import box_pixels

    out = image.copy()
    x0, y0, x1, y1 = box_pixels(box, image.shape[:2])
    for k in range(max(1, int(width))):        # nested 1-px outlines, outermost on the box's edge
        if x1 - 1 - k < x0 + k or y1 - 1 - k < y0 + k:
            break
        cv2.rectangle(out, (x0 + k, y0 + k), (x1 - 1 - k, y1 - 1 - k), colour, thickness=1)
    return out


@register
class DetectTask(Task):
    name = "detect"
    stage = "grounding"
    needs_input_image = True
    prompt_file = "detect.yaml"

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        obj = answer.get("edited_object", "")
        if not appears_in(obj, caption):
            return "object_not_in_caption"
        if not appears_in(obj, answer.get("instruction", "")):
            return "object_not_in_instruction"
        return None

    def make_pair(self, image: np.ndarray, answer: dict[str, Any], plan: dict[str, Any],
                  rng: np.random.Generator, grounding=None) -> Pair:
        """``grounding``: the grounding stage's ``targets.Grounded`` for ``edited_object``."""
        # 1. inputs
        check_image(image)
        if grounding is None:
            raise SampleReject("no_grounding", f"{self.name} pairs are made in the grounding stage")
        # 2. sampled look
        colour_name, rgb = sample_colour(rng)
        lo, hi = LINE_WIDTH_FRAC
        width = max(MIN_LINE_WIDTH, int(round(float(rng.uniform(lo, hi)) * min(image.shape[:2]))))
        # 3. draw
        from pipeline.grounding.masks import box_mask
        out = draw_box(image, grounding.box, rgb, width)
        return Pair(input_image=image, output_image=out, mask=box_mask(grounding.box, image.shape[:2]),
                    mask_variant="bbox",
                    params={"box": [round(float(v), 2) for v in grounding.box], "score": round(grounding.score, 4),
                            "phrase": grounding.phrase, "colour": colour_name, "rgb": list(rgb),
                            "line_width": width})
