"""Sketch maps: OpenCV Canny edges (real here), thresholds from the image median or sampled."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.translate.config import SketchConfig
from pipeline.translate.maps import MapResult, rgb3
from tasks.base import SampleReject


def auto_thresholds(gray: np.ndarray, sigma: float) -> tuple[float, float]:
    """The median rule: edges are judged relative to the image's own typical brightness, so dark and
    bright photos both get a sketch of similar density."""
    med = float(np.median(gray))
    return max(0.0, (1.0 - sigma) * med), min(255.0, (1.0 + sigma) * med)


def canny_edges(image: np.ndarray, low: float, high: float, blur_ksize: int = 0) -> np.ndarray:
    """HxWx3 uint8 RGB → HxW uint8 edge map (255 on edges)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if blur_ksize:
        gray = cv2.GaussianBlur(gray, (blur_ksize, blur_ksize), 0)
    return cv2.Canny(gray, float(low), float(high), L2gradient=True)


class SketchAnnotator:
    def __init__(self, cfg: SketchConfig):
        self.cfg = cfg

    def thresholds(self, image: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
        c = self.cfg
        if c.thresholds == "sampled":
            return float(rng.uniform(*c.low_range)), float(rng.uniform(*c.high_range))
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if c.blur_ksize:
            gray = cv2.GaussianBlur(gray, (c.blur_ksize, c.blur_ksize), 0)
        return auto_thresholds(gray, c.sigma)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MapResult:
        c = self.cfg
        low, high = self.thresholds(image, rng)
        edges = canny_edges(image, low, high, c.blur_ksize)
        frac = float((edges > 0).mean())
        if frac < c.min_edge_fraction:
            raise SampleReject("empty_map", f"sketch has {frac:.4%} edge pixels "
                               f"(< translation.sketch.min_edge_fraction={c.min_edge_fraction})")
        out = 255 - edges if c.line_style == "black_on_white" else edges
        return MapResult(rgb3(out), {"annotator": "canny", "low_threshold": round(low, 3),
                                     "high_threshold": round(high, 3), "threshold_mode": c.thresholds,
                                     "blur_ksize": c.blur_ksize, "line_style": c.line_style,
                                     "edge_fraction": round(frac, 5)})
