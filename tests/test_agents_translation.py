"""Instruction agents of the image-to-image translation tasks (depth, sketch, normal, pose,
segmentation): plans, queries, answer checks, and the prompt files that teach them (no LLM)."""
from __future__ import annotations

import json
import re
from collections import Counter

import jsonschema
import numpy as np
import pytest

from pipeline.llm.prompt import build, load_prompt
from tasks import TASK_IDS
from tasks import translation as T
from tasks.base import SampleReject

NAMES = ("depth", "sketch", "normal", "pose", "segmentation")
TASKS = {cls.name: cls for cls in T.TRANSLATION_TASKS}
QUERY_RE = re.compile(r"^Caption: (?P<caption>[^\n]+)\nDirection: (?P<direction>[^\n]+)$")


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture
def task(name):
    return TASKS[name]()


@pytest.fixture
def spec(name):
    return load_prompt(name)


def _parse(query: str) -> tuple[str, dict]:
    m = QUERY_RE.match(query)
    assert m, query
    return m["caption"], {"direction": m["direction"]}


# ---------------------------------------------------------------- registry and helpers


def test_registered(name, task):
    from tasks import _REGISTRY
    assert set(TASKS) == set(NAMES)
    assert _REGISTRY[name] is TASKS[name]
    assert task.name == name and task.task_id == TASK_IDS[name]
    assert task.stage == "translate" and task.needs_input_image is True
    assert task.prompt_file == f"{name}.yaml"
    assert isinstance(task, T.TranslationTask)
    assert task.has_generator()                         # pairs come from the translation stage
    with pytest.raises(SampleReject) as e:              # ... which hands make_pair its annotators
        task.make_pair(np.zeros((8, 8, 3), np.uint8), {}, {"direction": "image_to_map"},
                       np.random.default_rng(0))
    assert e.value.reason == "no_annotators"


def test_normalise_words():
    assert T.normalise_words("The Dog's tails, near-far!") == ["the", "dog", "tail", "near", "far"]
    assert T.normalise_words("glass bus edges") == ["glass", "bus", "edge"]
    assert T.normalise_words("A cat\u2019s whiskers") == ["a", "cat", "whisker"]
    assert T.contains_phrase(["estimate", "surface", "orientation"], ("surface", "orientation"))
    assert not T.contains_phrase(["surface", "and", "orientation"], ("surface", "orientation"))


def test_content_words_skip_stopwords_and_map_words():
    depth = T.DepthTask()
    assert depth.content_words("A photo of the old lighthouse at dusk") == {"old", "lighthouse", "dusk"}
    pose = T.PoseTask()
    assert pose.content_words("A dancer striking a pose") == {"dancer", "striking"}


# ---------------------------------------------------------------- plan and query


def test_plan_deterministic_and_covers_both_directions(task):
    plans = [task.plan(np.random.default_rng(s), "a cat on a mat") for s in range(200)]
    assert plans == [task.plan(np.random.default_rng(s), "a cat on a mat") for s in range(200)]
    assert all(set(p) == {"direction"} for p in plans)
    counts = Counter(p["direction"] for p in plans)
    assert set(counts) == set(T.DIRECTIONS)
    assert 70 <= counts["image_to_map"] <= 130            # drawn uniformly


def test_llm_query_format(task):
    q = task.llm_query("  A red barn in a snowy field ", {"direction": "map_to_image"})
    assert q == "Caption: A red barn in a snowy field\nDirection: map_to_image"
    assert _parse(q) == ("A red barn in a snowy field", {"direction": "map_to_image"})


# ---------------------------------------------------------------- answer checks


def test_good_answers_pass(task, name):
    cap = "A lighthouse on a rocky cliff at dusk"
    map_word = task.map_words[0]
    assert task.check_answer(cap, {"instruction": f"Generate the {map_word} of this photo.",
                                   "direction": "image_to_map"}, {"direction": "image_to_map"}) is None
    assert task.check_answer(cap, {"instruction": f"Render a lighthouse at dusk from this {map_word}.",
                                   "direction": "map_to_image"}, {"direction": "map_to_image"}) is None


def test_rejects_direction_mismatch(task):
    cap = "A lighthouse on a rocky cliff at dusk"
    for planned, said in (("image_to_map", "map_to_image"), ("map_to_image", "image_to_map")):
        ans = {"instruction": f"Render a lighthouse, {task.map_words[0]} included.", "direction": said}
        assert task.check_answer(cap, ans, {"direction": planned}) == "direction_mismatch"
    assert task.check_answer(cap, {"instruction": "Render a lighthouse."},
                             {"direction": "map_to_image"}) == "direction_mismatch"


def test_rejects_image_to_map_without_map_word(task):
    cap = "A lighthouse on a rocky cliff at dusk"
    ans = {"instruction": "Generate a photo of the lighthouse at dusk.", "direction": "image_to_map"}
    assert task.check_answer(cap, ans, {"direction": "image_to_map"}) == "instruction_wrong_direction"


def test_rejects_map_to_image_without_caption_content(task):
    cap = "A lighthouse on a rocky cliff at dusk"
    for text in (f"Generate a photo from this {task.map_words[0]}.",
                 "Make a realistic picture of the scene.",
                 "Turn it into a photo of a dog in a kitchen."):
        ans = {"instruction": text, "direction": "map_to_image"}
        assert task.check_answer(cap, ans, {"direction": "map_to_image"}) == "instruction_wrong_direction", text
    # a caption with no content word cannot be checked for one: accepted
    ans = {"instruction": "Generate a photo.", "direction": "map_to_image"}
    assert task.check_answer("A photo of it", ans, {"direction": "map_to_image"}) is None


def test_rejects_the_map_on_the_wrong_side(task):
    """An instruction that names the map only as the other direction's end teaches the reverse pair
    (the demo accepted the normal pair photo → map "Create a global images of these distant galaxies
    from these normal map.")."""
    cap = "Distant galaxies scattered across a dark sky"
    w = task.map_words[0]
    wrong = {"image_to_map": [f"Create an image of these distant galaxies from this {w}.",
                              f"Use the {w} to render the galaxies.",
                              f"Turn this {w} into a picture of galaxies."],
             "map_to_image": [f"Turn the galaxies photo into a {w}.", f"Show the galaxies as a {w}."]}
    for direction, texts in wrong.items():
        for text in texts:
            ans = {"instruction": text, "direction": direction}
            assert task.check_answer(cap, ans, {"direction": direction}) == "map_on_the_wrong_side", text
    right = {"image_to_map": [f"Turn the galaxies photo into a {w}.", f"Make a {w} from this photo."],
             "map_to_image": [f"Create an image of these distant galaxies from this {w}.",
                              f"Turn this {w} into a picture of galaxies."]}
    for direction, texts in right.items():
        for text in texts:
            assert task.check_answer(cap, {"instruction": text, "direction": direction},
                                     {"direction": direction}) is None, text


def test_the_demo_normal_pair_with_the_reversed_instruction_is_rejected():
    ans = {"instruction": "Create a global images of these distant galaxies from these normal map.",
           "direction": "image_to_map"}
    assert TASKS["normal"]().check_answer("The Hubble deep field: countless distant galaxies", ans,
                                          {"direction": "image_to_map"}) == "map_on_the_wrong_side"


# ---------------------------------------------------------------- prompt files


def test_prompt_file_structure(name, spec):
    assert spec.task == name and "{verb}" in spec.introduction
    assert "json" in spec.system.lower()
    assert len(spec.verbs) >= 6 and len(set(spec.verbs)) == len(spec.verbs)
    schema = spec.answer_schema
    assert schema["required"] == ["instruction", "direction"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["direction"]["enum"] == list(T.DIRECTIONS)
    for bad in ({"instruction": "Render the depth map"},
                {"instruction": "", "direction": "image_to_map"},
                {"instruction": "Render the depth map", "direction": "photo_to_depth"},
                {"instruction": "Render the depth map", "direction": "image_to_map", "extra": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_exemplars_match_task(task, spec):
    assert len(spec.exemplars) >= 16
    directions = Counter()
    captions = set()
    with_verb = 0
    for ex in spec.exemplars:
        caption, plan = _parse(ex["query"])
        assert plan["direction"] in T.DIRECTIONS, ex["id"]
        assert task.llm_query(caption, plan) == ex["query"], ex["id"]
        jsonschema.validate(ex["answer"], spec.answer_schema)
        assert task.check_answer(caption, ex["answer"], plan) is None, ex["id"]
        instr = ex["answer"]["instruction"]
        assert 3 <= len(instr.split()) <= 25, ex["id"]
        assert "_" not in instr, ex["id"]                  # never leaks the direction token
        with_verb += bool(spec.verb_pattern.search(instr))
        directions[plan["direction"]] += 1
        captions.add(caption)
    assert min(directions[d] for d in T.DIRECTIONS) >= 6   # both directions well represented
    assert len(captions) == len(spec.exemplars)            # varied subjects
    assert with_verb >= 0.75 * len(spec.exemplars)


def test_exemplars_still_pass_after_verb_swaps(task, spec):
    by_id = {ex["id"]: ex for ex in spec.exemplars}
    for seed in range(40):
        p = build(spec, "Caption: a cat\nDirection: image_to_map", seed)
        for q, a in zip(p.messages[3:-1:2], p.messages[4:-1:2]):
            ans = json.loads(a["content"])
            caption, plan = _parse(q["content"])
            assert task.check_answer(caption, ans, plan) is None, (seed, ans)
        assert set(p.exemplar_ids) <= set(by_id)


def test_build_renders(task, spec):
    q = task.llm_query("Two dogs playing in the surf", task.plan(np.random.default_rng(3), "x"))
    p = build(spec, q, seed=7)
    assert p.messages[-1] == {"role": "user", "content": q}
    assert [m["role"] for m in p.messages[:3]] == ["system", "user", "assistant"]
    assert p.intro_verb in spec.verbs and p.intro_verb in p.messages[1]["content"]
    assert len(p.exemplar_ids) == round(0.6 * len(spec.exemplars))
    for m in p.messages[3:-1:2]:
        assert QUERY_RE.match(m["content"])
