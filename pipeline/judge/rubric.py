"""The judge's rubric: prompt, JSON schema of the answer, parsing, weighting and the verdict.

Pure functions (standard library + PIL), so they are tested without a server. The prompt text is
our own; ``PROMPT_VERSION`` goes to every judged row and must change whenever the prompt or the
schema does (an answer cached under the old prompt is then never replayed: the cache key hashes
the messages anyway).

The judge answers integers 0..10 per criterion; a criterion's score on the row is that / 10, and
the weighted score ``judge`` is the weighted mean of those (weights normalised), all in 0..1.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json

PROMPT_VERSION = "judge-rubric-v1"
REWRITE_PROMPT_VERSION = "judge-rewrite-v1"

# criterion -> what the judge is asked about it
CRITERIA: dict[str, str] = {
    "following": "Does the second image carry out the instruction, all of it and nothing else?",
    "preservation": "Is everything the instruction does not mention unchanged: layout, identity, "
                    "background, colours outside the edit?",
    "realism": "Does the second image look like a plausible photograph or picture, with no pasted, "
               "smeared or impossible regions?",
    "technical": "Is the second image technically clean: sharp where it should be, no noise, "
                 "banding, seams or artefacts at the edit's border?",
}
MAX_POINTS = 10

SYSTEM = ("You grade image edits for a training set. You see an editing instruction, the image "
          "before the edit and the image after it. Give each criterion a whole number of points "
          f"from 0 (fails completely) to {MAX_POINTS} (flawless). Reply with one JSON object and "
          "nothing else.")

REWRITE_SYSTEM = ("You write editing instructions. You see an image before an edit and the image "
                  "after it. Write the one imperative instruction that turns the first into the "
                  "second, naming what changes, in at most 25 words. Reply with one JSON object "
                  "and nothing else.")


def rubric_schema() -> dict:
    """The JSON schema of a rubric answer (guided decoding makes the server keep to it)."""
    points = {"type": "integer", "enum": list(range(MAX_POINTS + 1))}
    return {"type": "object", "properties": {c: points for c in CRITERIA},
            "required": list(CRITERIA), "additionalProperties": False}


def rewrite_schema(max_chars: int = 200) -> dict:
    return {"type": "object",
            "properties": {"instruction": {"type": "string", "minLength": 1, "maxLength": max_chars}},
            "required": ["instruction"], "additionalProperties": False}


def image_data_url(png: bytes, side: int, fmt: str = "png") -> str:
    """The image as a data URL, its longer side at most ``side`` (the judge needs no more)."""
    from PIL import Image
    im = Image.open(io.BytesIO(png)).convert("RGB")
    if max(im.size) > side:
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, format="JPEG", quality=90)
    else:
        im.save(buf, format="PNG")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode()


def _images(in_url: str, out_url: str) -> list[dict]:
    return [{"type": "text", "text": "Before the edit:"},
            {"type": "image_url", "image_url": {"url": in_url}},
            {"type": "text", "text": "After the edit:"},
            {"type": "image_url", "image_url": {"url": out_url}}]


def rubric_messages(instruction: str, in_url: str, out_url: str) -> list[dict]:
    """OpenAI multimodal chat messages asking for the rubric of one pair."""
    asks = "\n".join(f'- "{c}": {q}' for c, q in CRITERIA.items())
    user = ([{"type": "text", "text": f"Instruction: {instruction}"}] + _images(in_url, out_url)
            + [{"type": "text", "text": f"Grade the edit on each criterion:\n{asks}"}])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def rewrite_messages(in_url: str, out_url: str) -> list[dict]:
    """Messages asking for the instruction of the pair, written from the images alone (the
    agent's instruction is not shown, so the rewrite cannot simply copy it)."""
    user = _images(in_url, out_url) + [{"type": "text", "text": 'Answer {"instruction": "..."}.'}]
    return [{"role": "system", "content": REWRITE_SYSTEM}, {"role": "user", "content": user}]


def prompt_hash(messages: list[dict]) -> str:
    """Hash of the prompt's text parts (images left out: they are the sample, not the prompt)."""
    text = [(m["role"], m["content"] if isinstance(m["content"], str)
             else [p.get("text") for p in m["content"] if p.get("type") == "text"]) for m in messages]
    return hashlib.sha256(json.dumps(text).encode()).hexdigest()[:16]


def parse_rubric(text: str | None) -> tuple[dict[str, float] | None, str]:
    """(criterion → score in 0..1, "") or (None, why the answer is unusable)."""
    if not text:
        return None, "empty answer"
    try:
        obj = json.loads(text)
    except ValueError as e:
        return None, f"not JSON: {e}"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    out = {}
    for c in CRITERIA:
        v = obj.get(c)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"{c}: missing or not a number ({v!r})"
        if not 0 <= v <= MAX_POINTS:
            return None, f"{c}: {v} outside 0..{MAX_POINTS}"
        out[c] = float(v) / MAX_POINTS
    return out, ""


def weighted(scores: dict[str, float], weights: dict[str, float]) -> float:
    """The weighted mean of the criteria's scores (weights normalised over the criteria given)."""
    total = sum(weights.get(c, 0.0) for c in CRITERIA)
    return sum(weights.get(c, 0.0) * scores[c] for c in CRITERIA) / total


def verdict(scores: dict[str, float], weights: dict[str, float], threshold: float | None) -> tuple[str | None, str]:
    """(reject reason, detail) of a pair whose weighted score is below ``threshold``, else (None, "").
    The reason names the criterion that cost the most: the largest weighted shortfall from full
    points, ``judge:<criterion>_low``."""
    score = weighted(scores, weights)
    if threshold is None or score >= threshold:
        return None, ""
    worst = max(CRITERIA, key=lambda c: (weights.get(c, 0.0) * (1 - scores[c]), weights.get(c, 0.0)))
    parts = ", ".join(f"{c} {scores[c] * MAX_POINTS:.0f}/{MAX_POINTS}" for c in CRITERIA)
    return f"judge:{worst}_low", f"judge {score:.3f} < min {threshold:.3f} ({parts})"


def parse_rewrite(text: str | None, min_chars: int, max_chars: int) -> tuple[str | None, str]:
    """(instruction, "") or (None, why the rewrite is unusable)."""
    try:
        obj = json.loads(text or "")
    except ValueError as e:
        return None, f"not JSON: {e}"
    ins = obj.get("instruction") if isinstance(obj, dict) else None
    if not isinstance(ins, str) or not ins.strip():
        return None, "no instruction"
    ins = " ".join(ins.split())
    if not min_chars <= len(ins) <= max_chars:
        return None, f"{len(ins)} characters, outside {min_chars}..{max_chars}"
    return ins, ""
