"""Drawing new text into the inpainted region: colour from a name, size fitted to the box, the
box's own slant, and never a pixel outside the mask."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.text.ocr import OcrBox


# ----------------------------------------------------------------------------------------------
# colour
# ----------------------------------------------------------------------------------------------

def parse_color(name: str) -> tuple[int, int, int] | None:
    """RGB of a colour name as PIL knows it (CSS names, #hex): the whole name, then its words joined
    ("dark green" → darkgreen), then each word from the first ("navy blue" → navy, the more specific
    one; "bright red" → red, "bright" is no colour)."""
    from PIL import ImageColor

    s = (name or "").strip().lower()
    words = [w for w in s.replace("-", " ").split() if w]
    tries = [s, "".join(words), *words]
    for t in tries:
        if not t:
            continue
        try:
            return tuple(ImageColor.getrgb(t)[:3])
        except ValueError:
            continue
    return None


def _lum(rgb) -> float:
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2])


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two RGB colours, 1 (same) .. 21 (black on white)."""
    la, lb = sorted((_lum(a), _lum(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def pick_color(name: str, background: tuple[int, int, int], min_contrast: float) -> dict:
    """The colour to draw with, and how it was decided (stored in params)."""
    named = parse_color(name)
    bw = max(((0, 0, 0), (255, 255, 255)), key=lambda c: contrast_ratio(c, background))
    if named is None:
        return {"rgb": list(bw), "source": "contrast_fallback", "named_rgb": None, "adjusted": True,
                "contrast": round(contrast_ratio(bw, background), 2)}
    ratio = contrast_ratio(named, background)
    if ratio < min_contrast:
        return {"rgb": list(bw), "source": "contrast_adjusted", "named_rgb": list(named), "adjusted": True,
                "contrast": round(contrast_ratio(bw, background), 2), "named_contrast": round(ratio, 2)}
    return {"rgb": list(named), "source": "named", "named_rgb": list(named), "adjusted": False,
            "contrast": round(ratio, 2)}


# ----------------------------------------------------------------------------------------------
# geometry and size
# ----------------------------------------------------------------------------------------------

@dataclass
class TextFrame:
    cx: float
    cy: float
    width: float      # along the text direction
    height: float
    angle: float      # degrees, counter-clockwise positive (PIL's rotate convention)


def text_frame(boxes: list[OcrBox]) -> TextFrame:
    """Centre, size and slant of the region the matched boxes cover, measured in the text's own
    direction (mean angle of the boxes' top edges), so slanted signs get slanted text."""
    angles = []
    for b in boxes:
        (x0, y0), (x1, y1) = b.quad[0], b.quad[1]
        angles.append(math.atan2(y1 - y0, x1 - x0))
    a = float(np.mean(angles))
    pts = np.array([p for b in boxes for p in b.quad], np.float64)
    c = pts.mean(axis=0)
    rot = np.array([[math.cos(-a), -math.sin(-a)], [math.sin(-a), math.cos(-a)]])
    local = (pts - c) @ rot.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    mid = (lo + hi) / 2 @ np.linalg.inv(rot).T + c
    return TextFrame(float(mid[0]), float(mid[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]),
                     -math.degrees(a))


def fit_font_size(text: str, font_path: str, width: float, height: float, fill: float) -> int:
    """Largest size whose ink box fits ``fill`` of the frame (binary search over pixel sizes)."""
    from PIL import ImageFont

    lo, hi, best = 4, max(5, int(height * 2)), 0
    while lo <= hi:
        mid = (lo + hi) // 2
        x0, y0, x1, y1 = ImageFont.truetype(font_path, mid).getbbox(text, anchor="mm")
        if x1 - x0 <= width * fill and y1 - y0 <= height * fill:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def draw_text(image: np.ndarray, mask: np.ndarray, text: str, font_path: str, size: int,
              rgb: tuple[int, int, int], frame: TextFrame) -> np.ndarray:
    """``text`` centred on ``frame`` at its slant, alpha-composited, clipped to ``mask``."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, size)
    x0, y0, x1, y1 = font.getbbox(text, anchor="mm")
    pad = 4
    w, h = int(x1 - x0) + 2 * pad, int(y1 - y0) + 2 * pad
    layer = Image.new("L", (w, h), 0)
    ImageDraw.Draw(layer).text((w / 2 - (x0 + x1) / 2, h / 2 - (y0 + y1) / 2), text, font=font, fill=255,
                               anchor="mm")
    if abs(frame.angle) > 0.5:
        layer = layer.rotate(frame.angle, resample=Image.BICUBIC, expand=True)
    H, W = image.shape[:2]
    alpha = np.zeros((H, W), np.float32)
    lw, lh = layer.size
    ox, oy = int(round(frame.cx - lw / 2)), int(round(frame.cy - lh / 2))
    a = np.asarray(layer, np.float32) / 255.0
    sx0, sy0, sx1, sy1 = max(0, ox), max(0, oy), min(W, ox + lw), min(H, oy + lh)
    if sx1 > sx0 and sy1 > sy0:
        alpha[sy0:sy1, sx0:sx1] = a[sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox]
    alpha *= (mask > 127)        # the edit stays inside the mask, by construction
    out = image.astype(np.float32) * (1 - alpha[..., None]) + np.asarray(rgb, np.float32) * alpha[..., None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
