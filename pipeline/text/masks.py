"""The text mask: the matched OCR boxes, filled and grown a few pixels."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.text.ocr import OcrBox


def boxes_mask(shape: tuple[int, int], boxes: list[OcrBox], dilate_px: int) -> np.ndarray:
    """HxW uint8, 255 inside the (possibly rotated) quads grown by ``dilate_px``. OCR quads hug the
    glyphs, so anti-aliased edges and thin serifs poke out; without growing, inpainting smears them
    back in and OCR can still read the ghost."""
    h, w = shape
    m = np.zeros((h, w), np.uint8)
    for b in boxes:
        cv2.fillPoly(m, [np.round(np.array(b.quad, np.float32)).astype(np.int32)], 255)
    if dilate_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        m = cv2.dilate(m, k)
    return m


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive ends; None for an empty mask."""
    ys, xs = np.nonzero(mask > 127)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_inside_fraction(box: OcrBox, mask: np.ndarray) -> float:
    """Share of an OCR quad's area that lies inside ``mask`` (how "in the masked region" a box is)."""
    q = np.zeros(mask.shape[:2], np.uint8)
    cv2.fillPoly(q, [np.round(np.array(box.quad, np.float32)).astype(np.int32)], 1)
    area = int(q.sum())
    return float((q.astype(bool) & (mask > 127)).sum()) / area if area else 0.0


def stroke_mask(image: np.ndarray, boxes: list[OcrBox], dilate_px: int, max_fill: float = 0.6) -> np.ndarray:
    """HxW uint8, 255 on the glyph strokes inside the quads (grown by ``dilate_px``).

    Why strokes and not the whole box: an OCR box reaches the edge of the surface the text sits on
    (a sign's frame, a shirt's seam); inpainting a box that touches that edge smears the edge into
    the hole. Inside a box there are two populations, ink and surface: the pixels are projected on
    their main colour axis (PCA in Lab, so red-on-green text separates as well as black-on-white)
    and split by Otsu; ink is the smaller class. A box whose "ink" would
    fill more than ``max_fill`` of it (no clear split) keeps the whole box."""
    h, w = image.shape[:2]
    out = np.zeros((h, w), np.uint8)
    for b in boxes:
        quad = np.round(np.array(b.quad, np.float32)).astype(np.int32)
        x0, y0 = max(0, quad[:, 0].min()), max(0, quad[:, 1].min())
        x1, y1 = min(w, quad[:, 0].max() + 1), min(h, quad[:, 1].max() + 1)
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(inside, [quad - [x0, y0]], 1)
        lab = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
        sel = inside.reshape(-1).astype(bool)
        px = lab[sel] - lab[sel].mean(axis=0)
        _, _, vt = np.linalg.svd(px, full_matrices=False)
        proj = (lab - lab[sel].mean(axis=0)) @ vt[0]
        lo, hi = proj[sel].min(), proj[sel].max()
        if hi - lo < 1e-3:
            continue                    # flat box: nothing to erase
        u8 = np.clip((proj - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8).reshape(inside.shape)
        _, cls = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        # ink = the minority class (strokes cover well under half of a text box; the rim is no guide:
        # the box often runs along the frame of the sign, which has the ink's colour)
        ink = cls if cls[sel.reshape(cls.shape)].mean() < 0.5 else 1 - cls
        ink = ink * inside
        if ink.sum() > max_fill * inside.sum():
            ink = inside
        out[y0:y1, x0:x1] |= ink.astype(np.uint8) * 255
    if dilate_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        out = cv2.dilate(out, k)
    return out
