"""Pixel-level checks for the "color" task: the change must be visible, and must not destroy the image.

Both filters are cheap (NumPy on the two images) and deterministic.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from filters.base import Candidate, Filter, Verdict


def _check_pair(c: Candidate) -> str | None:
    a, b = c.input_image, c.output_image
    for im in (a, b):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3:
            return "bad_image"
    if a.shape != b.shape:
        return "shape_mismatch"
    return None


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference over all pixels and channels, in [0, 1]."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() / 255.0)


def clipped_fractions(image: np.ndarray, low: int = 2, high: int = 253) -> tuple[float, float]:
    """(fraction of pixels <= low in all channels, fraction >= high in all channels)."""
    black = float(np.all(image <= low, axis=2).mean())
    white = float(np.all(image >= high, axis=2).mean())
    return black, white


class VisibleChangeFilter(Filter):
    """Reject pairs whose output is (nearly) the input: mean |out - in| / 255 below ``min_l1``.

    Score ``l1``. 0.008 keeps the mildest planned change (a 5x5 Gaussian blur on a smooth photo
    moves pixels by about 0.01) and drops no-op outputs such as a hue shift of a grey image.
    """

    name: ClassVar[str] = "visible_change"
    tasks: ClassVar[tuple[str, ...] | None] = ("color",)

    def __init__(self, min_l1: float = 0.008):
        self.min_l1 = float(min_l1)

    def __call__(self, c: Candidate) -> Verdict:
        bad = _check_pair(c)
        if bad:
            return Verdict(False, bad, {})
        l1 = mean_abs_diff(c.input_image, c.output_image)
        if l1 < self.min_l1:
            return Verdict(False, "no_visible_change", {"l1": l1}, f"l1 {l1:.4f} < min {self.min_l1}")
        return Verdict(True, None, {"l1": l1})


class ExposureFilter(Filter):
    """Reject outputs that the filters blew out.

    ``clipped_frac`` is the fraction of output pixels clipped in all three channels (<= 2 or >= 253).
    Rejected when it exceeds ``max_clipped`` and exceeds the input's fraction by ``min_increase``
    (an input that was already mostly black, e.g. a starfield, is not the filter's fault):
    "overexposed" when white clipping dominates, "underexposed" when black does. An output whose
    luma standard deviation fell below ``min_contrast_ratio`` times the input's is "washed_out"
    (score ``contrast_ratio``).
    """

    name: ClassVar[str] = "exposure"
    tasks: ClassVar[tuple[str, ...] | None] = ("color",)

    def __init__(self, max_clipped: float = 0.35, min_increase: float = 0.2,
                 min_contrast_ratio: float = 0.15, low: int = 2, high: int = 253):
        self.max_clipped = float(max_clipped)
        self.min_increase = float(min_increase)
        self.min_contrast_ratio = float(min_contrast_ratio)
        self.low, self.high = int(low), int(high)

    @staticmethod
    def _luma_std(image: np.ndarray) -> float:
        luma = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
        return float(luma.std())

    def __call__(self, c: Candidate) -> Verdict:
        bad = _check_pair(c)
        if bad:
            return Verdict(False, bad, {})
        in_black, in_white = clipped_fractions(c.input_image, self.low, self.high)
        out_black, out_white = clipped_fractions(c.output_image, self.low, self.high)
        clipped_in, clipped_out = in_black + in_white, out_black + out_white
        in_std = self._luma_std(c.input_image)
        ratio = self._luma_std(c.output_image) / in_std if in_std > 1e-6 else 1.0
        scores = {"clipped_frac": clipped_out, "contrast_ratio": ratio}
        if clipped_out > self.max_clipped and clipped_out - clipped_in >= self.min_increase:
            return Verdict(False, "overexposed" if out_white >= out_black else "underexposed", scores)
        if ratio < self.min_contrast_ratio:
            return Verdict(False, "washed_out", scores)
        return Verdict(True, None, scores)


__all__ = ["VisibleChangeFilter", "ExposureFilter", "mean_abs_diff", "clipped_fractions"]
