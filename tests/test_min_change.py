"""Issue 16: pairs you can train on.

  * the minimum-change floor (filters/min_change.py) rejects identical and near-identical pairs as
    ``no_change``, keeps small real edits, and measures region tasks in the object's region;
  * the detector checks judge "where the object was" by the object's own box, whatever variant;
  * every metric's direction comes from one table: selecting by l1 keeps the least change, a
    calibrated quantile rule on l1 is a max.

Each test also runs with the mechanism switched off and shows the opposite outcome."""
from __future__ import annotations

import json

import numpy as np
import pytest

from filters.base import Candidate
from filters.config import FilterConfig, quantile_threshold
from filters.detector_checks import DetectorChecks
from filters.min_change import MinChangeFilter

OFF = {t: None for t in ("add", "color", "local", "global")}


def photo() -> np.ndarray:
    import skimage.data
    return np.ascontiguousarray(skimage.data.astronaut())            # 512x512


def floor(on: bool = True) -> MinChangeFilter:
    return MinChangeFilter(FilterConfig() if on else FilterConfig(min_change=OFF))


def cand(task, a, b, **kw) -> Candidate:
    return Candidate(task=task, input_image=a, output_image=b, **kw)


def noisy(im, levels, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(im.astype(np.int16) + rng.integers(-levels, levels + 1, im.shape), 0, 255).astype(np.uint8)


def square_mask(shape, x0, y0, size):
    m = np.zeros(shape[:2], np.uint8)
    m[y0:y0 + size, x0:x0 + size] = 255
    return m


@pytest.mark.parametrize("task", ["add", "color", "global"])
def test_identical_pair_is_no_change(task):
    im = photo()
    kw = {"mask": square_mask(im.shape, 100, 100, 120)} if task == "add" else {}
    v = floor()(cand(task, im, im.copy(), **kw))
    assert not v.keep and v.reason == "no_change"
    assert v.scores == {"change_l1": 0.0, "change_frac": 0.0} and "change_l1 0.0000" in v.detail
    assert floor(on=False)(cand(task, im, im.copy(), **kw)).keep


@pytest.mark.parametrize("task", ["add", "color", "local"])
def test_near_identical_pair_within_two_levels_is_no_change(task):
    im = photo()
    kw = {"mask": square_mask(im.shape, 100, 100, 120)} if task != "color" else {}
    c = cand(task, im, noisy(im, 2), **kw)
    v = floor()(c)
    assert not v.keep and v.reason == "no_change" and v.scores["change_frac"] == 0.0
    assert floor(on=False)(c).keep


def test_small_real_edits_pass():
    im = photo()
    from tasks import color as C
    for out in (C.adjust_brightness(im, 1.1), np.clip(im.astype(np.int16) + 6, 0, 255).astype(np.uint8)):
        assert floor()(cand("color", im, out)).keep
    region = square_mask(im.shape, 200, 200, 80)
    out = im.copy()
    out[200:280, 200:280] = np.clip(out[200:280, 200:280].astype(np.int16) + 20, 0, 255)   # a mild recolour
    v = floor()(cand("local", im, out, mask=region))
    assert v.keep and v.scores["change_l1"] > 0.05


def test_region_edit_is_measured_in_the_object_region():
    """A 40 px object replaced in a 512 px image with the bbox variant: tiny over the image (and
    diluted in the grown box), clear inside the object's precise mask."""
    im = photo()
    obj = np.zeros(im.shape[:2], np.uint8)
    yy, xx = np.mgrid[:512, :512]
    obj[(yy - 300) ** 2 + (xx - 300) ** 2 <= 20 ** 2] = 255                 # a 40 px round object
    out = im.copy()
    out[obj > 0] = (im[obj > 0].astype(np.int16) // 2 + 40).astype(np.uint8)  # recoloured object
    bbox = square_mask(im.shape, 200, 200, 200)                            # the grown bbox variant
    c = cand("add", im, out, mask=bbox, object_mask=obj)
    v = floor()(c)
    assert v.keep and v.scores["change_l1"] > 0.1
    whole = MinChangeFilter(FilterConfig())(cand("global", im, out))        # same pair, whole image
    assert not whole.keep and whole.scores["change_l1"] < 0.01
    # the measurement in the region is the mechanism: over the whole image the same floor rejects it
    c_img = cand("add", im, out)
    assert not floor()(c_img).keep


def test_floor_comes_before_selection_in_the_filter_stage():
    """Two candidates, a no-op and a real edit; select_by l1 (lower is better) keeps the no-op
    without the floor, the real edit with it."""
    from pipeline.config import JobConfig
    from pipeline.schema import flow_table
    from pipeline.stages.filter import FilterStage
    from tests.test_filter_stage import brighter, photo as small, row

    def run(min_change):
        none = {"clip_dir": None, "clip_img": None, "clip_out": None, "depth_l1": None}
        cfg = JobConfig.model_validate({"filters": {"task_predictor": {"enabled": False}, "select_by": "l1",
                                                    "rules": {"global": none}, "min_change": min_change}})
        im = small()
        r = row("global", [("noop", noisy(im, 1)), ("real", brighter(im, 1.2))])
        return FilterStage(cfg.model_dump(mode="json"))(flow_table([r])).to_pylist()[0]

    got = run({})
    rep = json.loads(got["candidates_report"])
    assert got["status"] == "pending" and got["mask_variant"] == "real"
    assert rep["candidates"][0]["reason"] == "no_change"
    assert run({"global": None})["mask_variant"] == "noop"


def test_nothing_but_no_ops_is_a_no_change_reject():
    from pipeline.config import JobConfig
    from pipeline.schema import flow_table
    from pipeline.stages.filter import FilterStage
    from tests.test_filter_stage import photo as small, row

    cfg = JobConfig.model_validate({"filters": {"task_predictor": {"enabled": False}}})
    im = small()
    got = FilterStage(cfg.model_dump(mode="json"))(flow_table([row("color", [("a", im.copy()), ("b", noisy(im, 2))])]))
    got = got.to_pylist()[0]
    assert got["status"] == "rejected" and got["reject_reason"] == "no_change"
    assert got["reject_detail"].startswith("min_change: in image: change_l1")


# ---- detector checks on the object's own box ------------------------------------------------------

class OneBox:
    """The detector finds the object (40 px at 300..340) in the images whose top-left pixel is 9."""

    def detect(self, images, phrases):
        from pipeline.grounding.detector import Detection
        return [[Detection((300.0, 300.0, 340.0, 340.0), 0.8, p) for p in ph] if im[0, 0, 0] == 9 else []
                for im, ph in zip(images, phrases)]


def test_small_object_still_there_is_caught_with_the_bbox_variant():
    still = np.full((512, 512, 3), 9, np.uint8)
    gone = np.full((512, 512, 3), 1, np.uint8)
    bbox = square_mask(still.shape, 255, 255, 130)          # the grown bbox variant: IoU 40²/130² ≈ 0.09
    obj_box = (300.0, 300.0, 340.0, 340.0)
    ans = {"original_object": "the cup"}
    f = DetectorChecks(OneBox())
    v = f(cand("remove", still, still, answer=ans, mask=bbox, object_box=obj_box))
    assert not v.keep and v.reason == "original_object_still_present"
    assert f(cand("remove", still, gone, answer=ans, mask=bbox, object_box=obj_box)).keep
    # without the object's box (the old behaviour: the candidate mask's box) it never fires
    assert f(cand("remove", still, still, answer=ans, mask=bbox)).keep
    # add: the object already in the generated input
    v = f(cand("add", still, still, answer={"edited_object": "the cup"}, mask=bbox, object_box=obj_box))
    assert not v.keep and v.reason == "added_object_in_input"
    assert f(cand("add", still, still, answer={"edited_object": "the cup"}, mask=bbox)).keep


def test_filter_stage_passes_the_grounding_box_to_the_candidates():
    from pipeline.stages.filter import FilterStage
    mask = square_mask((512, 512), 300, 300, 40)
    from pipeline.sources import encode_png
    r = {"masks": [{"variant": "precise", "png": encode_png(mask)}],
         "grounding": json.dumps({"chosen": 0, "detections": [{"box": [298.5, 299, 341, 340], "score": 0.9}]})}
    m, box = FilterStage._object(r)
    assert box == (298.5, 299.0, 341.0, 340.0) and (m > 0).sum() == 1600
    m, box = FilterStage._object({"masks": r["masks"], "grounding": None})
    assert box == (300.0, 300.0, 340.0, 340.0)


# ---- one direction table ---------------------------------------------------------------------------

def test_select_by_l1_keeps_the_candidate_that_changed_least():
    from pipeline.config import JobConfig
    from pipeline.schema import flow_table
    from pipeline.stages.filter import FilterStage
    from tests.test_filter_stage import brighter, photo as small, row

    im = small()
    cfg = JobConfig.model_validate({"filters": {"task_predictor": {"enabled": False}, "select_by": "l1",
                                                "rules": {"color": {"depth_l1": None}}}})
    got = FilterStage(cfg.model_dump(mode="json"))(
        flow_table([row("color", [("more", brighter(im, 1.4)), ("least", brighter(im, 1.15))])])).to_pylist()[0]
    rep = json.loads(got["candidates_report"])
    assert all(c["keep"] for c in rep["candidates"])
    assert got["mask_variant"] == "least" and rep["selected"] == 1


def test_calibrated_quantile_rule_on_l1_is_a_max():
    vals = np.linspace(0.0, 1.0, 101)
    assert quantile_threshold("l1", vals, 0.9) == {"max": pytest.approx(0.9)}
    assert quantile_threshold("depth_l1", vals, 0.8) == {"max": pytest.approx(0.8)}
    assert quantile_threshold("clip_dir", vals, 0.7) == {"min": pytest.approx(0.3)}
    fc = FilterConfig(rules={"local": {"l1": {"keep_top": 0.9}}})
    fc.calibrated = {"local": {"l1": quantile_threshold("l1", vals, 0.9)}}
    from filters.base import judge
    assert judge(fc, "local", {"l1": 0.95}, ("l1",))[0] == "l1_high"
    assert judge(fc, "local", {"l1": 0.05}, ("l1",)) == (None, "")
