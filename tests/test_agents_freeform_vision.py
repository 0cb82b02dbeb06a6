"""Instruction agents of the free-form and vision tasks: global, style, text, detect, segment.

Fast, no LLM: the prompt files load and match what the tasks render, every exemplar passes the
generic and the task-specific answer checks (also after the prompt builder's verb swaps), plans are
reproducible, and each task-specific reject reason actually fires on a constructed bad answer."""
from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from pipeline.llm.answers import validate_answer
from pipeline.llm.prompt import build, load_prompt
from tasks import TASK_IDS, get_task
from tasks.base import SampleReject
from tasks import detect as _detect, global_edit as _global, segment as _segment  # noqa: F401  (register)
from tasks import style as _style, text as _text  # noqa: F401  (register)

TASKS = ("global", "style", "text", "detect", "segment")
STAGES = {"global": "diffusion", "style": "diffusion", "text": "text", "detect": "grounding",
          "segment": "grounding"}
NEEDS_INPUT = {"global": False, "style": True, "text": True, "detect": True, "segment": True}
KEYS = {
    "global": ["instruction", "output_caption"],
    "style": ["instruction", "style", "output_caption"],
    "text": ["instruction", "old_text", "new_text", "font", "color", "output_caption"],
    "detect": ["instruction", "edited_object"],
    "segment": ["instruction", "edited_object"],
}
QUERY_RE = re.compile(r"^Caption: (?P<caption>[^\n]+)$")
TEXT_QUERY_RE = re.compile(r"^Caption: (?P<caption>[^\n]+)\nOperation: (?P<op>add|remove|replace)$")


def parse_query(name: str, query: str) -> tuple[str, dict]:
    """(caption, plan) back from a rendered query."""
    m = (TEXT_QUERY_RE if name == "text" else QUERY_RE).match(query)
    assert m, (name, query)
    return m["caption"], ({"op": m["op"]} if name == "text" else {})


def accept(task, caption: str, answer: dict, plan: dict) -> str | None:
    """What the instruct stage does with one answer: generic checks, then the task's check."""
    spec = load_prompt(task.name)
    ans, reason, detail = validate_answer(json.dumps(answer), spec.answer_schema, caption)
    if reason:
        return reason
    return task.check_answer(caption, ans, plan)


def verb_re(spec) -> re.Pattern:
    return spec.verb_pattern


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", TASKS)
def test_registered(name):
    task = get_task(name)
    assert task.name == name and task.task_id == TASK_IDS[name]
    assert task.stage == STAGES[name] and task.needs_input_image is NEEDS_INPUT[name]
    assert task.prompt_file == f"{name}.yaml"
    if not task.has_generator():          # agent only so far: jobs refuse it, make_pair says why
        with pytest.raises(SampleReject) as e:
            task.make_pair(np.zeros((8, 8, 3), np.uint8), {}, {}, np.random.default_rng(0))
        assert e.value.reason == "no_generator"


# ---------------------------------------------------------------- plan and query


@pytest.mark.parametrize("name", TASKS)
def test_plan_deterministic_and_covers_options(name):
    task = get_task(name)
    plans = [task.plan(np.random.default_rng(s), "a dog on a porch") for s in range(200)]
    assert plans == [task.plan(np.random.default_rng(s), "a dog on a porch") for s in range(200)]
    for p in plans:
        assert json.loads(json.dumps(p)) == p
    if name == "text":
        counts = {op: sum(p == {"op": op} for p in plans) for op in _text.OPS}
        assert sum(counts.values()) == 200
        assert all(40 < c < 95 for c in counts.values()), counts        # uniform-ish
    else:
        assert all(p == {} for p in plans)


@pytest.mark.parametrize("name", TASKS)
def test_llm_query_shape(name):
    task = get_task(name)
    plan = {"op": "replace"} if name == "text" else {}
    q = task.llm_query("  A dog on a porch ", plan)
    want = "Caption: A dog on a porch" + ("\nOperation: replace" if name == "text" else "")
    assert q == want
    assert parse_query(name, q) == ("A dog on a porch", plan)


# ---------------------------------------------------------------- prompt files


@pytest.mark.parametrize("name", TASKS)
def test_prompt_file_structure(name):
    spec = load_prompt(name)
    assert spec.task == name and len(spec.exemplars) >= 16
    assert "json" in spec.system.lower() and "{verb}" in spec.introduction
    assert len(spec.verbs) >= 6 and len(set(spec.verbs)) == len(spec.verbs)
    schema = spec.answer_schema
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == KEYS[name] and set(schema["properties"]) == set(KEYS[name])
    assert all(schema["properties"][k]["type"] == "string" for k in KEYS[name])
    good = {k: "something plain" for k in KEYS[name]}
    jsonschema.validate(good, schema)
    for bad in ({k: v for k, v in good.items() if k != "instruction"},      # missing key
                {**good, "extra": "x"},                                      # extra key
                {**good, "instruction": ""},                                 # empty instruction
                {**good, KEYS[name][-1]: 3}):                                # wrong type
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize("name", TASKS)
def test_exemplars_match_task_and_pass_checks(name):
    task, spec = get_task(name), load_prompt(name)
    captions = set()
    for ex in spec.exemplars:
        caption, plan = parse_query(name, ex["query"])
        assert task.llm_query(caption, plan) == ex["query"], ex["id"]
        jsonschema.validate(ex["answer"], spec.answer_schema)
        assert accept(task, caption, ex["answer"], plan) is None, ex["id"]
        n_words = len(ex["answer"]["instruction"].split())
        assert 2 <= n_words <= 25, ex["id"]
        captions.add(caption)
    assert len(captions) == len(spec.exemplars)                 # a different subject each


@pytest.mark.parametrize("name", TASKS)
def test_most_instructions_contain_a_verb_of_the_set(name):
    spec = load_prompt(name)
    hits = [bool(spec.verb_pattern.search(ex["answer"]["instruction"])) for ex in spec.exemplars]
    assert sum(hits) >= 0.75 * len(hits), name
    # every verb of the set is shown at least once in the exemplars
    used = {m.lower() for ex in spec.exemplars for m in spec.verb_pattern.findall(ex["answer"]["instruction"])}
    assert used == {v.lower() for v in spec.verbs}, set(spec.verbs) - used


@pytest.mark.parametrize("name", TASKS)
def test_verbs_only_in_instruction_slot(name):
    """Verb swaps touch the instruction only; an object or text that contains a verb of the set
    would then no longer match its instruction (e.g. a "mask" swapped for "select")."""
    spec = load_prompt(name)
    for ex in spec.exemplars:
        for k, v in ex["answer"].items():
            if k not in ("instruction", "output_caption"):
                assert not spec.verb_pattern.search(v), (ex["id"], k, v)
        # at most one verb of the set per instruction: a second one is usually a noun use
        assert len(spec.verb_pattern.findall(ex["answer"]["instruction"])) <= 1, ex["id"]


@pytest.mark.parametrize("name", TASKS)
def test_build_renders_and_swapped_exemplars_still_pass(name):
    task, spec = get_task(name), load_prompt(name)
    query = task.llm_query("A corgi on a red sofa next to a sign", {"op": "add"} if name == "text" else {})
    for seed in range(25):
        built = build(spec, query, seed)
        assert built.messages[0]["role"] == "system" and built.messages[-1] == {"role": "user", "content": query}
        assert built.intro_verb in spec.verbs and built.intro_verb in built.messages[1]["content"]
        assert len(built.exemplar_ids) == round(0.6 * len(spec.exemplars))
        history = built.messages[3:-1]
        assert len(history) == 2 * len(built.exemplar_ids)
        for user, assistant in zip(history[::2], history[1::2]):
            caption, plan = parse_query(name, user["content"])
            answer = json.loads(assistant["content"])
            assert accept(task, caption, answer, plan) is None, (seed, answer)
    assert build(spec, query, 7).messages == build(spec, query, 7).messages


def test_text_exemplars_cover_every_op():
    spec = load_prompt("text")
    ops = [parse_query("text", ex["query"])[1]["op"] for ex in spec.exemplars]
    assert {op: ops.count(op) for op in _text.OPS} == {op: 6 for op in _text.OPS}


def test_style_exemplar_styles_are_named_in_output():
    for ex in load_prompt("style").exemplars:
        a = ex["answer"]
        assert _style.style_in_text(a["style"], a["output_caption"]), ex["id"]


# ---------------------------------------------------------------- reject reasons: global


def test_global_rejects_output_too_similar():
    task = get_task("global")
    cap = "A red fishing boat moored in a harbour"
    for same in ("a red fishing boat, moored in the harbour.", "The red fishing boat moored in harbour!",
                 "RED FISHING BOAT MOORED IN AN HARBOUR"):
        assert task.check_answer(cap, {"instruction": "Make it winter", "output_caption": same}, {}) \
            == "output_too_similar", same
    assert task.check_answer(cap, {"instruction": "Make it winter",
                                   "output_caption": "A red fishing boat moored in a frozen harbour"}, {}) is None
    # exact equality is the generic check's job and is counted as such
    assert accept(task, cap, {"instruction": "Make it winter", "output_caption": cap}, {}) == "llm_same_caption"
    assert accept(task, cap, {"instruction": "Make it winter", "output_caption": "The " + cap}, {}) \
        == "output_too_similar"


# ---------------------------------------------------------------- reject reasons: style


def test_style_rejects_style_not_in_output():
    task = get_task("style")
    cap = "A fox in a snowy forest"
    ok = {"instruction": "Redraw it as a woodcut", "style": "Japanese woodblock print",
          "output_caption": "A woodblock print of a fox in a snowy forest"}
    assert task.check_answer(cap, ok, {}) is None
    assert task.check_answer(cap, {**ok, "output_caption": "A painting of a fox in a snowy forest"}, {}) \
        == "style_not_in_output"
    # function words ("in the style of") do not count as naming the style
    assert task.check_answer(cap, {**ok, "style": "in the style of a",
                                   "output_caption": "A fox in the style of a snowy forest"}, {}) \
        == "style_not_in_output"
    # plurals, case and hyphens are normalised: "Comics" in "comic-style" output
    assert task.check_answer(cap, {**ok, "style": "1950s Comics",
                                   "output_caption": "A comic-style panel of a fox in snow"}, {}) is None
    assert accept(task, cap, {**ok, "output_caption": "A fox in a snowy forest, redrawn"}, {}) \
        == "style_not_in_output"


# ---------------------------------------------------------------- reject reasons: text


def _text_answer(old: str, new: str, instruction: str = "Change the sign to say OPEN") -> dict:
    return {"instruction": instruction, "old_text": old, "new_text": new, "font": "bold sans-serif",
            "color": "red", "output_caption": "A shop sign that says OPEN"}


def test_text_accepts_well_formed_answers():
    task = get_task("text")
    cap = "A shop sign that says CLOSED"
    assert task.check_answer(cap, _text_answer("", "OPEN"), {"op": "add"}) is None
    assert task.check_answer(cap, _text_answer("CLOSED", "OPEN"), {"op": "replace"}) is None
    assert task.check_answer(cap, {**_text_answer("CLOSED", "", "Erase the word CLOSED"), "font": "", "color": ""},
                             {"op": "remove"}) is None
    # quotes around the text and case differences are not held against the answer
    assert task.check_answer(cap, _text_answer('"CLOSED"', "\u201cOpen\u201d"), {"op": "replace"}) is None
    assert task.check_answer(cap, _text_answer('""', "open"), {"op": "add"}) is None


@pytest.mark.parametrize("op,old,new", [
    ("add", "CLOSED", "OPEN"),       # add with old text
    ("add", "", ""),                 # add without new text
    ("remove", "", ""),              # remove without old text
    ("remove", "CLOSED", "OPEN"),    # remove that writes new text
    ("replace", "", "OPEN"),         # replace without old text
    ("replace", "CLOSED", "  "),     # replace without new text
    ("rotate", "CLOSED", "OPEN"),    # unknown op
])
def test_text_rejects_op_mismatch(op, old, new):
    task = get_task("text")
    assert task.check_answer("A shop sign", _text_answer(old, new), {"op": op}) == "text_op_mismatch"


@pytest.mark.parametrize("op", ["add", "remove", "replace"])
def test_text_answer_schema_makes_the_op_mismatch_unwritable(op):
    """The schema the server is asked to constrain the answer to already encodes the operation: an
    answer that the op check would reject is invalid under it, one that fits the op is valid."""
    task = get_task("text")
    base = load_prompt("text").answer_schema
    narrowed = task.answer_schema(base, {"op": op})
    assert narrowed is not base and base["properties"]["old_text"] == {"type": "string"}   # prompt's schema untouched
    fits = {"add": ("", "OPEN"), "remove": ("CLOSED", ""), "replace": ("CLOSED", "OPEN")}[op]
    for old, new in (("CLOSED", "OPEN"), ("", "OPEN"), ("CLOSED", ""), ("", "")):
        ans = _text_answer(old, new, f"Write OPEN in place of CLOSED")
        ok = jsonschema.Draft202012Validator(narrowed).is_valid(ans)
        assert ok == ((old, new) == fits), (op, old, new)
        if not ok:
            assert task.check_answer("A shop sign", ans, {"op": op}) == "text_op_mismatch"
    assert task.answer_schema(base, {}) is base                    # no op planned: nothing to narrow


def test_text_add_that_asks_for_a_removal_is_rejected():
    task = get_task("text")
    ans = _text_answer("", "TABBY CAT", "Remove the tabby cat from the banner, and print the font's words")
    assert task.check_answer("A tabby cat under a banner", ans, {"op": "add"}) == "removal_for_add"
    ans = _text_answer("", "TABBY CAT", "Print TABBY CAT on the banner")
    assert task.check_answer("A tabby cat under a banner", ans, {"op": "add"}) is None


def test_text_rejects_unchanged_replace():
    task = get_task("text")
    assert task.check_answer("A shop sign", _text_answer("OPEN", "open"), {"op": "replace"}) == "text_unchanged"
    assert task.check_answer("A shop sign", _text_answer("Open  Late", "open late", "Change it to open late"),
                             {"op": "replace"}) == "text_unchanged"


def test_text_rejects_new_text_not_in_instruction():
    task = get_task("text")
    for op, old in (("add", ""), ("replace", "CLOSED")):
        bad = _text_answer(old, "OPEN", "Change the sign so it welcomes customers")
        assert task.check_answer("A shop sign", bad, {"op": op}) == "new_text_not_in_instruction"
    # remove has no new text: nothing to quote (it names the old one instead)
    assert task.check_answer("A shop sign", _text_answer("CLOSED", "", "Blank out the CLOSED sign"),
                             {"op": "remove"}) is None


# ---------------------------------------------------------------- reject reasons: detect, segment


@pytest.mark.parametrize("name", ["detect", "segment"])
def test_vision_rejects_object_not_in_caption(name):
    task = get_task(name)
    cap = "A black labrador wearing a blue collar lying on a rug"
    for obj in ("the cat", "a red ball", "the dog's tail", ""):
        assert task.check_answer(cap, {"instruction": "Find it", "edited_object": obj}, {}) \
            == "object_not_in_caption", obj
    for obj in ("the labrador", "the labrador's collar", "Blue collars", "the rug on the floor"):
        assert task.check_answer(cap, {"instruction": f"Find {obj}", "edited_object": obj}, {}) is None, obj
    assert accept(task, cap, {"instruction": "Find the cat", "edited_object": "the cat"}, {}) \
        == "object_not_in_caption"


@pytest.mark.parametrize("name", ["detect", "segment"])
def test_vision_rejects_object_not_in_instruction(name):
    """The box or mask is drawn for edited_object: the instruction must ask for that object."""
    task = get_task(name)
    cap = "A black labrador wearing a blue collar lying on a rug"
    for ins in ("Find it", "Draw a box around the rug", "Segment the dog"):
        assert task.check_answer(cap, {"instruction": ins, "edited_object": "the labrador"}, {}) \
            == "object_not_in_instruction", ins
    for ins, obj in (("Highlight the labradors", "the labrador"), ("Mark the dog's collar", "the labrador's collar")):
        assert task.check_answer(cap, {"instruction": ins, "edited_object": obj}, {}) is None, ins


def test_text_remove_names_the_old_text_and_asks_for_a_removal():
    task = get_task("text")
    cap = "A shop sign that says CLOSED"

    def remove(instruction):
        return task.check_answer(cap, {**_text_answer("CLOSED", "", instruction), "font": "", "color": ""},
                                 {"op": "remove"})
    for ok in ("Erase the word CLOSED", "Remove 'closed' from the sign", "Get rid of the CLOSED sign text",
               "Make CLOSED disappear", "Retouch the sign so CLOSED is gone", "Leave the sign blank, no CLOSED",
               "take CLOSED off the sign", "wipe out the text \"Closed\"", "Clear the word CLOSED away"):
        assert remove(ok) is None, ok
    assert remove("Blank out the sign") == "old_text_not_in_instruction"           # which text?
    assert remove("Erase the word CLOSE") == "old_text_not_in_instruction"         # whole words only
    assert remove("Make the word CLOSED red") == "not_a_removal"
    assert remove("Change the sign so CLOSED is bigger") == "not_a_removal"
    for not_removal in ("Make CLOSED clearer", "Put CLOSED on a blanket", "Paint CLOSED in striped letters",
                        "Write CLOSED on the snow-covered sign"):
        assert remove(not_removal) == "not_a_removal", not_removal


def test_text_new_text_is_matched_as_whole_words():
    task = get_task("text")
    ans = _text_answer("", "42", "Put the number 142 on the shirt")
    assert task.check_answer("A plain shirt", ans, {"op": "add"}) == "new_text_not_in_instruction"
    # punctuation and case around the words do not matter
    ans = _text_answer("", "Soup of the day, tomato", "Write: soup of the day - tomato!")
    assert task.check_answer("A chalkboard", ans, {"op": "add"}) is None
