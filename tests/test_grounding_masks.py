"""Mask variants: precise ⊆ dilated_blurred ⊆ bbox, sizes follow the image, the background mask is
the widened complement of the foreground with a soft edge; and which phrase each task grounds (the
background task's subject: a noun phrase of the caption, never a word-position cut)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.grounding import masks as M
from pipeline.grounding.config import GroundingConfig
from pipeline.grounding.targets import (background_target, grounds, noun_phrases, subject_candidates,
                                        subject_issue, target_for)


def blob(h=120, w=160):
    """An irregular object (ellipse + a thin arm) and a box around it with some slack."""
    import cv2
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (70, 60), (30, 18), 20, 0, 360, 1, -1)
    m[55:58, 90:120] = 1
    return m.astype(bool), (35.4, 35.2, 124.6, 88.9)


def test_region_variants_nest():
    sam, box = blob()
    v = M.region_variants(sam, box, GroundingConfig(dilate_frac=0.05, blur_frac=0.03))
    assert set(v) == {"precise", "dilated_blurred", "bbox"}
    p, d, b = v["precise"], v["dilated_blurred"], v["bbox"]
    assert p.dtype == d.dtype == b.dtype == np.uint8 and p.shape == d.shape == b.shape == sam.shape
    assert set(np.unique(p)) <= {0, 255} and set(np.unique(b)) <= {0, 255}
    # dilated contains precise, fully on (the object itself stays editable)
    assert (d[p > 0] == 255).all()
    # and really grows: more pixels, with a soft (intermediate) edge
    assert (d > 0).sum() > 1.3 * (p > 0).sum()
    assert ((d > 0) & (d < 255)).sum() > 50
    # the box contains both
    assert not ((p > 0) & (b == 0)).any() and not ((d > 0) & (b == 0)).any()
    # and the box is the detector's box (rounded outward) plus the variants' margin, nothing more
    ys, xs = np.nonzero(b)
    margin = round(0.05 * 120) + int(np.ceil(3 * 0.03 * 120))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (35 - margin, 35 - margin, 125 + margin, 89 + margin)


def test_precise_is_cut_to_the_box():
    sam = np.zeros((50, 50), bool)
    sam[10:40, 10:40] = True                            # SAM leaked beyond the box on the right
    p = M.precise_mask(sam, (5.0, 5.0, 25.5, 45.0))
    assert (p[10:40, 10:26] == 255).all() and not p[:, 26:].any()


def test_sizes_are_relative_to_the_image():
    small, box = blob()
    big = np.kron(small, np.ones((4, 4), bool))           # the same object at 4x resolution
    g = GroundingConfig(dilate_frac=0.05, blur_frac=0.02)
    ds = M.dilated_blurred(M.precise_mask(small, box), g.dilate_frac, g.blur_frac)
    db = M.dilated_blurred(M.precise_mask(big, tuple(4 * x for x in box)), g.dilate_frac, g.blur_frac)
    grow = lambda d, p: (d > 0).sum() / p.sum()
    assert abs(grow(ds, small) - grow(db, big)) < 0.12 * grow(ds, small)


def test_zero_sizes_are_identity():
    sam, box = blob()
    v = M.region_variants(sam, box, GroundingConfig(dilate_frac=0, blur_frac=0))
    assert np.array_equal(v["dilated_blurred"], v["precise"])
    assert np.array_equal(v["bbox"], M.box_mask(box, sam.shape))


def test_background_is_the_widened_complement():
    sam, box = blob()
    fg = M.precise_mask(sam, box)
    bg = M.background_mask(fg, widen_frac=0.03, blur_frac=0.01)
    comp = fg == 0
    assert bg.dtype == np.uint8 and bg.shape == fg.shape
    assert (bg[comp] == 255).all()                      # the whole complement is background
    # widened: a band of the object's edge is background too (minimum filter on the foreground)
    import cv2
    r = round(0.03 * 120)
    eroded = cv2.erode(fg, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    band = (fg > 0) & (eroded == 0)
    assert band.sum() > 0 and (bg[band] == 255).all()
    # smoothed: a soft edge inside the object, and the object's core stays foreground
    assert ((bg > 0) & (bg < 255)).sum() > 20
    core = cv2.erode(fg, np.ones((15, 15), np.uint8)) > 0
    assert core.sum() > 0 and (bg[core] == 0).all()
    # no widening, no blur: exactly the complement
    assert np.array_equal(M.background_mask(fg, 0, 0), 255 - fg)


@pytest.mark.parametrize("caption, phrases", [
    ("Dog sleeps on a couch", ["dog", "a couch"]),                            # not "dog sleeps"
    ("Children play football in the park", ["children", "football", "the park"]),
    ("A red bicycle leaning on a brick wall", ["a red bicycle", "a brick wall"]),
    ("A golden retriever catching a frisbee in a park", ["a golden retriever", "a frisbee", "a park"]),
    ("An old man's hat, resting on a bench", ["an old man's hat", "a bench"]),
    ("The quick brown fox jumps over the lazy dog", ["the quick brown fox", "the lazy dog"]),
    ("A pair of sneakers on a gym floor", ["a pair of sneakers", "a gym floor"]),
    ("A small fishing boat on a calm lake", ["a small fishing boat", "a calm lake"]),
    ("A man fishing in a lake", ["a man", "a lake"]),
    ("A car parked in a garage", ["a car", "a garage"]),
    ("A snow-covered cabin in the woods", ["a snow-covered cabin", "the woods"]),
    ("Astronaut", ["astronaut"]),
])
def test_noun_phrases(caption, phrases):
    assert noun_phrases(caption) == phrases


@pytest.mark.parametrize("subject, caption, setting, issue", [
    ("dog", "Dog sleeps on a couch", "", None),
    ("the dog", "Dog sleeps on a couch", "a couch", None),                    # articles may differ
    ("dog sleeps", "Dog sleeps on a couch", "", "subject_not_noun_phrase"),   # a verb phrase
    ("children play football", "Children play football in the park", "", "subject_not_noun_phrase"),
    ("Children", "Children play football in the park", "the park", None),
    ("red bicycle", "A red bicycle leaning on a brick wall", "", None),
    ("a red", "A red bicycle leaning on a brick wall", "", "subject_not_noun_phrase"),  # no head
    ("a red bicycle leaning", "A red bicycle leaning on a brick wall", "", "subject_not_noun_phrase"),
    ("a cup of coffee", "A cup of coffee on a table", "a table", None),
    ("a man and a woman", "A man and a woman dancing in a ballroom", "a ballroom", None),
    ("a cat", "A dog on a mat", "", "subject_not_in_caption"),
    ("a couch", "Dog sleeps on a couch", "the couch", "subject_is_background"),
    ("  ", "Dog sleeps on a couch", "", "subject_empty"),
])
def test_subject_issue(subject, caption, setting, issue):
    assert subject_issue(subject, caption, setting) == issue


def test_background_subject_llm_then_detector_then_none():
    cap = "Dog sleeps on a couch"
    t = background_target({"subject": "dog", "original_object": "a couch"}, cap)
    assert (t.phrase, t.source, t.issue) == ("dog", "llm", None)
    # the agent's subject refused (a verb phrase) or missing: the detector picks among the noun
    # phrases, the current setting left out
    for ans in ({"subject": "dog sleeps", "original_object": "a couch"}, {"original_object": "a couch"}):
        t = background_target(ans, cap)
        assert (t.phrase, t.source, t.candidates) == ("", "detector", ("dog",)) and t.issue
    assert background_target({"subject": "dog sleeps", "original_object": ""}, cap).candidates == ("dog", "a couch")
    assert subject_candidates("Portrait of a businessman in a grey office", "a grey office") == ["a businessman"]
    # neither: nothing is left to ground
    t = background_target({"subject": "", "original_object": "a beach"}, "On a beach")
    assert (t.source, t.candidates) == ("none", ())
    # a possessive subject gets its plain form to retry with
    t = background_target({"subject": "an old man's hat"}, "An old man's hat, resting on a bench")
    assert (t.phrase, t.plain, t.source) == ("an old man's hat", "hat", "llm")


def test_targets_per_task():
    ans = {"original_object": "the dog's collar", "original_object_plain": "collar", "edited_object": "a red scarf",
           "edited_object_plain": None}
    t = target_for("local", ans, "a dog")
    assert (t.phrase, t.plain, t.source) == ("the dog's collar", "collar", "original_object")
    assert target_for("remove", ans, "a dog").phrase == "the dog's collar"
    assert target_for("texture", ans, "a dog").phrase == "the dog's collar"
    for task in ("add", "detect", "segment"):
        t = target_for(task, ans, "a dog")
        assert (t.phrase, t.plain, t.source) == ("a red scarf", None, "edited_object")
    t = target_for("background", {**ans, "subject": "a dog", "original_object": "a beach"}, "A dog on a beach")
    assert (t.phrase, t.source) == ("a dog", "llm")
    t = target_for("background", {"original_object": "a beach"}, "Dog runs on a beach")
    assert (t.phrase, t.source, t.candidates) == ("", "detector", ("dog",))
    for task in ("color", "global", "style", "text", "depth"):
        assert not grounds(task) and target_for(task, ans, "a dog") is None
    assert target_for("detect", {"edited_object": "  "}, "x") is None
