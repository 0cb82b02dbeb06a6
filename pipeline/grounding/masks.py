"""Mask variants (Emu Edit: each region edit is tried with every variant, the best candidate kept).

All masks are HxW uint8, 255 = the region to edit. Sizes are fractions of the image's shorter
side, so a 512 px and a 2048 px photo get the same look (``GroundingConfig``).

  precise          the SAM mask of the detected object, cut to the detector's box (SAM pixels
                   outside its prompt box are leakage onto neighbouring things);
  dilated_blurred  precise, dilated by a disk and Gaussian-blurred for a soft edge; never below
                   precise (the object itself stays fully editable);
  bbox             the detector's box, grown by the same margin the dilation and the blur reach,
                   so precise ⊆ dilated_blurred ⊆ bbox always holds — the three are ever looser
                   versions of one region (the raw box is kept in ``grounding``);
  background       (background task) the complement of the foreground, widened into the
                   object's edge with a minimum filter on the foreground, then given a soft edge
                   with a Gaussian that only spreads it further into the object, never lowers it.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

PRECISE, DILATED_BLURRED, BBOX, BACKGROUND = "precise", "dilated_blurred", "bbox", "background"
REGION_VARIANTS = (PRECISE, DILATED_BLURRED, BBOX)


def _px(frac: float, hw: tuple[int, int]) -> int:
    return int(round(frac * min(hw)))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _blur_reach(sigma: float) -> int:
    """Pixels a Gaussian of this sigma spreads a mask: half the kernel cv2 uses below."""
    return int(math.ceil(3 * sigma)) if sigma > 0 else 0


def _gaussian(mask: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return mask
    k = 2 * _blur_reach(sigma) + 1
    return cv2.GaussianBlur(mask, (k, k), sigma, borderType=cv2.BORDER_REPLICATE)


def box_pixels(box, hw: tuple[int, int], margin: int = 0) -> tuple[int, int, int, int]:
    """Integer pixel rectangle [x0, x1) x [y0, y1) covering the float box, grown by ``margin``."""
    h, w = hw
    x0, y0, x1, y1 = box
    return (max(0, int(math.floor(x0)) - margin), max(0, int(math.floor(y0)) - margin),
            min(w, int(math.ceil(x1)) + margin), min(h, int(math.ceil(y1)) + margin))


def box_mask(box, hw: tuple[int, int], margin: int = 0) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    x0, y0, x1, y1 = box_pixels(box, hw, margin)
    m[y0:y1, x0:x1] = 255
    return m


def precise_mask(sam_mask: np.ndarray, box) -> np.ndarray:
    """SAM's bool mask cut to the detector's box, as uint8 0/255."""
    return (sam_mask.astype(bool) & (box_mask(box, sam_mask.shape) > 0)).astype(np.uint8) * 255


def dilated_blurred(precise: np.ndarray, dilate_frac: float, blur_frac: float) -> np.ndarray:
    hw = precise.shape
    r = _px(dilate_frac, hw)
    grown = cv2.dilate(precise, _disk(r)) if r > 0 else precise
    return np.maximum(_gaussian(grown, blur_frac * min(hw)), precise)


def bbox_variant(box, hw: tuple[int, int], dilate_frac: float, blur_frac: float) -> np.ndarray:
    margin = _px(dilate_frac, hw) + _blur_reach(blur_frac * min(hw))
    return box_mask(box, hw, margin)


def background_mask(foreground: np.ndarray, widen_frac: float, blur_frac: float) -> np.ndarray:
    """Complement of the foreground, widened by a minimum filter (erosion) of the foreground, with a
    Gaussian edge that spreads into the object and never lowers the widened background."""
    hw = foreground.shape
    r = _px(widen_frac, hw)
    fg = cv2.erode(foreground, _disk(r), borderType=cv2.BORDER_REPLICATE) if r > 0 else foreground
    widened = 255 - fg
    return np.maximum(_gaussian(widened, blur_frac * min(hw)), widened)


def region_variants(sam_mask: np.ndarray, box, g) -> dict[str, np.ndarray]:
    """The three region-task variants for one detected object (``g``: GroundingConfig)."""
    p = precise_mask(sam_mask, box)
    return {PRECISE: p,
            DILATED_BLURRED: dilated_blurred(p, g.dilate_frac, g.blur_frac),
            BBOX: bbox_variant(box, p.shape, g.dilate_frac, g.blur_frac)}
