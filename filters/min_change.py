"""A minimum-change floor per task: a pair whose output is (nearly) its input teaches nothing.

Runs first, for every task, before any score rule and before best-of-candidates selection, so a
no-op candidate can never be kept (score rules with calibrated quantiles otherwise pass noise: a
CLIP_dir of two almost identical images is a direction of nothing).

Where it measures (``region_of``):
  * region tasks (local, texture, add, remove): inside the object's precise mask (``mask > 0``)
    when the grounding stage made one, else inside the candidate's own mask — a 40 px object
    changed in a 512 px image is a real edit though the whole-image mean is tiny;
  * any other candidate with a mask (background's background mask, text's OCR boxes, segment's
    object, detect's box): inside that mask;
  * otherwise (color, global, style, translation tasks): the whole image.

Two numbers over the measured pixels: ``change_l1`` (mean |out − in| over channels, 0..1) and
``change_frac`` (fraction of pixels whose largest channel change exceeds ``delta`` levels, 8/255
by default — above JPEG/PNG round-off and the ±2-level noise of a no-op diffusion pass). A
candidate passes when either reaches the task's floor (``filters.min_change``); below both it is
rejected as ``no_change`` with the measured values in the detail.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from filters.base import Candidate, Filter, Verdict

# tasks whose change belongs to the grounded object: measured in its precise mask when present
OBJECT_TASKS = ("local", "texture", "add", "remove")


def _binary(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.max(axis=2)
    if m.shape != shape:
        return None
    m = m > 0
    return m if m.any() else None


def region_of(c: Candidate) -> tuple[np.ndarray | None, str]:
    """(boolean HxW region or None for the whole image, name of what was used)."""
    shape = c.input_image.shape[:2]
    if c.task in OBJECT_TASKS:
        m = _binary(c.object_mask, shape)
        if m is not None:
            return m, "object"
    m = _binary(c.mask, shape)
    if m is not None:
        return m, "mask"
    return None, "image"


def change_measures(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None,
                    delta: int = 8) -> tuple[float, float]:
    """(mean |a − b| in 0..1, fraction of pixels whose largest channel change exceeds ``delta``)
    over ``region`` (boolean HxW) or the whole image."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    if region is not None:
        d = d[region]                       # (N, 3)
    else:
        d = d.reshape(-1, d.shape[-1])
    if d.size == 0:
        return 0.0, 0.0
    return float(d.mean() / 255.0), float((d.max(axis=-1) > delta).mean())


class MinChangeFilter(Filter):
    name: ClassVar[str] = "min_change"

    def __init__(self, cfg):
        """``cfg``: the FilterConfig (``change_floor(task)``, ``min_change_delta``)."""
        self.cfg = cfg

    def __call__(self, c: Candidate) -> Verdict:
        a, b = c.input_image, c.output_image
        if a.shape != b.shape:
            return Verdict(False, "shape_mismatch", {}, f"input {a.shape} vs output {b.shape}")
        region, where = region_of(c)
        delta = int(self.cfg.min_change_delta)
        l1, frac = change_measures(a, b, region, delta)
        scores = {"change_l1": l1, "change_frac": frac}
        floor = self.cfg.change_floor(c.task)
        if floor is None or l1 >= floor.min_l1 or frac >= floor.min_frac:
            return Verdict(True, None, scores)
        return Verdict(False, "no_change", scores,
                       f"in {where}: change_l1 {l1:.4f} < min {floor.min_l1} and change_frac "
                       f"{frac:.4f} < min {floor.min_frac} (pixels changed by > {delta}/255)")


__all__ = ["MinChangeFilter", "change_measures", "region_of", "OBJECT_TASKS"]
