"""The pose map with real weights (``models.pose: mediapipe-pose-full``, the embedded profile's): a
real skeleton on the demo photo with a person, ``no_pose`` on demo photos without one. Each check is
also run on the tiny random ViTPose, where it must fail: the checks see the mechanism, not just shapes."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.config import JobConfig, load_job
from pipeline.demo_data import load_demo_photo
from pipeline.translate.annotators import Annotators
from pipeline.translate.pose import PoseAnnotator
from pipeline.translate.pose_mediapipe import LANDMARK_MODEL, SPEC
from tasks import SampleReject
from tests.conftest import ROOT

# Regions of skimage's astronaut (512x512), read off the photo: the woman in the orange suit fills the
# left two thirds (the flag, the shuttle model and the helmet's right half are not her); her face.
PERSON = (0, 0, 370, 512)        # x0, y0, x1, y1
FACE = (150, 40, 300, 190)
NOSE, L_SHOULDER, R_SHOULDER = 0, 5, 6
NO_PERSON = ("chelsea", "coffee", "rocket", "motorcycle")


def pose(spec: str, **pose_cfg) -> PoseAnnotator:
    cfg = JobConfig.model_validate({"tasks": {"pose": 1.0}, "models": {"pose": spec},
                                    "translation": {"pose": pose_cfg}})
    return Annotators(cfg, {"pose"})._by_task["pose"]


@pytest.fixture(scope="module")
def mediapipe_pose() -> PoseAnnotator:
    return pose(SPEC)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_demo_photo("astronaut")


def inside(p, box) -> bool:
    return box[0] <= p[0] < box[2] and box[1] <= p[1] < box[3]


def skeleton_problems(ann: PoseAnnotator, image: np.ndarray) -> list[str]:
    """What is wrong with the annotator's keypoints for the astronaut ([] = a real skeleton): at least 7
    keypoints with visibility >= 0.5, all on her, the nose on her face, her left shoulder on the
    image's right (she faces the camera)."""
    kp, score = ann.keypoints(image, [[0.0, 0.0, 512.0, 512.0]])[0]
    vis = score >= 0.5
    problems = []
    if vis.sum() < 7:                                   # measured: 8 (hips and legs are out of frame)
        problems.append(f"{int(vis.sum())} confident keypoints")
    if not all(inside(p, PERSON) for p in kp[vis]):
        problems.append("confident keypoints off the person")
    if not (vis[NOSE] and inside(kp[NOSE], FACE)):
        problems.append(f"nose {kp[NOSE].round().tolist()} (score {score[NOSE]:.2f}) not on the face")
    if not (vis[L_SHOULDER] and vis[R_SHOULDER] and kp[L_SHOULDER, 0] > kp[R_SHOULDER, 0] + 100):
        problems.append("shoulders missing or not left-on-the-right a body's width apart")
    return problems


def test_embedded_profile_uses_the_real_pose_model():
    assert load_job(ROOT / "deploy" / "profiles" / "local.yaml").models.pose == SPEC


def test_skeleton_on_the_astronaut(mediapipe_pose, astronaut):
    assert skeleton_problems(mediapipe_pose, astronaut) == []
    m = mediapipe_pose(astronaut, np.random.default_rng(0))
    assert m.params["annotator"] == "mediapipe_pose" and m.params["model"] == SPEC
    assert m.params["keypoints_visible"][0] >= 7
    lit = m.image.any(axis=2)
    assert lit.any() and not lit[:, PERSON[2] + 20:].any()          # drawn on her, nothing over the shuttle model


def test_same_photo_same_map(mediapipe_pose, astronaut):
    """A resumed job must redraw the same map: no state carries from one photo to the next (smoothing
    and previous-landmark tracking are off), and a second graph agrees with the first."""
    first = mediapipe_pose(astronaut, np.random.default_rng(0))
    mediapipe_pose.keypoints(np.ascontiguousarray(astronaut[::2, ::2]), [[0.0, 0.0, 256.0, 256.0]])
    again, fresh = mediapipe_pose(astronaut, np.random.default_rng(1)), pose(SPEC)(astronaut, np.random.default_rng(0))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.image, fresh.image)
    assert first.params == again.params == fresh.params


def test_tiny_random_vitpose_fails_the_skeleton_check(astronaut):
    assert skeleton_problems(pose("tiny-random"), astronaut)


def as_the_job_loads_it(name: str) -> np.ndarray:
    """The photo at the embedded profile's output.max_side (512), resized by the load stage's code."""
    from pipeline.sources import decode_image
    return decode_image(load_demo_photo(name), max_side=512)


@pytest.mark.parametrize("size", ["full", "job"])
@pytest.mark.parametrize("name", NO_PERSON)
def test_no_person_is_no_pose(mediapipe_pose, name, size):
    img = load_demo_photo(name) if size == "full" else as_the_job_loads_it(name)
    with pytest.raises(SampleReject) as e:
        mediapipe_pose(img, np.random.default_rng(0))
    assert e.value.reason == "no_pose"
    assert "found no person" in e.value.detail or "below translation.pose.min_person_score" in e.value.detail


def test_the_person_score_floor_keeps_a_skeleton_off_the_motorcycle(mediapipe_pose, astronaut):
    """At 512 px BlazePose's detector passes the motorcycle at its own cut (0.5; score 0.57) and
    draws a full skeleton on it; min_person_score 0.7 rejects it and keeps the astronaut (0.81)."""
    moto = as_the_job_loads_it("motorcycle")
    with pytest.raises(SampleReject, match=r"person score 0\.5\d .* below"):
        mediapipe_pose(moto, np.random.default_rng(0))
    assert pose(SPEC, min_person_score=0.5)(moto, np.random.default_rng(0)).params["keypoints_visible"][0] >= 5
    assert mediapipe_pose(astronaut, np.random.default_rng(0)).params["min_person_score"] == 0.7


def test_tiny_random_vitpose_poses_photos_without_people():
    # the no-person check above would fail with the random model: it "finds" a pose in most of them
    tiny = pose("tiny-random")
    posed = []
    for name in NO_PERSON:
        try:
            tiny(load_demo_photo(name), np.random.default_rng(0))
            posed.append(name)
        except SampleReject:
            pass
    assert posed


def test_person_box_crops_map_back_to_image_coordinates(mediapipe_pose, astronaut):
    """With person boxes (translation.pose.person_boxes: detector) BlazePose runs on each box's crop;
    the keypoints come back in image pixels, where the whole-image run puts them. Compared on the
    face (nose, eyes, ears), which the model places within a few pixels either way; the arms move
    with the crop by tens of pixels, a real difference of the model's view."""
    whole_kp, whole_vis = mediapipe_pose.keypoints(astronaut, [[0.0, 0.0, 512.0, 512.0]])[0]
    box_kp, box_vis = mediapipe_pose.keypoints(astronaut, [[60.0, 20.0, 300.0, 492.0]])[0]
    face = np.arange(5)
    assert (whole_vis[face] >= 0.5).all() and (box_vis[face] >= 0.5).all()
    # the crop starts at (30, 0) after the 10% margin: unmapped, the face would be off by that much
    assert np.abs(whole_kp[face] - box_kp[face]).max() < 10
    # a box with no one in it (the shuttle model) gives no_pose, not a skeleton
    with pytest.raises(SampleReject, match="found no person"):
        mediapipe_pose.keypoints(astronaut, [[380.0, 0.0, 130.0, 260.0]])


def test_model_ref_names_the_weight_file(mediapipe_pose, astronaut):
    from pipeline.models.mediapipe_graph import package_root
    ref = mediapipe_pose.model_ref()
    assert ref["id"].startswith(SPEC)
    assert ref["sha256"] == hashlib.sha256((package_root() / LANDMARK_MODEL).read_bytes()).hexdigest()
    assert mediapipe_pose(astronaut, np.random.default_rng(0)).params["model_sha256"] == ref["sha256"]
