"""The five translation tasks' pair generators: annotators (Canny, normals from depth, tiny DPT /
ViTPose / SegFormer), both directions, rejects, the translation stage. One slow test runs a real job."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import JobConfig
from pipeline.schema import flow_table, new_flow_row
from pipeline.sources import decode_png, encode_png
from pipeline.stages.translate import TranslateStage
from pipeline.translate.annotators import TASK_MAPS, Annotators
from pipeline.translate.normal import normals_from_depth, normals_to_rgb
from pipeline.translate.pose import SKELETON, draw_skeleton
from pipeline.translate.segmentation import PALETTE, colourise
from pipeline.translate.config import SketchConfig
from pipeline.translate.sketch import SketchAnnotator, auto_thresholds
from tasks import SampleReject, get_task, implemented

TR_TASKS = {t: 1.0 for t in TASK_MAPS}


@pytest.fixture(scope="module")
def photo():
    import skimage.data
    return np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])       # 128x128


@pytest.fixture(scope="module")
def annotators():
    return Annotators(JobConfig.model_validate({"tasks": TR_TASKS}))


def square_image(h=96, w=128, box=(30, 40, 70, 90), lo=30, hi=220) -> np.ndarray:
    """Dark image with one bright rectangle (rows y0:y1, cols x0:x1): its only edges are the
    rectangle's outline."""
    y0, x0, y1, x1 = box
    img = np.full((h, w, 3), lo, np.uint8)
    img[y0:y1, x0:x1] = hi
    return img


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- registry / config


def test_translation_tasks_are_runnable():
    assert set(TASK_MAPS) <= set(implemented())
    cfg = JobConfig.model_validate({"tasks": TR_TASKS})                      # a job accepts them
    assert TranslateStage.needed({"depth", "color"}) and not TranslateStage.needed({"color", "detect"})
    assert cfg.models.pose == "tiny-random" and cfg.models.segmentation == "tiny-random"


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match=r"translation\.sketch\.low_range"):
        JobConfig.model_validate({"translation": {"sketch": {"low_range": [120, 50]}}})
    with pytest.raises(ValidationError, match=r"translation\.sketch\.blur_ksize"):
        JobConfig.model_validate({"translation": {"sketch": {"blur_ksize": 4}}})
    with pytest.raises(ValidationError, match="person_boxe"):
        JobConfig.model_validate({"translation": {"pose": {"person_boxe": "whole_image"}}})


def test_only_needed_annotators_are_built():
    cfg = JobConfig.model_validate({"tasks": {"sketch": 1.0}})
    a = Annotators(cfg, {"sketch", "color"})
    assert a.built() == ["sketch"]                                 # no model loaded for a sketch-only job
    a.make_map("normal", square_image(), rng())                    # a task from a source column: built once
    assert a.built() == ["normal", "sketch"] and a._depth is not None     # normal brought the depth model
    a.make_map("depth", square_image(), rng())
    assert a._by_task["depth"] is a._by_task["normal"].depth                # ... which depth then shares


# ---------------------------------------------------------------- sketch (Canny, real)


def test_canny_edges_follow_the_image_edges():
    img = square_image()
    m = SketchAnnotator(SketchConfig(blur_ksize=0, line_style="white_on_black")).__call__(img, rng())
    edges = m.image[..., 0] > 0
    assert m.image.shape == img.shape and (m.image[..., 0] == m.image[..., 2]).all()
    outline = np.zeros(img.shape[:2], bool)
    outline[28:72, 38:92] = True
    outline[32:68, 42:88] = False                                  # a 2-px band either side of the border
    assert edges.any() and not (edges & ~outline).any()            # no edge away from the rectangle's outline
    # all four sides are traced along most of their length
    top, bottom = edges[28:32, 42:88].any(axis=0), edges[68:72, 42:88].any(axis=0)
    left, right = edges[32:68, 38:42].any(axis=1), edges[32:68, 88:92].any(axis=1)
    assert min(top.mean(), bottom.mean(), left.mean(), right.mean()) > 0.9


def test_sketch_params_and_line_style():
    img = square_image()
    dark = SketchAnnotator(SketchConfig(blur_ksize=0))(img, rng())     # default: black lines on white
    assert (dark.image[..., 0] == 255).mean() > 0.9 and (dark.image == 0).any()
    p = dark.params
    assert p["annotator"] == "canny" and p["threshold_mode"] == "auto"
    assert (p["low_threshold"], p["high_threshold"]) == tuple(round(v, 3) for v in auto_thresholds(img[..., 0], 0.33))
    sampled = SketchAnnotator(SketchConfig(thresholds="sampled", low_range=(60, 70), high_range=(150, 160)))
    a, b = sampled(img, rng(3)), sampled(img, rng(3))
    assert a.params == b.params and 60 <= a.params["low_threshold"] <= 70 <= 150 <= a.params["high_threshold"] <= 160
    assert sampled(img, rng(4)).params["low_threshold"] != a.params["low_threshold"]


def test_flat_image_gives_empty_sketch():
    with pytest.raises(SampleReject) as e:
        SketchAnnotator(SketchConfig())(np.full((64, 64, 3), 90, np.uint8), rng())
    assert e.value.reason == "empty_map"


# ---------------------------------------------------------------- normals (real)


def test_normals_of_tilted_planes_point_the_right_way():
    h, w = 60, 80
    cols = np.tile(np.linspace(1.0, 0.0, w, dtype=np.float32), (h, 1))     # disparity: near left, far right
    n = normals_from_depth(cols, strength=1.0)
    inner = n[5:-5, 5:-5]
    # a wall receding to the right faces right: +x, no y, still toward the viewer
    assert (inner[..., 0] > 0.5).all() and np.abs(inner[..., 1]).max() < 1e-4 and (inner[..., 2] > 0.5).all()
    np.testing.assert_allclose(inner[..., 0], 1 / np.sqrt(2), atol=0.03)    # slope 1 over the width → 45°
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    rgb = normals_to_rgb(n)[30, 40]
    assert rgb[0] > 200 and abs(int(rgb[1]) - 128) <= 1 and rgb[2] > 200
    # a floor: near at the bottom, far at the top → faces up (+y, green)
    floor = np.tile(np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None], (1, w))
    nf = normals_from_depth(floor)[5:-5, 5:-5]
    assert (nf[..., 1] > 0.3).all() and np.abs(nf[..., 0]).max() < 1e-4
    # the same ramp read as depth (1 = far) tilts the other way
    assert (normals_from_depth(cols, disparity=False)[5:-5, 5:-5, 0] < -0.5).all()
    # facing the camera: (128, 128, 255)
    flat = normals_to_rgb(normals_from_depth(np.full((h, w), 0.5, np.float32)))
    assert (flat == (128, 128, 255)).all()


def test_flat_depth_gives_empty_maps(annotators, photo):
    depth = annotators._by_task["depth"]
    with pytest.raises(SampleReject) as e:
        depth(photo, rng(), depth01=np.zeros(photo.shape[:2], np.float32))
    assert e.value.reason == "empty_map"


# ---------------------------------------------------------------- model maps (tiny models)


@pytest.mark.parametrize("task", TASK_MAPS)
def test_maps_have_the_photo_size_and_are_deterministic(annotators, photo, task):
    odd = np.ascontiguousarray(photo[:101, :77])                   # not the models' input size or aspect
    for im in (photo, odd):
        a, b = annotators.make_map(task, im, rng(1)), annotators.make_map(task, im, rng(1))
        assert a.image.shape == im.shape and a.image.dtype == np.uint8
        assert np.array_equal(a.image, b.image) and a.params == b.params
        assert a.image.std() > 2                                    # not blank
        assert a.params["annotator"]
    if task in ("depth", "normal", "pose", "segmentation"):
        assert a.params["model"].startswith("tiny-random")


def test_depth_map_is_gray_and_normal_uses_the_same_depth(annotators, photo):
    d = annotators.make_map("depth", photo, rng()).image
    assert (d[..., 0] == d[..., 1]).all() and d.min() == 0 and d.max() == 255      # min-max normalised
    depth = annotators._by_task["depth"]
    n = annotators.make_map("normal", photo, rng()).image
    want = normals_to_rgb(normals_from_depth(depth.relative_depth(photo), 1.0, 2.0))
    assert np.array_equal(n, want)


def test_draw_skeleton_draws_only_visible_limbs():
    kp = np.array([[10 + 5 * i, 20 + 3 * i] for i in range(17)], np.float32)
    vis = np.zeros(17, bool)
    vis[[5, 7]] = True                                             # left shoulder → left elbow only
    out = draw_skeleton((80, 120, 3), [kp], [vis], 2)
    lit = out.any(axis=2)
    assert lit[int(kp[5, 1]), int(kp[5, 0])] and lit[int(kp[7, 1]), int(kp[7, 0])]
    mid = ((kp[5] + kp[7]) / 2).round().astype(int)
    assert lit[mid[1], mid[0]]                                     # the limb between them
    assert not lit[int(kp[16, 1]), int(kp[16, 0])]                 # an invisible joint stays black
    assert (5, 7) in SKELETON
    assert not draw_skeleton((80, 120, 3), [kp], [np.zeros(17, bool)], 2).any()


def test_too_few_keypoints_is_no_pose(photo):
    cfg = JobConfig.model_validate({"tasks": {"pose": 1.0},
                                    "translation": {"pose": {"min_keypoint_score": 1e6}}})
    with pytest.raises(SampleReject) as e:
        Annotators(cfg, {"pose"}).make_map("pose", photo, rng())
    assert e.value.reason == "no_pose" and "min_keypoints" in e.value.detail


def test_pose_with_detector_boxes(photo):
    cfg = JobConfig.model_validate({"tasks": {"pose": 1.0}, "translation": {"pose": {"person_boxes": "detector"}}})
    m = Annotators(cfg, {"pose"}).make_map("pose", photo, rng())
    assert m.params["person_boxes"] == "detector" and m.params["boxes"]
    # the tiny detector's boxes lie inside the image
    assert all(0 <= x <= photo.shape[1] + 1 and 0 <= y <= photo.shape[0] + 1 for x, y, _, _ in m.params["boxes"])
    none = JobConfig.model_validate({"tasks": {"pose": 1.0}, "grounding": {"box_threshold": 1.0},
                                     "translation": {"pose": {"person_boxes": "detector"}}})
    with pytest.raises(SampleReject) as e:
        Annotators(none, {"pose"}).make_map("pose", photo, rng())
    assert e.value.reason == "no_pose" and "detector found no" in e.value.detail


def test_segmentation_palette_is_fixed_and_one_class_is_empty(annotators, photo):
    m = annotators.make_map("segmentation", photo, rng())
    lab = annotators._by_task["segmentation"].labels(photo)
    assert np.array_equal(m.image, PALETTE[lab])                   # each class its fixed colour
    assert m.params["palette"] == "pairforge-256-v1" and m.params["num_classes"] == len(np.unique(lab)) >= 2
    assert abs(sum(c["fraction"] for c in m.params["classes"]) - 1) < 0.01 or m.params["num_classes"] > 32
    assert np.array_equal(colourise(np.array([[3, 3], [7, 3]])), PALETTE[[[3, 3], [7, 3]]])
    cfg = JobConfig.model_validate({"tasks": {"segmentation": 1.0}, "translation": {"segmentation": {"min_labels": 256}}})
    with pytest.raises(SampleReject) as e:
        Annotators(cfg, {"segmentation"}).make_map("segmentation", photo, rng())
    assert e.value.reason == "empty_map"


# ---------------------------------------------------------------- pairs


@pytest.mark.parametrize("task", TASK_MAPS)
def test_both_directions_swap_input_and_output(annotators, photo, task):
    t = get_task(task)
    fwd = t.make_pair(photo, {}, {"direction": "image_to_map"}, rng(2), annotators=annotators)
    back = t.make_pair(photo, {}, {"direction": "map_to_image"}, rng(2), annotators=annotators)
    assert fwd.input_image is photo and back.output_image is photo
    assert np.array_equal(fwd.output_image, back.input_image) and not np.array_equal(fwd.output_image, photo)
    assert fwd.params["direction"] == "image_to_map" and back.params["direction"] == "map_to_image"
    assert fwd.mask is None and json.dumps(fwd.params)                 # JSON-serialisable


def test_make_pair_rejects(annotators, photo):
    t = get_task("sketch")
    with pytest.raises(SampleReject) as e:
        t.make_pair(photo, {}, {"direction": "image_to_map"}, rng())
    assert e.value.reason == "no_annotators"
    with pytest.raises(SampleReject) as e:
        t.make_pair(photo, {}, {"direction": "sideways"}, rng(), annotators=annotators)
    assert e.value.reason == "bad_plan"


# ---------------------------------------------------------------- the stage


def _row(task, image, direction, i):
    return new_flow_row(sample_index=i, id=f"id-{i}", source_id=f"s{i}", attempt=0, task=task, seed=1000 + i,
                        caption="an astronaut", input_png=encode_png(image) if image is not None else None,
                        plan=json.dumps({"direction": direction}),
                        answer=json.dumps({"instruction": "x", "direction": direction}))


def test_stage_makes_pairs_passes_others_and_counts_rejects(photo):
    cfg = JobConfig.model_validate({"tasks": {**TR_TASKS, "color": 1.0}})
    st = TranslateStage(cfg.model_dump(mode="json"))
    assert st.annotators.built() == sorted(TASK_MAPS)
    rows = [_row(t, photo, d, i) for i, (t, d) in enumerate(
        [(t, d) for t in TASK_MAPS for d in ("image_to_map", "map_to_image")])]
    rows.append(_row("sketch", np.full((40, 40, 3), 7, np.uint8), "image_to_map", 50))   # flat: empty_map
    rows.append(_row("depth", None, "image_to_map", 51))                                 # no photo
    other = _row("color", photo, "image_to_map", 52)
    rows.append(other)
    out = {r["id"]: r for r in st(flow_table(rows)).to_pylist()}
    for i, (t, d) in enumerate([(t, d) for t in TASK_MAPS for d in ("image_to_map", "map_to_image")]):
        r = out[f"id-{i}"]
        assert r["status"] == "pending", (t, r["reject_reason"], r["reject_detail"])
        params = json.loads(r["params"])
        assert params["direction"] == d
        inp, outp = decode_png(r["input_png"]), decode_png(r["output_png"])
        assert inp.shape == outp.shape == photo.shape
        assert np.array_equal(inp if d == "image_to_map" else outp, photo)
    assert (out["id-50"]["status"], out["id-50"]["reject_reason"], out["id-50"]["reject_stage"]) == \
        ("rejected", "empty_map", "translate")
    assert out["id-51"]["reject_reason"] == "no_input_image"
    assert out["id-52"] == other                                           # other tasks untouched


# ---------------------------------------------------------------- a real job


@pytest.mark.slow
def test_job_with_the_five_translation_tasks(vllm_url, tmp_path):
    """Embedded default (vLLM SmolLM2, tiny models): every translation task yields accepted pairs in
    both directions. A caption file with image and task columns gives each task the same photos."""
    import pyarrow.parquet as pq

    from conftest import png_bytes
    from pipeline.demo_data import load_demo_photo
    from tests.jobutil import run_cli, stats, write_job

    folder = tmp_path / "imgs"
    folder.mkdir()
    photos = {"astronaut": "An astronaut in an orange suit holding a helmet",
              "coffee": "A cup of coffee on a saucer seen from above",
              "chelsea": "A tabby cat looking to the side",
              "rocket": "A rocket standing on the launch pad"}
    lines = []
    for name, cap in photos.items():
        (folder / f"{name}.png").write_bytes(png_bytes(load_demo_photo(name)[::2, ::2].copy()))
        lines += [json.dumps({"image": f"{name}.png", "caption": cap, "task": t}) for t in TASK_MAPS]
    # every (photo, task) once: a caption file whose rows name their image and task
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
    job = write_job(tmp_path / "job.yaml", vllm_url, tasks=TR_TASKS,
                    source={"kind": "captions", "path": str(folder / "rows.jsonl"), "repeats": 4},
                    stages__translate={"actors": 1, "num_cpus": 0.5, "batch_size": 4},
                    output__rows_per_shard=16)
    out = tmp_path / "out"
    run_cli("run", str(job), "--out", str(out), "--no-progress", timeout=1800)
    s = stats(out)
    assert s["complete"]
    rows = pq.read_table(out / "data").to_pylist()
    seen = {(r["task"], json.loads(r["params"])["direction"]) for r in rows if r["task"] in TASK_MAPS}
    want = {(t, d) for t in TASK_MAPS for d in ("image_to_map", "map_to_image")}
    assert seen == want, (sorted(want - seen), s["tasks"])
    for r in rows:
        p = json.loads(r["params"])
        assert r["input_image"]["bytes"] != r["output_image"]["bytes"] and r["mask"] is None
        assert p["annotator"] in ("dpt", "canny", "normals_from_depth", "vitpose", "semantic_segmentation")
    assert run_cli("verify", str(out)).returncode == 0
