"""Does a text pair show what its instruction says? Checked by OCR on the finished images.

  replace  OCR reads the new text in the output
  remove   OCR finds no text in the masked region of the output (a box counts as "in" it when at
           least ``min_inside`` of its area lies inside the mask)
  add      OCR reads the added text in the output and finds no text in the masked region of the input

OCR runs on a crop around the mask (the box grown by its height on every side): the edit is
there, and a crop is several times faster to read than the whole photo on a CPU.

Used by the OCR filter (filters/ocr_checks.py), the test and the benchmark (tests/bench_text.py).
"""
from __future__ import annotations

import numpy as np

from pipeline.text.masks import box_inside_fraction, mask_bbox
from pipeline.text.ocr import OcrBox, OcrReader, find_text

MIN_INSIDE = 0.3


def text_in_mask(boxes: list[OcrBox], mask: np.ndarray, min_inside: float = MIN_INSIDE) -> list[OcrBox]:
    return [b for b in boxes if box_inside_fraction(b, mask) >= min_inside]


def around_mask(mask: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the mask's box grown by its height on every side (whole image if empty)."""
    bb = mask_bbox(mask)
    if bb is None:
        return slice(None), slice(None)
    x0, y0, x1, y1 = bb
    pad = max(16, y1 - y0)
    h, w = mask.shape[:2]
    return slice(max(0, y0 - pad), min(h, y1 + pad)), slice(max(0, x0 - pad), min(w, x1 + pad))


def check_pair(ocr: OcrReader, op: str, input_image: np.ndarray, output_image: np.ndarray, mask: np.ndarray,
               text: str, *, match_threshold: float, min_confidence: float) -> tuple[str | None, str]:
    """(None, detail) when the pair passes, else (reason, detail). ``text`` is the new text for
    replace / add and the removed text for remove."""
    ys, xs = around_mask(mask)
    input_image, output_image, mask = input_image[ys, xs], output_image[ys, xs], mask[ys, xs]
    out = ocr.read(output_image, min_confidence=min_confidence)
    if op == "replace":
        hit, s = find_text(out, text, match_threshold)
        read = " | ".join(b.text for b in out)[:120]
        return (None, f"read {text!r} ({s:.2f})") if hit else ("new_text_not_read", f"{text!r} best {s:.2f}; read: {read}")
    if op == "remove":
        left = text_in_mask(out, mask)
        return (None, "no text in the mask") if not left else (
            "text_remains", "still read in the mask: " + " | ".join(b.text for b in left)[:120])
    if op == "add":
        hit, s = find_text(out, text, match_threshold)
        if not hit:
            return "added_text_not_read", f"{text!r} best {s:.2f} in the output"
        before = text_in_mask(ocr.read(input_image, min_confidence=min_confidence), mask)
        if before:
            return "text_in_input", "input already shows: " + " | ".join(b.text for b in before)[:120]
        return None, f"read {text!r} ({s:.2f}) only in the output"
    raise ValueError(f"unknown text op {op!r}")
