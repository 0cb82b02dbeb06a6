"""The in-context protocol: shuffled exemplars, a random 60% kept, verbs swapped, all from one seed."""
import json
from collections import Counter

from pipeline.llm.prompt import build, load_prompt, swap_verbs

import numpy as np
import pytest

from tasks import with_agents

ALL_PROMPTS = [*with_agents(), "depossess"]


def _spec():
    return load_prompt("color")


def test_same_seed_same_prompt_and_provenance_rebuilds_it():
    spec = _spec()
    a, b = build(spec, "Caption: x\nChange: y", 42), build(spec, "Caption: x\nChange: y", 42)
    assert a.messages == b.messages and a.prompt_hash == b.prompt_hash
    assert a.exemplar_ids == b.exemplar_ids and a.verb_swaps == b.verb_swaps
    assert build(spec, "Caption: x\nChange: y", 43).prompt_hash != a.prompt_hash


@pytest.mark.parametrize("task", ALL_PROMPTS)
def test_every_prompt_renders_and_same_seed_rebuilds_it(task):
    spec = load_prompt(task)
    a, b = build(spec, "Caption: a red barn", 11), build(spec, "Caption: a red barn", 11)
    assert a.messages == b.messages and a.exemplar_ids == b.exemplar_ids
    assert a.messages[0]["role"] == "system" and a.messages[-1]["content"] == "Caption: a red barn"


def test_structure_system_intro_history_query():
    spec = _spec()
    p = build(spec, "Caption: a red barn\nChange: blur it", 1)
    roles = [m["role"] for m in p.messages]
    assert roles[0] == "system" and roles[1] == "user" and roles[2] == "assistant" and roles[-1] == "user"
    assert p.intro_verb in spec.verbs and p.intro_verb in p.messages[1]["content"]
    assert len(p.messages) == 3 + 2 * len(p.exemplar_ids) + 1
    for m in p.messages[4:-1:2]:
        json.loads(m["content"])                     # every exemplar answer is JSON
    assert p.messages[-1]["content"].startswith("Caption: a red barn")


@pytest.mark.parametrize("task", ALL_PROMPTS)
def test_each_exemplar_in_about_60_percent_and_orders_vary(task):
    spec = load_prompt(task)
    assert len(spec.exemplars) >= 15
    n, draws = len(spec.exemplars), 600
    seen, orders = Counter(), set()
    for s in range(draws):
        p = build(spec, "q", s)
        assert len(p.exemplar_ids) == round(0.6 * n)
        seen.update(p.exemplar_ids)
        orders.add(tuple(p.exemplar_ids))
    rates = [seen[e["id"]] / draws for e in spec.exemplars]
    assert all(0.5 < r < 0.7 for r in rates), rates
    assert len(orders) == draws                      # no two prompts share an order


def test_verbs_are_swapped_within_the_set():
    spec = _spec()
    rng = np.random.default_rng(0)
    text = f"{spec.verbs[0].capitalize()} the colours and {spec.verbs[0]} the contrast"
    outs = {swap_verbs(text, spec, rng)[0] for _ in range(50)}
    assert len(outs) > 5
    for o in outs:
        words = o.lower().replace(" the colours and ", "|").replace(" the contrast", "").split("|")
        assert all(w in spec.verbs for w in words), o
    swapped = [build(spec, "q", s).verb_swaps for s in range(50)]
    assert sum(bool(s) for s in swapped) > 40        # most prompts carry swaps, recorded by exemplar


def test_fixed_prompt_baseline_keeps_everything_in_order():
    spec = _spec()
    p = build(spec, "q", 5, keep_fraction=1.0, shuffle=False, swap=False)
    assert p.exemplar_ids == [e["id"] for e in spec.exemplars] and p.verb_swaps == {}
    assert build(spec, "other query", 6, keep_fraction=1.0, shuffle=False, swap=False).messages[:-1] == p.messages[:-1]


def test_a_description_is_not_an_instruction():
    """Two demo pairs were accepted with a caption for an instruction; requests that open with an
    article still pass, and so does every exemplar of every prompt file."""
    from pipeline.llm.answers import instruction_issue, reads_as_description
    from pipeline.llm.prompt import load_prompt
    from tasks import TASK_IDS

    for text in ("The snake on a white background, a circular green and orange emblem.",
                 "The cat is a tabby cat, a two-legged cat that can be a blue fox or a pink mouse.",
                 "A red barn in a snowy field at dusk."):
        assert reads_as_description(text), text
        assert instruction_issue({"instruction": text}, "", 3, 400)[0] == "not_a_request"
    for text in ("The sky should be stormy.", "A pencil sketch of this, please.", "The dog, but make it a cat.",
                 "This photo at night can you do that?", "Remove the snake.", "Can you make the cat a fox?"):
        assert not reads_as_description(text), text
    for task in TASK_IDS:
        for ex in load_prompt(task).exemplars:
            assert not reads_as_description(ex["answer"]["instruction"]), (task, ex["id"])
