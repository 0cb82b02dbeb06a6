"""What every annotator shares: the map type, blank-map rejection, resizing back to the photo."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from tasks.base import SampleReject


@dataclass
class MapResult:
    image: np.ndarray                                      # HxWx3 uint8 RGB, the photo's size
    params: dict[str, Any] = field(default_factory=dict)   # annotator, model id, thresholds, ...


def to_photo_size(arr: np.ndarray, shape: tuple[int, ...], interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Resize a model-resolution map (HxW or HxWxC) to the photo's height and width."""
    h, w = shape[:2]
    if arr.shape[:2] == (h, w):
        return arr
    return cv2.resize(arr, (w, h), interpolation=interpolation)


def rgb3(gray: np.ndarray) -> np.ndarray:
    """HxW uint8 → HxWx3 (maps are stored as RGB like every image of the record)."""
    return np.repeat(gray[..., None], 3, axis=2) if gray.ndim == 2 else gray


def check_not_blank(image: np.ndarray, min_std: float, what: str) -> None:
    """A constant map teaches nothing and would make a pair of noise: reject it, do not store it."""
    std = float(image.astype(np.float32).std())
    if std < min_std:
        raise SampleReject("empty_map", f"{what} map is blank (pixel std {std:.2f} < translation.min_map_std={min_std})")
