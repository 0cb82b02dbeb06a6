"""Normal maps from the depth map (real here: only the depth model is tiny).

The normalised inverse depth is treated as a height field facing the camera. Its image gradients
give the surface slope, the slope gives unit normals in the usual normal-map frame (x right = red,
y up = green, z toward the viewer = blue), and ``(n + 1) / 2`` is stored as RGB. A flat wall facing
the camera is (128, 128, 255); a surface turned to the right is redder, one turned up is greener.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.translate.config import NormalConfig
from pipeline.translate.maps import MapResult, check_not_blank


def normals_from_depth(depth: np.ndarray, strength: float = 1.0, smooth_sigma: float = 0.0,
                       disparity: bool = True) -> np.ndarray:
    """HxW map in [0, 1] → HxWx3 float unit normals (x right, y up, z toward the viewer).

    ``disparity``: the map is inverse depth (1 = near, what DPT predicts); else 1 = far. Gradients
    are scaled by the image width, so a ramp over the whole width has slope ``strength``."""
    d = depth.astype(np.float32)
    if smooth_sigma > 0:
        d = cv2.GaussianBlur(d, (0, 0), smooth_sigma, borderType=cv2.BORDER_REFLECT_101)
    # height toward the viewer: disparity grows toward the camera, depth away from it
    height = d if disparity else -d
    scale = float(strength) * d.shape[1]
    dh_dcol = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101) / 8.0 * scale
    dh_drow = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101) / 8.0 * scale
    # surface (x, y_up, h(x, y_up)); rows grow downwards, so dh/dy_up = -dh/drow
    n = np.stack([-dh_dcol, dh_drow, np.ones_like(d)], axis=-1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def normals_to_rgb(n: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((n + 1.0) * 127.5), 0, 255).astype(np.uint8)


class NormalAnnotator:
    def __init__(self, depth_annotator, cfg: NormalConfig, min_std: float):
        self.depth, self.cfg, self.min_std = depth_annotator, cfg, min_std

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MapResult:
        d = self.depth.relative_depth(image)
        out = normals_to_rgb(normals_from_depth(d, self.cfg.strength, self.cfg.smooth_sigma, disparity=True))
        check_not_blank(out, self.min_std, "normal")
        return MapResult(out, {"annotator": "normals_from_depth", "model": self.depth.estimator.spec,
                               "strength": self.cfg.strength, "smooth_sigma": self.cfg.smooth_sigma,
                               "frame": "x right = R, y up = G, z to viewer = B"})
