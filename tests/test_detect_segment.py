"""The detect and segment tasks and the grounding stage: boxes are drawn and pixels painted where the
detector and SAM put them, every region row gets its mask variants, the background task its
background mask, possessive phrases fall back to the plain phrase, nothing found is a counted
reject, rows of other tasks pass through untouched. One slow test runs a real job."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import JobConfig
from pipeline.grounding.detector import Detection, Detector
from pipeline.grounding.targets import Grounded
from pipeline.schema import flow_table, new_flow_row
from pipeline.sources import decode_png, encode_png
from pipeline.stages.ground import GroundStage
from tasks import SampleReject, get_task, implemented
from tasks.detect import PALETTE, draw_box
from tasks.segment import paint


@pytest.fixture(scope="module")
def photo():
    import skimage.data
    return np.ascontiguousarray(skimage.data.chelsea()[::2, ::2])       # 150x226


# ---------------------------------------------------------------- tasks


def test_detect_and_segment_are_runnable():
    assert {"detect", "segment"} <= set(implemented())
    for name in ("detect", "segment"):
        t = get_task(name)
        assert t.stage == "grounding" and t.has_generator()
        with pytest.raises(SampleReject) as e:                   # the pair needs the stage's grounding
            t.make_pair(np.zeros((16, 16, 3), np.uint8), {}, {}, np.random.default_rng(0))
        assert e.value.reason == "no_grounding"
    JobConfig.model_validate({"tasks": {"detect": 1, "segment": 1}})   # a job accepts them


def test_draw_box_outlines_exactly_the_box(photo):
    out = draw_box(photo, (20.2, 30.0, 120.0, 100.7), (255, 0, 0), 3)
    changed = np.any(out != photo, axis=2)
    ring = np.zeros(photo.shape[:2], bool)
    ring[30:101, 20:120] = True
    ring[33:98, 23:117] = False                                  # 3 px wide, inside [20,120) x [30,101)
    assert not (changed & ~ring).any()                           # nothing outside the outline changed
    assert (out[ring] == (255, 0, 0)).all()


def test_detect_pair(photo):
    g = Grounded(box=(20.0, 30.0, 120.0, 100.0), score=0.8, phrase="the cat")
    t = get_task("detect")
    a = t.make_pair(photo, {}, {}, np.random.default_rng(5), grounding=g)
    b = t.make_pair(photo, {}, {}, np.random.default_rng(5), grounding=g)
    assert np.array_equal(a.output_image, b.output_image) and a.params == b.params     # seeded
    assert a.input_image is photo and a.params["colour"] in PALETTE and a.params["line_width"] >= 2
    assert a.params["box"] == [20.0, 30.0, 120.0, 100.0] and a.mask_variant == "bbox"
    assert a.mask[30:100, 20:120].all() and a.mask.sum() == 70 * 100 * 255
    changed = np.any(a.output_image != photo, axis=2)
    assert changed.any() and not changed[40:90, 35:105].any()  # the inside of the box is untouched
    widths = {t.make_pair(photo, {}, {}, np.random.default_rng(s), grounding=g).params["line_width"] for s in range(30)}
    colours = {t.make_pair(photo, {}, {}, np.random.default_rng(s), grounding=g).params["colour"] for s in range(30)}
    assert len(widths) > 1 and len(colours) > 3


def test_segment_pair(photo):
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[40:90, 50:130] = 255
    g = Grounded(box=(50.0, 40.0, 130.0, 90.0), score=0.7, phrase="the cat", mask=mask)
    p = get_task("segment").make_pair(photo, {}, {}, np.random.default_rng(1), grounding=g)
    changed = np.any(p.output_image != photo, axis=2)
    assert not changed[mask == 0].any() and changed[mask > 0].mean() > 0.95
    assert p.mask is mask and p.mask_variant == "precise" and 0.6 <= p.params["opacity"] <= 1.0
    rgb = np.array(PALETTE[p.params["colour"]], np.float32)
    expect = (1 - p.params["opacity"]) * photo[mask > 0].astype(np.float32) + p.params["opacity"] * rgb
    assert np.abs(p.output_image[mask > 0] - expect).max() <= 1
    assert np.array_equal(paint(photo, mask, (0, 0, 255), 1.0)[45, 60], [0, 0, 255])
    with pytest.raises(SampleReject) as e:
        get_task("segment").make_pair(photo, {}, {}, np.random.default_rng(1),
                                      grounding=Grounded(g.box, 0.7, "x", mask=np.zeros_like(mask)))
    assert e.value.reason == "empty_mask"


# ---------------------------------------------------------------- stage


def _row(task, answer, image, caption="A tabby cat looking to the side", i=0):
    return new_flow_row(sample_index=i, id=f"id{i}", source_id="s", attempt=0, task=task, seed=1000 + i,
                        caption=caption, plan="{}", answer=json.dumps(answer),
                        input_png=encode_png(image) if image is not None else None)


def _stage(**grounding) -> GroundStage:
    cfg = JobConfig.model_validate({"tasks": {"detect": 1}, "grounding": grounding})
    return GroundStage(cfg.model_dump(mode="json"))


@pytest.fixture(scope="module")
def stage():
    return _stage()


def test_stage_makes_pairs_and_masks(stage, photo):
    rows = [_row("detect", {"instruction": "Find the cat", "edited_object": "the cat"}, photo, i=0),
            _row("segment", {"instruction": "Segment the cat", "edited_object": "the cat"}, photo, i=1),
            _row("local", {"original_object": "the cat", "edited_object": "a dog", "output_caption": "a dog"}, photo, i=2),
            _row("background", {"original_object": "a room", "edited_object": "a beach", "output_caption": "x"}, photo, i=3),
            _row("color", {"instruction": "darker"}, photo, i=4),
            _row("add", {"edited_object": "a hat"}, None, i=5)]
    before = [dict(r) for r in rows]
    out = stage(flow_table(rows)).to_pylist()
    det, seg, loc, bg, col, add = out
    assert all(r["status"] == "pending" for r in out), [(r["task"], r["reject_reason"], r["reject_detail"]) for r in out]
    # detect: the box drawn, bbox mask, grounding recorded
    gd = json.loads(det["grounding"])
    assert gd["phrase"] == "the cat" and not gd["used_plain"] and gd["detections"] and gd["chosen"] == 0
    assert gd["detector"].startswith("tiny-random") and gd["segmenter"] is None
    assert det["params"] and json.loads(det["params"])["box"] == gd["detections"][0]["box"]
    assert det["mask_variant"] == "bbox" and det["output_png"] != det["input_png"]
    # segment: painted pixels = the precise mask
    sp = decode_png(seg["output_png"])
    m = decode_png(seg["mask_png"])
    assert seg["mask_variant"] == "precise" and m.shape == photo.shape[:2] and (m > 0).any()
    changed = np.any(sp != photo, axis=2)
    assert not changed[m == 0].any()
    assert [v["variant"] for v in seg["masks"]] == ["precise", "dilated_blurred", "bbox"]
    assert np.array_equal(decode_png(seg["masks"][0]["png"]), m)
    assert json.loads(seg["grounding"])["segmenter"].startswith("tiny-random")
    # local (a region task without a generator yet): the three variants, nested; no pair
    v = {x["variant"]: decode_png(x["png"]) for x in loc["masks"]}
    assert list(v) == ["precise", "dilated_blurred", "bbox"] and loc["output_png"] is None
    assert (v["dilated_blurred"][v["precise"] > 0] == 255).all() and not ((v["dilated_blurred"] > 0) & (v["bbox"] == 0)).any()
    # background: the agent named no subject, so the detector picked one of the caption's noun
    # phrases ("the side" is a framing word, "a room" the setting); the background mask stored
    gb = json.loads(bg["grounding"])
    assert (gb["phrase"], gb["subject_source"], gb["subject_candidates"]) == ("a tabby cat", "detector", ["a tabby cat"])
    assert [x["variant"] for x in bg["masks"]] == ["background"] and decode_png(bg["masks"][0]["png"]).mean() > 0
    # other tasks, and rows with no image yet, pass through untouched
    assert col == before[4] and add == before[5]


class PhraseDetector(Detector):
    """Finds only the phrases it is told about; records its calls (to see the batching)."""
    model_id = "stub"

    def __init__(self, known):
        self.known, self.calls = known, []

    def detect(self, images, phrases):
        self.calls.append([list(p) for p in phrases])
        return [[Detection((10.0, 10.0, 60.0, 50.0), 0.9, p) for p in ps if p in self.known] for ps in phrases]


def test_possessive_falls_back_to_plain_phrase_in_one_batched_call(photo):
    stage = _stage()
    stage.detector = PhraseDetector({"tail", "the cat"})
    rows = [_row("detect", {"edited_object": "the cat's tail", "edited_object_plain": "tail"}, photo, i=0),
            _row("detect", {"edited_object": "the cat"}, photo, i=1),
            _row("segment", {"edited_object": "the dog's ear", "edited_object_plain": "ear"}, photo, i=2),
            _row("detect", {"edited_object": "a unicorn"}, photo, i=3)]
    out = stage(flow_table(rows)).to_pylist()
    # one call for the whole batch, one for the possessive misses together
    assert stage.detector.calls == [[["the cat's tail"], ["the cat"], ["the dog's ear"], ["a unicorn"]],
                                    [["tail"], ["ear"]]]
    g0 = json.loads(out[0]["grounding"])
    assert out[0]["status"] == "pending" and g0["phrase"] == "tail" and g0["used_plain"]
    assert g0["tried"] == ["the cat's tail", "tail"] and json.loads(out[0]["params"])["phrase"] == "tail"
    assert out[1]["status"] == "pending" and not json.loads(out[1]["grounding"])["used_plain"]
    for r, tried in ((out[2], ["the dog's ear", "ear"]), (out[3], ["a unicorn"])):
        assert (r["status"], r["reject_stage"], r["reject_reason"]) == ("rejected", "ground", "no_object")
        assert json.loads(r["grounding"])["tried"] == tried and "box_threshold" in r["reject_detail"]


def test_background_subject_from_agent_or_detector_never_word_position(photo):
    """The subject is the agent's noun phrase when valid; else the detector's best among the
    caption's noun phrases (all in one call); a subject the detector cannot find falls back to the
    noun phrases too; nothing → ``no_subject``. The old rule grounded "dog sleeps"."""
    stage = _stage()

    class Best(PhraseDetector):          # finds every known phrase, "a couch" scoring highest
        def detect(self, images, phrases):
            self.calls.append([list(p) for p in phrases])
            score = {"a couch": 0.9, "dog": 0.6, "children": 0.7, "football": 0.8}
            return [sorted((Detection((10.0, 10.0, 60.0, 50.0), score[p], p) for p in ps if p in self.known),
                           key=lambda d: -d.score) for ps in phrases]

    stage.detector = Best({"dog", "a couch", "children", "football"})
    bg = lambda ans, cap, i: _row("background", {"edited_object": "a beach", "output_caption": "x", **ans},
                                  photo, caption=cap, i=i)
    rows = [bg({"subject": "dog", "original_object": "a couch"}, "Dog sleeps on a couch", 0),          # agent's
            bg({"subject": "dog sleeps", "original_object": "a couch"}, "Dog sleeps on a couch", 1),   # refused
            bg({"original_object": "the park"}, "Children play football in the park", 2),             # none given
            bg({"subject": "the park", "original_object": ""}, "Children play football in the park", 3),
            bg({"subject": "a cat", "original_object": "a beach"}, "On a beach", 4)]                  # nothing
    out = stage(flow_table(rows)).to_pylist()
    g = [json.loads(r["grounding"]) for r in out]
    assert stage.detector.calls[0] == [["dog"], ["dog"], ["children", "football"], ["the park"]]
    assert (g[0]["phrase"], g[0]["subject_source"], g[0]["subject_issue"]) == ("dog", "llm", None)
    assert (g[1]["phrase"], g[1]["subject_source"], g[1]["subject_issue"]) == ("dog", "detector", "subject_not_noun_phrase")
    assert (g[2]["phrase"], g[2]["subject_source"]) == ("football", "detector")       # the best-scoring
    # the agent's subject not found: the caption's noun phrases in a second call
    assert stage.detector.calls[1] == [["children", "football"]]
    assert (g[3]["phrase"], g[3]["subject_source"], g[3]["tried"]) == ("football", "detector",
                                                                      ["the park", "children", "football"])
    for r in out[:4]:
        assert r["status"] == "pending" and [m["variant"] for m in r["masks"]] == ["background"]
    assert (out[4]["status"], out[4]["reject_stage"], out[4]["reject_reason"]) == ("rejected", "ground", "no_subject")
    assert g[4]["subject_issue"] == "subject_not_in_caption" and "subject_not_in_caption" in out[4]["reject_detail"]
    # candidates the detector cannot find: no_subject, not a silent word-position guess
    stage.detector = Best(set())
    r = stage(flow_table([bg({"original_object": ""}, "Dog sleeps on a couch", 5)])).to_pylist()[0]
    assert (r["status"], r["reject_reason"]) == ("rejected", "no_subject")
    assert json.loads(r["grounding"])["tried"] == ["dog", "a couch"]


def test_threshold_one_rejects_no_object(photo):
    stage = _stage(box_threshold=1.0)
    out = stage(flow_table([_row("segment", {"edited_object": "the cat"}, photo)])).to_pylist()[0]
    assert (out["status"], out["reject_reason"]) == ("rejected", "no_object") and out["output_png"] is None


def test_stage_error_rejects_only_that_row(stage, photo):
    bad = _row("detect", {"edited_object": "the cat"}, photo, i=1)
    bad["input_png"] = b"not a png"
    out = stage(flow_table([_row("detect", {"edited_object": "the cat"}, photo), bad])).to_pylist()
    assert out[0]["status"] == "pending" and (out[1]["status"], out[1]["reject_reason"]) == ("rejected", "bad_image")


# ---------------------------------------------------------------- a real job (vLLM + Ray)


@pytest.mark.slow
def test_job_with_detect_and_segment(vllm_url, tmp_path):
    import pyarrow.parquet as pq

    from tests.jobutil import run_cli, stats, write_job
    job = write_job(tmp_path / "job.yaml", vllm_url, tasks={"detect": 1.0, "segment": 1.0, "color": 1.0},
                    source__limit=6, source__repeats=2,
                    stages__ground={"actors": 1, "num_cpus": 0.5, "batch_size": 4})
    out = tmp_path / "out"
    run_cli("run", str(job), "--out", str(out), "--no-progress")
    s = stats(out)
    assert s["samples"] == 12 and s["complete"]
    assert s["tasks"]["detect"]["accepted"] > 0 and s["tasks"]["segment"]["accepted"] > 0, s["tasks"]
    rows = pq.read_table(out / "data").to_pylist()
    for r in rows:
        if r["task"] not in ("detect", "segment"):
            continue
        g = json.loads(r["provenance"]["grounding"])
        assert g["detections"] and g["detector"].startswith("tiny-random")
        assert r["input_image"]["bytes"] != r["output_image"]["bytes"] and r["mask"]["bytes"]
        p = json.loads(r["params"])
        assert p["colour"] in PALETTE and p["box"]
        if r["task"] == "segment":
            assert [m["variant"] for m in r["masks"]] == ["precise", "dilated_blurred", "bbox"]
            assert all(m["mask"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n" for m in r["masks"])
            assert r["mask_variant"] == "precise" and "opacity" in p
        else:
            assert r["mask_variant"] == "bbox" and "line_width" in p
    assert run_cli("verify", str(out)).returncode == 0
