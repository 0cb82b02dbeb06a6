"""Bundled demo source: real colour photos that ship inside scikit-image (no download), with
captions written for them, plus image-less captions for the text-to-image tasks.

Only photos that load offline from the scikit-image wheel are listed (``skimage.data.cat`` is the
same picture as ``chelsea``; ``eagle``, ``lily``, ``skin`` ... need ``pooch`` and a download, so
they are left out). ``DEMO_SIGNS`` photos get a sign with known text for the text task.
``logo`` is RGBA and is composited on white; grayscale arrays are repeated
into three channels.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# photo name -> captions (each describes the picture as it is; two or three per photo)
DEMO_PHOTOS: dict[str, tuple[str, ...]] = {
    "astronaut": (
        "A smiling astronaut in an orange flight suit posing beside a helmet, an American flag and a model space shuttle",
        "Official portrait of a woman astronaut with short brown hair in an orange pressure suit",
        "A portrait of a smiling astronaut in an orange suit with mission patches, a black helmet in front of her",
    ),
    "chelsea": (
        "A close-up of a tabby cat with green eyes and a pink nose",
        "The face of a striped brown cat looking to the side, its whiskers in sharp focus",
        "A tabby cat's face filling the frame, a blurred white background behind it",
    ),
    "coffee": (
        "A cup of espresso on a red saucer with a silver spoon on a wooden table",
        "A small red and white espresso cup with crema, seen from above on a rustic wooden table",
    ),
    "rocket": (
        "A white rocket standing on a launch pad between steel towers at dusk",
        "A rocket on the pad under a deep blue evening sky, floodlights glowing around its base",
        "A launch site at twilight with a tall white rocket flanked by lattice towers",
    ),
    "motorcycle": (
        "A red motorcycle parked on its stand in a cluttered garage",
        "A red cruiser motorbike with chrome engine parts in front of shelves full of boxes",
    ),
    "hubble_deep_field": (
        "A deep space image full of distant galaxies on a black background",
        "Hundreds of tiny colourful galaxies scattered across the darkness of space",
    ),
    "immunohistochemistry": (
        "A microscope image of stained tissue with brown cell membranes and blue nuclei",
        "A stained tissue section under a microscope, clusters of brown-outlined cells on a pale background",
    ),
    "retina": (
        "A photograph of the back of a human eye, red-orange with branching blood vessels",
        "A fundus image of a retina with the bright optic disc on the left and dark vessels spreading across",
    ),
    "logo": (
        "A round logo split into green and orange halves with a snake's head and scales",
        "A circular green and orange emblem showing the curving body of a snake on a white background",
    ),
}

# How to get each photo's array from skimage.data.
_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": lambda: _skd().astronaut(),
    "chelsea": lambda: _skd().chelsea(),
    "coffee": lambda: _skd().coffee(),
    "rocket": lambda: _skd().rocket(),
    "motorcycle": lambda: _skd().stereo_motorcycle()[0],      # left view of the stereo pair
    "hubble_deep_field": lambda: _skd().hubble_deep_field(),
    "immunohistochemistry": lambda: _skd().immunohistochemistry(),
    "retina": lambda: _skd().retina(),
    "logo": lambda: _skd().logo(),
}


def _skd():
    import skimage.data
    return skimage.data


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 (bool, uint8, uint16 or float in [0,1]) -> HxWx3 uint8 RGB.
    RGBA is composited on white."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"not an image: shape {a.shape}")
    c = a.shape[2]
    if c == 1:
        a = np.repeat(a, 3, axis=2)
    elif c == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = (a[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    elif c != 3:
        raise ValueError(f"unsupported channel count {c}")
    return np.ascontiguousarray(a)


def load_demo_photo(name: str) -> np.ndarray:
    """One bundled photo as HxWx3 uint8 RGB."""
    if name not in _LOADERS:
        raise KeyError(f"unknown demo photo {name!r}; known: {', '.join(DEMO_PHOTOS)}")
    return to_rgb_uint8(_LOADERS[name]())


# Captions without images, for the tasks that generate their base image from text.
DEMO_CAPTIONS: tuple[str, ...] = (
    "A brown dog catching a frisbee in a sunny park",
    "A bowl of oranges on a kitchen counter next to a window",
    "A lighthouse on a rocky cliff above stormy waves",
    "A woman reading a book on a bench under a cherry tree",
    "A red bicycle leaning against a brick wall",
    "A snowy village street at night lit by warm lamps",
    "A plate of sushi with chopsticks on a black slate",
    "An old man playing chess in a city park",
    "A hot air balloon floating over green hills at sunrise",
    "A wooden cabin beside a lake surrounded by pine trees",
    "A white cat sitting on a stack of books",
    "A yellow taxi waiting at a crosswalk in the rain",
    "A child building a sandcastle on a beach",
    "A vase of tulips on a wooden dining table",
    "A horse grazing in a misty meadow",
    "A sailboat on calm blue water near a small island",
    "A chef slicing vegetables in a busy restaurant kitchen",
    "A laptop and a cup of tea on a desk by a window",
    "A row of colourful houses along a canal",
    "A fox standing in a snowy forest",
    "A stack of pancakes with strawberries and whipped cream",
    "A man riding a skateboard down a concrete ramp",
    "An owl perched on a branch at dusk",
    "A desert road stretching toward red mountains",
    "A green tractor in a wheat field",
    "Two friends laughing at a cafe table",
    "A glass of red wine next to a wedge of cheese",
    "A waterfall flowing into a mossy pool in a rainforest",
    "A teddy bear sitting on a child's bed",
    "A train crossing a stone bridge over a river",
    "A basket of apples in an orchard",
    "A girl with an umbrella walking through autumn leaves",
    "A motorboat speeding across a lake",
    "A pizza with basil and mozzarella on a wooden board",
    "A city square with a fountain and pigeons",
    "A butterfly resting on a pink flower",
    "A violin lying on a sheet of music",
    "A camel walking across sand dunes at sunset",
    "A blue armchair beside a bookshelf in a quiet living room",
    "A mountain climber standing on a rocky summit above the clouds",
    "A pair of running shoes on a gravel path",
    "A family of ducks swimming in a pond",
)


# Photos with a composed sign whose text the caption quotes (pipeline/text/signs.py); the demo source
# routes them to the text task, after the plain photos.
DEMO_SIGNS = 24


def load_demo_sign(index: int) -> np.ndarray:
    """The ``index``-th demo sign photo as HxWx3 uint8 RGB."""
    from pipeline.text.signs import sign_sample
    return sign_sample(int(index)).image


# Photos with a person in them: the demo routes one of their captions to the pose task as well.
DEMO_PEOPLE = ("astronaut",)

__all__ = ["DEMO_PEOPLE", "DEMO_PHOTOS", "DEMO_CAPTIONS", "DEMO_SIGNS", "load_demo_photo", "load_demo_sign", "to_rgb_uint8"]
