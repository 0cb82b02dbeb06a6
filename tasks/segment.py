"""The "segment" vision task (Emu Edit): the output is the input photo with one object's pixels
painted over ("segment the dog").

Agent: ``plan`` is empty, the query is the caption, and the agent answers with an instruction and
``edited_object``, the object to segment as a short detector phrase whose head noun must occur in
the caption and in the instruction — the same answer and checks as detect, so it subclasses
DetectTask.

Pair (made in the grounding stage): the stage detects the object and SAM cuts it out; ``make_pair``
paints the precise mask's pixels with a sampled colour at a sampled opacity (both in ``params``).
An empty mask is a counted reject (``empty_mask``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tasks import register
from tasks.base import Pair, SampleReject
from tasks.detect import DetectTask, check_image, sample_colour

OPACITY = (0.6, 1.0)


def paint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], opacity: float) -> np.ndarray:
    """Blend ``colour`` over the pixels where mask > 0; every other pixel stays exactly as it was."""
    out = image.copy()
    m = mask > 0
    out[m] = np.clip(np.rint((1 - opacity) * image[m].astype(np.float32) + opacity * np.float32(colour)), 0, 255
                     ).astype(np.uint8)
    return out


@register
class SegmentTask(DetectTask):
    name = "segment"
    prompt_file = "segment.yaml"

    def make_pair(self, image: np.ndarray, answer: dict[str, Any], plan: dict[str, Any],
                  rng: np.random.Generator, grounding=None) -> Pair:
        """``grounding``: the grounding stage's ``targets.Grounded`` with its precise mask."""
        check_image(image)
        if grounding is None or grounding.mask is None:
            raise SampleReject("no_grounding", f"{self.name} pairs are made in the grounding stage")
        mask = grounding.mask
        if mask.shape != image.shape[:2]:
            raise SampleReject("bad_mask", f"mask {mask.shape} for image {image.shape[:2]}")
        if not (mask > 0).any():
            raise SampleReject("empty_mask", f"no pixels for {grounding.phrase!r}")
        colour_name, rgb = sample_colour(rng)
        opacity = round(float(rng.uniform(*OPACITY)), 3)
        out = paint(image, mask, rgb, opacity)
        return Pair(input_image=image, output_image=out, mask=mask, mask_variant="precise",
                    params={"box": [round(float(v), 2) for v in grounding.box], "score": round(grounding.score, 4),
                            "phrase": grounding.phrase, "colour": colour_name, "rgb": list(rgb),
                            "opacity": opacity, "mask_fraction": round(float((mask > 0).mean()), 4)})
