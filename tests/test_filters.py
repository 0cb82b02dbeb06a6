"""Filters: the metrics against independent computations, and each filter both keeping and
rejecting constructed pairs (identical pair fails CLIP_dir; scrambled depth fails depth-L1; an add
whose output lacks the object fails the detector check given known boxes)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from filters.base import Candidate
from filters.clip_metrics import ClipMetricsFilter
from filters.config import FilterConfig, MetricRule
from filters.depth_structure import DepthL1Filter, depth_l1
from filters.detector_checks import DetectorChecks
from filters.metrics import MetricModels, clip_dir, l1


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data
    return np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])      # 128x128


@pytest.fixture(scope="module")
def models() -> MetricModels:
    return MetricModels()          # tiny-random CLIP and DINO


def cand(task, a, b, **kw) -> Candidate:
    return Candidate(task=task, input_image=a, output_image=b, **kw)


# ---- metrics vs independent computations --------------------------------------------------------

def test_clip_metrics_match_an_independent_computation(models, photo):
    """CLIP_img/out/dir from MetricModels equal cosines computed here from CLIPModel's own forward
    (image_embeds / text_embeds of one joint call), with torch's cosine_similarity."""
    other = np.ascontiguousarray(photo[:, ::-1, [2, 1, 0]])
    caps_in, caps_out = ["an astronaut in a white suit", "a red car"], ["an astronaut on the moon", "a blue car"]
    got = models.compute([photo, photo], [other, photo], caps_in, caps_out)

    enc = models.clip
    px = enc.processor(images=[photo, other], return_tensors="pt")["pixel_values"]
    toks = enc.tokenizer(caps_in + caps_out, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        o = enc.model(input_ids=toks["input_ids"], attention_mask=toks["attention_mask"], pixel_values=px)
    im, tx = o.image_embeds, o.text_embeds
    cos = torch.nn.functional.cosine_similarity
    assert got[0]["clip_img"] == pytest.approx(cos(im[0], im[1], dim=0).item(), abs=1e-5)
    assert got[0]["clip_out"] == pytest.approx(cos(im[1], tx[2], dim=0).item(), abs=1e-5)
    assert got[0]["clip_dir"] == pytest.approx(cos(im[1] - im[0], tx[2] - tx[0], dim=0).item(), abs=1e-4)
    assert got[1]["clip_img"] == pytest.approx(1.0, abs=1e-5)
    assert got[1]["clip_dir"] == 0.0                     # no image change: zero direction
    # DINO: cosine of the [CLS] tokens from ViTModel's own forward
    dpx = models.dino.processor(images=[photo, other], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        h = models.dino.model(pixel_values=dpx).last_hidden_state[:, 0]
    assert got[0]["dino"] == pytest.approx(cos(h[0], h[1], dim=0).item(), abs=1e-5)
    # L1: mean absolute difference in float
    assert got[0]["l1"] == pytest.approx(float(np.mean(np.abs(photo / 255.0 - other / 255.0))), abs=1e-9)


def test_clip_dir_formula_on_known_vectors():
    e = np.eye(3)
    # image moved from e0 to e1 exactly as the caption did: 1; opposite: -1; orthogonal: 0
    assert clip_dir(e[[0]], e[[1]], e[[0]], e[[1]])[0] == pytest.approx(1.0)
    assert clip_dir(e[[0]], e[[1]], e[[1]], e[[0]])[0] == pytest.approx(-1.0)
    assert clip_dir(e[[0]], e[[1]], e[[0]], e[[2]])[0] == pytest.approx(0.5)
    assert l1(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)) == 1.0


# ---- CLIP filter: keep and reject ---------------------------------------------------------------

class ColourWordEncoder:
    """Constructed CLIP space for the test: an image maps to its dominant channel, a caption to the
    colour word it contains — so a red→blue edit captioned red→blue has a known direction."""
    axes = ("red", "green", "blue")

    def images(self, images):
        return np.stack([np.eye(3)[int(np.argmax(im.reshape(-1, 3).mean(0)))] for im in images])

    def texts(self, texts):
        return np.stack([np.eye(3)[[w in t for w in self.axes].index(True)] for t in texts])


def flat(rgb) -> np.ndarray:
    return np.tile(np.array(rgb, np.uint8), (32, 32, 1))


def test_clip_filter_keeps_a_faithful_edit_and_rejects_an_identical_pair():
    m = MetricModels.__new__(MetricModels)
    m.clip, m.dino = ColourWordEncoder(), None
    f = ClipMetricsFilter(FilterConfig(rules={"global": {"clip_img": None}}), models=m)
    red, blue = flat((200, 10, 10)), flat((10, 10, 200))
    good = cand("global", red, blue, input_caption="a red wall", output_caption="a blue wall")
    same = cand("global", red, red.copy(), input_caption="a red wall", output_caption="a blue wall")
    wrong = cand("global", red, blue, input_caption="a red wall", output_caption="a green wall")
    f.prepare([good, same, wrong])
    v = f(good)
    assert v.keep and v.scores["clip_dir"] == pytest.approx(1.0)
    v = f(same)
    assert not v.keep and v.reason == "clip_dir_low" and v.scores["clip_dir"] == 0.0
    v = f(wrong)           # the image went blue, the caption says green: direction 0.5 passes 0.2, clip_out fails
    assert not v.keep and v.reason == "clip_out_low"


def test_identical_pair_fails_clip_dir_with_the_real_tiny_clip(photo):
    f = ClipMetricsFilter(FilterConfig())
    v = f(cand("style", photo, photo.copy(), input_caption="an astronaut", output_caption="an astronaut, oil painting"))
    assert not v.keep and v.reason == "clip_dir_low" and v.scores["clip_dir"] == 0.0


def test_tasks_without_rules_are_scored_but_not_judged(photo):
    v = ClipMetricsFilter(FilterConfig())(cand("color", photo, photo.copy(), input_caption="x", output_caption="x"))
    assert v.keep and "clip_img" in v.scores


# ---- depth-L1 -----------------------------------------------------------------------------------

def test_depth_filter_rejects_a_scrambled_depth_map_and_keeps_a_consistent_one():
    """Constructed depth: the "model" returns a ramp for the input; for the output either the same
    ramp rescaled (relative depth: same structure) or the ramp's pixels shuffled."""
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    scrambled = np.random.default_rng(0).permutation(ramp.ravel()).reshape(64, 64)
    a, same, scr = flat((1, 1, 1)), flat((2, 2, 2)), flat((3, 3, 3))
    maps = {1: ramp, 2: 3.0 * ramp + 5.0, 3: scrambled}
    f = DepthL1Filter(FilterConfig(), predict=lambda ims: [maps[int(im[0, 0, 0])] for im in ims])
    ok, bad = cand("style", a, same), cand("style", a, scr)
    f.prepare([ok, bad])
    assert f(ok).keep and f(ok).scores["depth_l1"] == pytest.approx(0.0, abs=1e-6)
    v = f(bad)
    assert not v.keep and v.reason == "depth_l1_high" and v.scores["depth_l1"] > 0.2


def test_depth_filter_with_the_tiny_dpt(photo):
    f = DepthL1Filter(FilterConfig())
    same = f(cand("global", photo, photo.copy()))
    perm = np.random.default_rng(1).permutation(photo.reshape(-1, 3)).reshape(photo.shape)
    moved = f(cand("global", photo, perm))
    assert same.scores["depth_l1"] == 0.0 and same.keep
    assert moved.scores["depth_l1"] > same.scores["depth_l1"]
    assert not f.applies_to("detect") and f.applies_to("color")


def test_depth_l1_is_invariant_to_scale_and_shift():
    d = np.random.default_rng(2).random((16, 16))
    assert depth_l1(d, 7 * d - 3) == pytest.approx(0.0, abs=1e-6)


# ---- detector checks with known boxes -----------------------------------------------------------

@dataclass(frozen=True)
class Box:
    box: tuple
    score: float
    phrase: str


class KnownBoxes:
    """A detector that knows the answer: per image (by its fill value) the boxes of each phrase.
    Stands in for Grounding DINO, whose real weights cannot exist on this machine."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def detect(self, images, phrases):
        self.calls += 1
        return [[Box(b, s, p) for p in ph for (b, s) in self.table.get((int(im[0, 0, 0]), p), [])]
                for im, ph in zip(images, phrases)]


def img(v):
    return np.full((100, 100, 3), v, np.uint8)


MASK = np.zeros((100, 100), np.uint8)
MASK[20:60, 20:60] = 255          # where the object was / was added


def test_add_without_the_object_in_the_output_fails():
    det = KnownBoxes({(2, "a red hat"): [((22, 22, 58, 58), 0.6)]})        # image 2 has the hat
    f = DetectorChecks(det)
    good = cand("add", img(1), img(2), answer={"edited_object": "a red hat"}, mask=MASK)
    missing = cand("add", img(1), img(3), answer={"edited_object": "a red hat"}, mask=MASK)
    in_input = cand("add", img(2), img(2), answer={"edited_object": "a red hat"}, mask=MASK)
    f.prepare([good, missing, in_input])
    assert det.calls == 1                                 # one batched call for all candidates
    v = f(good)
    assert v.keep and v.scores["detector"] == pytest.approx(0.6)
    v = f(missing)
    assert not v.keep and v.reason == "edited_object_missing"
    v = f(in_input)
    assert not v.keep and v.reason == "added_object_in_input"


def test_remove_fails_only_when_the_object_is_still_where_it_was():
    det = KnownBoxes({(5, "the dog"): [((25, 25, 55, 55), 0.5)],          # still there
                      (6, "the dog"): [((70, 70, 95, 95), 0.7)]})         # a second dog elsewhere
    f = DetectorChecks(det)
    still = f(cand("remove", img(1), img(5), answer={"original_object": "the dog"}, mask=MASK))
    other = f(cand("remove", img(1), img(6), answer={"original_object": "the dog"}, mask=MASK))
    gone = f(cand("remove", img(1), img(7), answer={"original_object": "the dog"}, mask=MASK))
    assert not still.keep and still.reason == "original_object_still_present"
    assert other.keep and gone.keep and gone.scores["detector"] == 1.0


def test_local_needs_the_original_gone_and_the_edit_present_and_uses_the_plain_phrase():
    det = KnownBoxes({(8, "fox"): [((20, 20, 60, 60), 0.9)], (9, "cat"): [((20, 20, 60, 60), 0.8)]})
    f = DetectorChecks(det)
    ans = {"original_object": "the girl's cat", "original_object_plain": "cat", "edited_object": "fox"}
    assert f(cand("local", img(1), img(8), answer=ans, mask=MASK)).keep
    v = f(cand("local", img(1), img(9), answer=ans, mask=MASK))
    assert not v.keep and v.reason == "original_object_still_present"      # found via the plain phrase
    v = f(cand("local", img(1), img(7), answer=ans, mask=MASK))
    assert not v.keep and v.reason == "edited_object_missing"


# ---- thresholds ---------------------------------------------------------------------------------

def test_rules_absolute_quantile_and_overrides():
    fc = FilterConfig(rules={"global": {"clip_dir": {"keep_top": 0.3}, "depth_l1": None},
                             "local": {"clip_img": {"min": 0.5}}})
    assert fc.threshold("global", "depth_l1") is None                       # default dropped
    assert fc.threshold("global", "clip_dir") is None                       # quantile, not calibrated yet
    assert fc.needs_calibration()
    fc.calibrated = {"global": {"clip_dir": {"min": 0.11}}}
    assert fc.threshold("global", "clip_dir") == (0.11, None)
    assert fc.threshold("local", "clip_img") == (0.5, None)
    assert fc.threshold("local", "clip_dir") == (0.2, None)                 # default kept
    assert fc.threshold("detect", "clip_dir") is None
    with pytest.raises(ValueError, match="rules.global.clipdir: unknown metric"):
        FilterConfig(rules={"global": {"clipdir": {"min": 0.1}}})
    with pytest.raises(ValueError, match="not both"):
        MetricRule(min=0.1, keep_top=0.5)
    with pytest.raises(ValueError, match="rules.glob: unknown task"):
        FilterConfig(rules={"glob": {"clip_dir": {"min": 0.1}}})
