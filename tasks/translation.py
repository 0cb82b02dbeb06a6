"""The image-to-image translation vision tasks (Emu Edit): depth, sketch, normal, pose and
segmentation maps, each in both directions.

  image_to_map   the input is the photo, the output is its map ("estimate the depth map");
  map_to_image   the input is the map, the output is a photo matching the caption
                 ("turn this depth map into a photo of a lighthouse at dusk").

The five tasks differ only in their name, the words that name their map, and their prompt file, so
they share one base class, ``TranslationTask``. ``plan`` draws the direction uniformly; the agent is
told the direction and echoes it in its answer ``{instruction, direction}``. The maps come from the
annotators of ``pipeline.translate`` (the translation stage builds them once and hands them to
``make_pair``): image_to_map pairs are (photo, map), map_to_image pairs are (map, photo).

Answer checks (reject reasons):
  direction_mismatch           the answer's direction is not the planned one;
  instruction_wrong_direction  an image_to_map instruction does not name the map (no word of the
                               task's ``map_words``), or a map_to_image instruction does not describe
                               the photo to produce (no content word of the caption);
  map_on_the_wrong_side        the instruction names the map, but only as what the other direction
                               has it be: an image_to_map pair (photo → map) whose instruction says
                               "… a photo of galaxies from these normal maps", or a map_to_image
                               pair whose instruction says "turn this into a depth map". The pair
                               would teach the reverse of what it says.
"""
from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np

from tasks import register
from tasks.base import Pair, SampleReject, Task

DIRECTIONS = ("image_to_map", "map_to_image")

# Function words and words that say nothing about what a photo shows; a caption's other words are
# its content words.
STOPWORDS = frozenset("""
a an the this that these those it its of in on at to from by with without for and or but nor as
into onto over under above below near beside between behind through across along around about
against among up down out off is are was were be been being has have had do does did some any
each every all both few many much more most other another such very just than then there here
while who whom whose which what where when why how one two three four five six seven eight nine ten
his her their our your my he she they we you him them us me i
photo photograph picture image shot view scene close closeup
""".split())

_WORD_RE = re.compile(r"[a-z0-9]+")
_POSSESSIVE_RE = re.compile(r"'s\b")


def _singular(word: str) -> str:
    """Naive singular: drop one trailing "s" (not from "ss" endings or very short words)."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def normalise_words(text: str) -> list[str]:
    """Lowercase words with punctuation and possessive "'s" stripped, naively singularised."""
    t = text.lower().replace("\u2019", "'")
    t = _POSSESSIVE_RE.sub("", t)
    return [_singular(w) for w in _WORD_RE.findall(t)]


def _phrases(words: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(normalise_words(w)) for w in words)


def contains_phrase(words: list[str], phrase: tuple[str, ...]) -> bool:
    """Whether the normalised word sequence ``phrase`` occurs contiguously in ``words``."""
    n = len(phrase)
    return n > 0 and any(tuple(words[i:i + n]) == phrase for i in range(len(words) - n + 1))


# Words right before a map mention that make the map the input ("from this depth map", "using the
# sketch", "shaped by these normals", "matching this pose") or the output ("into a depth map",
# "as a sketch"); and words right after it that make it the input ("this depth map into a …").
SOURCE_BEFORE = frozenset({"from", "using", "use", "following", "follow", "match", "matche", "matching",
                           "fit", "fitting", "by", "given", "based"})
TARGET_BEFORE = frozenset({"into", "to", "as"})
SOURCE_AFTER = frozenset({"into"})
CUE_WINDOW = 3          # how many words before the mention may hold the cue ("from these surface normal")


def map_roles(words: list[str], phrases) -> list[str]:
    """For every mention of the map in ``words`` (normalised): "source" when the words around it
    make the map the input, "target" when they make it the output, else "plain"."""
    roles = []
    for phrase in phrases:
        n = len(phrase)
        for i in range(len(words) - n + 1):
            if tuple(words[i:i + n]) != phrase:
                continue
            before, after = words[max(0, i - CUE_WINDOW):i], words[i + n:i + n + 2]
            cue = next((w for w in reversed(before) if w in SOURCE_BEFORE | TARGET_BEFORE), None)
            if cue in SOURCE_BEFORE or SOURCE_AFTER & set(after):
                roles.append("source")
            elif cue in TARGET_BEFORE:
                roles.append("target")
            else:
                roles.append("plain")
    return roles


def render_query(caption: str, direction: str) -> str:
    return f"Caption: {caption.strip()}\nDirection: {direction}"


class TranslationTask(Task):
    """Shared plan / query / check of the translation tasks; subclasses set the names and words."""

    stage = "translate"
    needs_input_image = True
    map_words: ClassVar[tuple[str, ...]] = ()      # words / phrases that name this task's map

    @classmethod
    def map_phrases(cls) -> tuple[tuple[str, ...], ...]:
        return _phrases(cls.map_words)

    def names_map(self, text: str) -> bool:
        words = normalise_words(text)
        return any(contains_phrase(words, p) for p in self.map_phrases())

    def content_words(self, caption: str) -> set[str]:
        """The caption's words that describe what the photo shows (stopwords, numbers, very short
        words and the task's own map words left out: "photo from this pose" describes nothing)."""
        single_map_words = {p[0] for p in self.map_phrases() if len(p) == 1}
        return {w for w in normalise_words(caption)
                if len(w) > 2 and not w.isdigit() and w not in STOPWORDS and w not in single_map_words}

    def plan(self, rng: np.random.Generator, caption: str) -> dict[str, Any]:
        return {"direction": DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]}

    def llm_query(self, caption: str, plan: dict[str, Any]) -> str:
        return render_query(caption, plan["direction"])

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        direction = plan.get("direction")
        if answer.get("direction") != direction:
            return "direction_mismatch"
        instruction = answer.get("instruction")
        if not isinstance(instruction, str):
            return "instruction_wrong_direction"
        words = normalise_words(instruction)
        roles = map_roles(words, self.map_phrases())
        if direction == "image_to_map":
            if not roles:
                return "instruction_wrong_direction"
            # every mention has the map as the input: the instruction asks for the reverse pair
            return "map_on_the_wrong_side" if set(roles) == {"source"} else None
        content = self.content_words(caption)
        if content and not content & set(words):
            return "instruction_wrong_direction"
        if roles and set(roles) == {"target"}:
            return "map_on_the_wrong_side"
        return None

    def make_pair(self, image: np.ndarray, answer: dict[str, Any], plan: dict[str, Any],
                  rng: np.random.Generator, annotators=None) -> Pair:
        """The photo's map from the task's annotator, then the pair in the planned direction."""
        if annotators is None or self.name not in annotators:
            raise SampleReject("no_annotators", f"task {self.name} needs the translation stage's annotators")
        direction = plan.get("direction")
        if direction not in DIRECTIONS:
            raise SampleReject("bad_plan", f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        m = annotators.make_map(self.name, image, rng)       # SampleReject: empty_map, no_pose
        if m.image.shape != image.shape:
            raise ValueError(f"{self.name} annotator returned {m.image.shape}, photo is {image.shape}")
        params = {"direction": direction, **m.params}
        if direction == "image_to_map":
            return Pair(input_image=image, output_image=m.image, params=params)
        return Pair(input_image=m.image, output_image=image, params=params)


@register
class DepthTask(TranslationTask):
    name = "depth"
    prompt_file = "depth.yaml"
    map_words = ("depth", "distance", "near", "nearer", "far", "farther", "closer", "disparity")


@register
class SketchTask(TranslationTask):
    name = "sketch"
    prompt_file = "sketch.yaml"
    map_words = ("sketch", "sketches", "sketched", "drawing", "drawn", "line", "lineart", "outline",
                 "outlined", "edge", "pencil", "contour", "ink", "doodle")


@register
class NormalTask(TranslationTask):
    name = "normal"
    prompt_file = "normal.yaml"
    map_words = ("normal", "normals", "surface orientation")


@register
class PoseTask(TranslationTask):
    name = "pose"
    prompt_file = "pose.yaml"
    map_words = ("pose", "posture", "skeleton", "keypoint", "joint", "body", "bodies", "limb",
                 "stick figure", "openpose")


@register
class SegmentationTask(TranslationTask):
    name = "segmentation"
    prompt_file = "segmentation.yaml"
    map_words = ("segmentation", "segment", "segmented", "region", "label", "labelled", "labeled",
                 "class", "classes", "map", "mask")


TRANSLATION_TASKS: tuple[type[TranslationTask], ...] = (
    DepthTask, SketchTask, NormalTask, PoseTask, SegmentationTask)
