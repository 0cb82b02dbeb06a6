"""Detector and segmenter backends on tiny random-init models built with the real classes (no
downloads): batched calls give what one-by-one calls give, thresholds work, and each package's
original checkpoint format loads by path through the code that loads a real checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.grounding.config import GroundingConfig
from pipeline.grounding.detector import Detection, build_caption, build_detector, decode, phrase_token_index
from pipeline.grounding.segmenter import build_segmenter
from pipeline.models.tiny import tiny_tokenizer

def _groundingdino_installed() -> bool:
    """groundingdino-py is installed with --no-deps by deploy/setup.sh; CI must have it."""
    import importlib.util
    import os
    if importlib.util.find_spec("groundingdino") is not None:
        return True
    if os.environ.get("CI"):
        pytest.fail("groundingdino-py missing in CI: pip install --no-deps groundingdino-py==0.4.0")
    return False


needs_gdino = pytest.mark.skipif(not _groundingdino_installed(), reason="groundingdino-py not installed")
DETECTORS = ("transformers", pytest.param("groundingdino", marks=needs_gdino))
SEGMENTERS = ("transformers", "segment-anything")


@pytest.fixture(scope="module")
def images():
    import skimage.data
    return [np.ascontiguousarray(skimage.data.coffee()[::2, ::2]),          # 200x300
            np.ascontiguousarray(skimage.data.chelsea()[::2, ::2]),         # 150x226
            np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])]       # 128x128


PHRASES = [["a cup", "the saucer"], ["a cat"], ["an astronaut", "a flag", "the helmet"]]


@pytest.fixture(scope="module", params=DETECTORS)
def detector(request):
    return build_detector("tiny-random", GroundingConfig(detector_backend=request.param))


@pytest.fixture(scope="module", params=SEGMENTERS)
def segmenter(request):
    return build_segmenter("tiny-random", GroundingConfig(segmenter_backend=request.param))


def _same(a: list[list[Detection]], b: list[list[Detection]], tol=0.05):
    assert [[d.phrase for d in x] for x in a] == [[d.phrase for d in x] for x in b]
    for x, y in zip(a, b):
        for d, e in zip(x, y):
            assert np.allclose(d.box, e.box, atol=tol) and abs(d.score - e.score) < 1e-4


# ---------------------------------------------------------------- phrases and decoding


def test_caption_spans_and_tokens():
    cap, spans = build_caption(["The dog's tail", "a U.S. flag", "the dog's tail", ""])
    assert cap == "the dog's tail . a u s flag ."
    assert [s[0] for s in spans] == ["The dog's tail", "a U.S. flag"]          # duplicates and empties dropped
    toks = phrase_token_index(tiny_tokenizer(), [cap], [spans], 64)[0]
    ids = tiny_tokenizer()(cap)["input_ids"]
    words = tiny_tokenizer().convert_ids_to_tokens(ids)
    assert [words[j] for j in toks[0][1]] == ["the", "dog", "'", "s", "tail"]
    assert [words[j] for j in toks[1][1]] == ["a", "u", "s", "flag"]


def test_decode_thresholds_attribution_and_nms():
    g = GroundingConfig(box_threshold=0.4, text_threshold=0.3, nms_iou=0.5, max_detections=10)
    tokens = [("dog", [1]), ("cat", [3, 4])]
    prob = np.zeros((5, 8), np.float32)
    prob[0, 1] = 0.9                     # dog
    prob[1, 1] = 0.8                     # dog, same place as 0: suppressed
    prob[2, 4] = 0.7                     # cat (its second token)
    prob[3, [1, 3]] = [0.45, 0.6]        # both; cat wins
    prob[4, 1] = 0.39                    # below box_threshold
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1],
                      [0.8, 0.8, 0.2, 0.2], [0.3, 0.7, 0.1, 0.1]], np.float32)
    dets = decode(prob, boxes, tokens, (100, 200), g)
    assert [(d.phrase, round(d.score, 2)) for d in dets] == [("dog", 0.9), ("cat", 0.7), ("cat", 0.6)]
    assert dets[0].box == (80.0, 40.0, 120.0, 60.0)                  # cx,cy,w,h of the image → pixels
    assert decode(prob, boxes, tokens, (100, 200), g.model_copy(update={"max_detections": 1}))[0].phrase == "dog"
    assert decode(prob, boxes, tokens, (100, 200), g.model_copy(update={"text_threshold": 0.75})) == dets[:1]
    assert decode(prob, boxes, [], (100, 200), g) == []


# ---------------------------------------------------------------- detectors


def test_detector_finds_boxes_in_the_image(detector, images):
    out = detector.detect(images, PHRASES)
    assert len(out) == len(images)
    for img, phrases, dets in zip(images, PHRASES, out):
        h, w = img.shape[:2]
        assert dets, "tiny models score most boxes above the default thresholds"
        assert len(dets) <= GroundingConfig().max_detections
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
        for d in dets:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert d.phrase in phrases and d.score > GroundingConfig().box_threshold


def test_detector_batched_equals_one_by_one(detector, images):
    batched = detector.detect(images, PHRASES)
    single = [detector.detect([img], [p])[0] for img, p in zip(images, PHRASES)]
    _same(batched, single)
    # and the batch order does not matter either
    _same(detector.detect(images[::-1], PHRASES[::-1]), batched[::-1])


def test_threshold_one_detects_nothing(detector, images):
    g = detector.g
    try:
        detector.g = g.model_copy(update={"box_threshold": 1.0})
        assert detector.detect(images, PHRASES) == [[], [], []]
    finally:
        detector.g = g
    assert detector.detect([images[0]], [[]]) == [[]] and detector.detect([], []) == []
    mixed = detector.detect(images[:2], [[], ["a cat"]])
    assert mixed[0] == [] and mixed[1]


# ---------------------------------------------------------------- segmenters


BOXES = [np.array([[10, 20, 150, 180], [100, 50, 290, 190]], np.float32), np.zeros((0, 4), np.float32),
         np.array([[5, 5, 120, 110]], np.float32)]


def test_segmenter_masks(segmenter, images):
    out = segmenter.segment(images, BOXES)
    for img, b, m in zip(images, BOXES, out):
        assert m.dtype == bool and m.shape == (len(b), *img.shape[:2])
    assert out[0].any() and out[2].any()
    assert not np.array_equal(out[0][0], out[0][1])                  # one mask per box


def test_segmenter_batched_equals_one_by_one(segmenter, images):
    batched = segmenter.segment(images, BOXES)
    for i, img in enumerate(images):
        single = segmenter.segment([img], [BOXES[i]])[0]
        assert np.mean(single != batched[i]) < 1e-3 if single.size else batched[i].size == 0
    # boxes of one image together = each box alone
    per_box = [segmenter.segment([images[0]], [BOXES[0][k:k + 1]])[0][0] for k in range(2)]
    assert all(np.mean(p != b) < 1e-3 for p, b in zip(per_box, batched[0]))


# ---------------------------------------------------------------- production loading path


def test_transformers_detector_loads_saved_folder(tmp_path, images):
    g = GroundingConfig(detector_backend="auto", detector_image_size=96)
    tiny = build_detector("tiny-random", g)
    tiny.model.save_pretrained(tmp_path / "gdino")
    tiny.tokenizer.save_pretrained(tmp_path / "gdino")
    loaded = build_detector(str(tmp_path / "gdino"), g)
    assert type(loaded).__name__ == "TransformersDetector" and loaded.model_id == str(tmp_path / "gdino")
    _same(loaded.detect(images, PHRASES), tiny.detect(images, PHRASES), tol=1e-3)


@needs_gdino
def test_groundingdino_py_loads_original_checkpoint(tmp_path, images):
    from pipeline.grounding.detector_gdino import tiny_files
    tiny = build_detector("tiny-random", GroundingConfig(detector_backend="groundingdino"))
    # the released checkpoints: {"model": state_dict}, keys prefixed "module." by DDP training
    torch.save({"model": {f"module.{k}": v for k, v in tiny.model.state_dict().items()}, "epoch": 12},
               tmp_path / "groundingdino_tiny.pth")
    config_py, bert = tiny_files()
    g = GroundingConfig(detector_config=config_py, text_encoder_dir=bert, detector_image_size=96)
    loaded = build_detector(str(tmp_path / "groundingdino_tiny.pth"), g)          # auto: .pth → groundingdino
    assert type(loaded).__name__ == "GroundingDinoPyDetector"
    _same(loaded.detect(images, PHRASES), tiny.detect(images, PHRASES), tol=1e-3)
    # a real checkpoint without the local BERT folder fails naming the field (no hub fallback)
    with pytest.raises(ValueError, match="grounding.text_encoder_dir"):
        build_detector(str(tmp_path / "groundingdino_tiny.pth"), GroundingConfig(detector_config=config_py))
    # a checkpoint that is not this architecture fails loudly, not with random weights
    torch.save({"model": {"foo.weight": torch.zeros(1)}}, tmp_path / "groundingdino_other.pth")
    with pytest.raises(ValueError, match="does not match"):
        build_detector(str(tmp_path / "groundingdino_other.pth"), g)


def test_transformers_segmenter_loads_saved_folder(tmp_path, images):
    tiny = build_segmenter("tiny-random", GroundingConfig())
    tiny.model.save_pretrained(tmp_path / "sam")
    loaded = build_segmenter(str(tmp_path / "sam"), GroundingConfig())
    assert type(loaded).__name__ == "TransformersSegmenter"
    for a, b in zip(loaded.segment(images, BOXES), tiny.segment(images, BOXES)):
        assert np.array_equal(a, b)


def test_segment_anything_loads_original_checkpoint(tmp_path, images):
    tiny = build_segmenter("tiny-random", GroundingConfig(segmenter_backend="segment-anything"))
    torch.save(tiny.sam.state_dict(), tmp_path / "sam_tiny_0000.pth")       # the released format: a bare state dict
    loaded = build_segmenter(str(tmp_path / "sam_tiny_0000.pth"), GroundingConfig())   # auto: .pth → segment-anything
    assert type(loaded).__name__ == "SegmentAnythingSegmenter" and "(tiny)" in loaded.model_id
    for a, b in zip(loaded.segment(images, BOXES), tiny.segment(images, BOXES)):
        assert np.array_equal(a, b)
    torch.save(tiny.sam.state_dict(), tmp_path / "my_sam.pth")
    with pytest.raises(ValueError, match="grounding.segmenter_type"):
        build_segmenter(str(tmp_path / "my_sam.pth"), GroundingConfig())
    assert build_segmenter(str(tmp_path / "my_sam.pth"), GroundingConfig(segmenter_type="tiny")).segment(
        images[:1], BOXES[:1])[0].shape == (2, 200, 300)


def test_missing_checkpoints_name_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="models.detector"):
        build_detector(str(tmp_path / "nope.pth"), GroundingConfig())
    with pytest.raises(FileNotFoundError, match="models.segmenter"):
        build_segmenter(str(tmp_path / "sam_vit_h.pth"), GroundingConfig())
