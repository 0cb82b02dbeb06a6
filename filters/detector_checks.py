"""Detector checks (Emu Edit §3.2): the objects the instruction names are where they should be.

  add     the edited object is detected in the output and not in the input where it was added
          (the add flow runs backwards: the output is the base image the object was found in, so
          the check with teeth is its absence from the generated input);
  remove  the removed object is no longer detected in the output where it was;
  local   the original object is gone from the output and the edited one is present.

"Where it was" is the object's own box (``Candidate.object_box``: the grounding stage's detection,
else the box of its precise mask), whatever mask variant the candidate was made with — the box of a
dilated or bbox mask is grown, and a small object's detection would never reach ``min_iou`` against
it. A detection counts there when its IoU with that box is at least ``min_iou`` (a second,
untouched dog elsewhere does not fail a remove). Without an object box the candidate mask's box is
used; without either any detection counts. Presence means a detection above the detector's own box/text
thresholds. The score ``detector`` is the margin of the check in [0, 1]: the weaker of "present"
(best score of the wanted object) and "absent" (1 − best score of the unwanted one).

All candidates of a batch go through the detector in one batched call.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from filters.base import Candidate, Filter, Verdict


def _phrases(answer: dict, key: str) -> list[str]:
    out = [answer.get(f"{key}_plain") or "", answer.get(key) or ""]
    return [p for i, p in enumerate(out) if p and p not in out[:i]]


def mask_box(mask: np.ndarray | None) -> tuple[float, float, float, float] | None:
    if mask is None:
        return None
    m = mask > 127 if mask.dtype == np.uint8 else mask > 0.5
    if m.ndim == 3:
        m = m.any(axis=2)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class DetectorChecks(Filter):
    name: ClassVar[str] = "detector"
    tasks: ClassVar[tuple[str, ...]] = ("add", "remove", "local")

    def __init__(self, detector, min_iou: float = 0.3):
        self.detector = detector
        self.min_iou = float(min_iou)
        self._found: dict[int, dict[str, float]] = {}

    def model_refs(self) -> dict[str, str]:
        from pipeline.grounding.detector import detector_refs
        return detector_refs(self.detector)

    def _queries(self, c: Candidate) -> list[tuple[str, str, list[str]]]:
        """(which image, what it is about, phrases) per check of the candidate's task."""
        a = c.answer
        if c.task == "add":
            return [("output", "edited_out", _phrases(a, "edited_object")),
                    ("input", "edited_in", _phrases(a, "edited_object"))]
        if c.task == "remove":
            return [("output", "original_out", _phrases(a, "original_object"))]
        return [("output", "original_out", _phrases(a, "original_object")),
                ("output", "edited_out", _phrases(a, "edited_object"))]

    def prepare(self, candidates: list[Candidate]) -> None:
        images, phrases, owners = [], [], []
        for c in candidates:
            if not self.applies_to(c.task) or id(c) in self._found:
                continue
            for which, key, ph in self._queries(c):
                if not ph:
                    continue
                images.append(c.output_image if which == "output" else c.input_image)
                phrases.append(ph)
                owners.append((c, key))
        dets = self.detector.detect(images, phrases) if images else []
        for (c, key), found in zip(owners, dets):
            region = c.object_box if c.object_box is not None else mask_box(c.mask)
            best = 0.0
            for d in found:
                if key != "edited_out" and region is not None and iou(d.box, region) < self.min_iou:
                    continue        # absence is judged where the object was / was added
                best = max(best, float(d.score))
            self._found.setdefault(id(c), {})[key] = best

    def __call__(self, c: Candidate) -> Verdict:
        if id(c) not in self._found:
            self.prepare([c])
        f = self._found.pop(id(c), {})
        checks = []     # (margin, failure reason) — presence wants a high score, absence a low one
        if "original_out" in f:     # reported first: a local edit that left the object is the worse failure
            checks.append((1.0 - f["original_out"], "original_object_still_present"))
        if "edited_in" in f:
            checks.append((1.0 - f["edited_in"], "added_object_in_input"))
        if "edited_out" in f:
            checks.append((f["edited_out"], "edited_object_missing"))
        if not checks:
            return Verdict(True, None, {})
        margin = min(m for m, _ in checks)
        for m, reason in checks:
            present_wanted = reason == "edited_object_missing"
            if (present_wanted and m <= 0.0) or (not present_wanted and m < 1.0):
                return Verdict(False, reason, {"detector": margin},
                               f"{reason.replace('_', ' ')} (detector margin {margin:.3f})")
        return Verdict(True, None, {"detector": margin})
