"""Erasing text: fill the mask from its surroundings.

opencv (embedded default): ``cv2.inpaint``. TELEA (fast marching) is the default because text
holes are long thin strokes on mostly flat signs, where it fills smoothly and is faster than
Navier-Stokes; NS stays available (``text.inpaint_method``). Only masked pixels change.

diffusion (production): the 9-channel inpainting UNet of ``models.inpaint`` on a square crop
around the text, resized to ``text.diffusion_resolution``, with a "no text" prompt; the result is
resized back and pasted inside the mask only, so everything outside it is the input's pixels.
With ``tiny-random`` this path runs (tests use it) but paints noise: it shows the wiring, not quality.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from pipeline.text.masks import mask_bbox

_CV_FLAGS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


def inpaint_opencv(image: np.ndarray, mask: np.ndarray, radius: int, method: str = "telea") -> np.ndarray:
    m = (mask > 127).astype(np.uint8) * 255
    return cv2.inpaint(np.ascontiguousarray(image), m, float(radius), _CV_FLAGS[method])


def _crop_square(mask: np.ndarray, pad_frac: float = 0.5) -> tuple[int, int, int, int]:
    """A square around the mask's box with context on every side, clipped to the image (then
    no longer square; the resize to the working resolution absorbs it)."""
    h, w = mask.shape
    x0, y0, x1, y1 = mask_bbox(mask)
    side = int(max(x1 - x0, y1 - y0) * (1 + 2 * pad_frac)) + 8
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    sx, sy = min(side, w), min(side, h)
    ax = int(np.clip(cx - sx // 2, 0, w - sx))
    ay = int(np.clip(cy - sy // 2, 0, h - sy))
    return ax, ay, ax + sx, ay + sy


class DiffusionTextInpainter:
    """Loads ``models.inpaint`` once; ``__call__`` repaints one mask."""

    def __init__(self, spec: str, *, steps: int, guidance: float, resolution: int, prompt: str,
                 device: str = "auto"):
        from pipeline.models.sd import load_sd

        self.comps = load_sd(spec, role="inpaint", inpaint=True, device=device)
        self.spec, self.steps, self.guidance, self.prompt = spec, steps, guidance, prompt
        mult = self.comps.pixel_multiple
        self.resolution = max(mult, resolution // mult * mult)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        from pipeline.diffusion.inpaint import InpaintCandidate, inpaint_candidates

        x0, y0, x1, y1 = _crop_square(mask)
        crop, mcrop = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        r = self.resolution
        small = cv2.resize(crop, (r, r), interpolation=cv2.INTER_AREA)
        msmall = (cv2.resize(mcrop, (r, r), interpolation=cv2.INTER_NEAREST) > 127).astype(np.uint8) * 255
        # grow the small mask by one pixel so resizing back never leaves an unpainted rim
        msmall = cv2.dilate(msmall, np.ones((3, 3), np.uint8))
        out = inpaint_candidates(self.comps, small, msmall, self.prompt,
                                 [InpaintCandidate(self.guidance, int(seed))], steps=self.steps)[0]
        back = cv2.resize(out, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
        result = image.copy()
        inside = mcrop > 127
        result[y0:y1, x0:x1][inside] = back[inside]
        return result, {"crop": [x0, y0, x1, y1], "resolution": r, "steps": self.steps,
                        "guidance": self.guidance, "seed": int(seed), "prompt": self.prompt, "model": self.spec}
