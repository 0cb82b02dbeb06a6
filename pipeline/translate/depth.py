"""Depth maps: DPT (``models.depth``, the same estimator the depth-L1 filter uses) → min-max
normalised relative inverse depth, near = bright, 8 bits, 3 channels at the photo's size."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.models.depth import DepthEstimator, normalise
from pipeline.translate.config import DepthMapConfig
from pipeline.translate.maps import MapResult, check_not_blank, rgb3, to_photo_size

COLORMAPS = {"inferno": cv2.COLORMAP_INFERNO, "turbo": cv2.COLORMAP_TURBO}


def depth_to_rgb(depth01: np.ndarray, colormap: str = "gray") -> np.ndarray:
    """[0, 1] map (1 = near) → HxWx3 uint8."""
    gray = np.clip(np.rint(depth01 * 255.0), 0, 255).astype(np.uint8)
    if colormap == "gray":
        return rgb3(gray)
    return cv2.cvtColor(cv2.applyColorMap(gray, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


class DepthAnnotator:
    def __init__(self, spec: str, cfg: DepthMapConfig, min_std: float, device: str = "cpu"):
        self.estimator = DepthEstimator(spec, device)
        self.cfg, self.min_std = cfg, min_std

    def relative_depth(self, image: np.ndarray) -> np.ndarray:
        """The photo's normalised inverse depth in [0, 1] (1 = nearest), at the photo's size."""
        pred = self.estimator.predict([image])[0]
        return normalise(to_photo_size(pred.astype(np.float32), image.shape))

    def __call__(self, image: np.ndarray, rng: np.random.Generator, depth01: np.ndarray | None = None) -> MapResult:
        d = self.relative_depth(image) if depth01 is None else depth01
        out = depth_to_rgb(d, self.cfg.colormap)
        check_not_blank(out, self.min_std, "depth")
        return MapResult(out, {"annotator": "dpt", "model": self.estimator.spec, "colormap": self.cfg.colormap,
                               "convention": "inverse depth, min-max normalised, near = bright"})
