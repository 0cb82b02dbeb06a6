"""Turn an LLM completion into a validated answer, or a reject reason.

Reasons are stable codes counted in the statistics:
  llm_error            transport / engine error
  llm_invalid_json     no JSON object could be parsed (garbage, prose, truncated)
  llm_schema           JSON parsed but violates the task's schema (the detail names the key)
  llm_same_caption     the output caption equals the input caption
  instruction_length   the instruction is shorter or longer than the job's bounds
  not_a_request        the "instruction" is a description ("The snake on a white background, a
                       circular green and orange emblem."): it opens like a caption and no word of
                       it asks for anything
  <task-specific>      from ``Task.check_answer``
"""
from __future__ import annotations

import json
import re

import jsonschema

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


def extract_json(text: str) -> dict | None:
    """The first complete JSON object in ``text`` (models wrap answers in fences or prose)."""
    if not text:
        return None
    t = _FENCE.sub("", text.strip())
    start = t.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(t[start:])
            if isinstance(obj, dict):
                return obj
        except ValueError:
            pass
        start = t.find("{", start + 1)
    return None


def validate_answer(text: str | None, schema: dict, caption: str) -> tuple[dict | None, str | None, str]:
    """Returns (answer, reason, detail); answer is None when reason is set."""
    obj = extract_json(text or "")
    if obj is None:
        return None, "llm_invalid_json", (text or "")[:200]
    # strip whitespace of string values so "  " counts as empty
    obj = {k: v.strip() if isinstance(v, str) else v for k, v in obj.items()}
    e = jsonschema.exceptions.best_match(_validator(schema).iter_errors(obj))
    if e is not None:
        where = "/".join(str(p) for p in e.absolute_path) or "(answer)"
        return None, "llm_schema", f"{where}: {e.message}"[:300]
    out_cap = obj.get("output_caption")
    if isinstance(out_cap, str) and _norm(out_cap) == _norm(caption):
        return None, "llm_same_caption", out_cap[:200]
    return obj, None, ""


_VALIDATORS: dict[str, object] = {}


def _validator(schema: dict):
    """A checked, compiled validator per schema. ``jsonschema.validate`` checks the schema itself on
    every call: 5 ms an answer, 95% of the instruction stage's own CPU time."""
    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS.get(key)
    if v is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        v = _VALIDATORS[key] = cls(schema)
    return v


def _norm(s: str) -> str:
    return re.sub(r"\W+", " ", s.lower()).strip()


OBJECT_KEYS = ("original_object", "edited_object")


# How a caption opens. An instruction almost never does (none of the 300-odd exemplars of the
# prompt files), unless a request follows ("The sky should be stormy", "A pencil sketch, please").
CAPTION_OPENERS = frozenset("the a an this these that those there its".split())
# Words that make a sentence a request: modal and polite markers, and imperative edit verbs (the
# prompt files' verb lists and the verbs people use for these sixteen tasks).
REQUEST_WORDS = frozenset("""
please pls plz should must need needs want wants let lets make turn change add
put place insert remove delete erase take get replace swap switch transform convert render draw
generate create produce show give highlight mark outline box circle locate find detect segment paint
color colour recolor recolour brighten darken increase decrease adjust blur sharpen reduce boost apply
set restyle reimagine rework edit update rewrite write estimate compute extract isolate select mask
alter modify morph remake redo redraw recreate reinterpret repaint retouch revise tweak shift spot
pinpoint identify delineate eliminate include pop position process output cut fill use keep give
become becomes
""".split())


def reads_as_description(text: str) -> bool:
    """The text opens like a caption (an article or demonstrative first) and asks for nothing."""
    words = _norm(text).split()
    if not words or words[0] not in CAPTION_OPENERS or REQUEST_WORDS & set(words):
        return False
    # "can you …" asks; "a cat that can be a fox" describes
    return not any(a in ("can", "could", "would", "will") and b == "you" for a, b in zip(words, words[1:]))


def instruction_issue(answer: dict, caption: str, min_chars: int, max_chars: int) -> tuple[str, str] | None:
    ins = answer.get("instruction")
    if isinstance(ins, str) and not (min_chars <= len(ins) <= max_chars):
        return "instruction_length", f"{len(ins)} characters, bounds [{min_chars}, {max_chars}]"
    if isinstance(ins, str) and reads_as_description(ins):
        return "not_a_request", ins[:200]
    return None


def normalise_instruction(text: str) -> str:
    return _norm(text)
