"""The bundled demo source: every photo loads offline as HxWx3 uint8 RGB, with captions."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.demo_data import DEMO_CAPTIONS, DEMO_PHOTOS, load_demo_photo, to_rgb_uint8


@pytest.mark.parametrize("name", sorted(DEMO_PHOTOS))
def test_demo_photo_loads(name):
    img = load_demo_photo(name)
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8
    assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 64
    assert img.flags["C_CONTIGUOUS"]
    assert img.std() > 5                                   # a real picture, not a blank
    caps = DEMO_PHOTOS[name]
    assert 2 <= len(caps) <= 3 and len(set(caps)) == len(caps)
    assert all(isinstance(c, str) and len(c.split()) >= 5 for c in caps)


def test_demo_photos_are_distinct_and_colour():
    imgs = {n: load_demo_photo(n) for n in DEMO_PHOTOS}
    assert len(imgs) >= 8
    sigs = {(i.shape, int(i[::37, ::41].sum())) for i in imgs.values()}
    assert len(sigs) == len(imgs)                         # no alias listed twice (cat == chelsea)
    for n, i in imgs.items():
        spread = (i.max(axis=2).astype(int) - i.min(axis=2)).mean()
        assert spread > 8, n                              # really colour, not grey in 3 channels


def test_unknown_photo():
    with pytest.raises(KeyError):
        load_demo_photo("no_such_photo")


def test_to_rgb_uint8_conversions():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_rgb_uint8(g)
    assert out.shape == (3, 4, 3) and (out == g[..., None]).all()
    rgba = np.zeros((2, 2, 4), np.uint8); rgba[..., 0] = 200; rgba[0, 0, 3] = 255
    out = to_rgb_uint8(rgba)
    assert out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)   # on white
    f = to_rgb_uint8(np.ones((2, 2), np.float64))
    assert f.dtype == np.uint8 and (f == 255).all()
    assert to_rgb_uint8(np.ones((2, 2), bool)).max() == 255


def test_demo_captions():
    assert 35 <= len(DEMO_CAPTIONS) <= 60
    assert len(set(DEMO_CAPTIONS)) == len(DEMO_CAPTIONS)
    assert all(isinstance(c, str) and 3 <= len(c.split()) <= 25 and "\n" not in c for c in DEMO_CAPTIONS)


def test_person_photos_are_routed_to_pose_only_when_the_job_runs_it():
    """The demo's pose samples used to land on photos without anybody in them (rejected no_pose by
    the real pose model); a person photo now goes to the pose task, after the unrouted rows."""
    from pipeline.demo_data import DEMO_PEOPLE
    from pipeline.sources import demo_rows

    with_pose = list(demo_rows({"pose", "color"}, 0))
    without = list(demo_rows({"color"}, 0))
    routed = [r for r in with_pose if r.task == "pose"]
    assert [r.image_ref["name"] for r in routed] == list(DEMO_PEOPLE)
    assert with_pose[: len(without)] == without and not [r for r in without if r.task == "pose"]
    assert not [r for r in demo_rows({"pose"}, 0, 0) if r.task == "pose"]      # source.demo_people: 0
