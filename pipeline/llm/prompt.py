"""Few-shot prompt builder for the instruction agents (DESIGN.md §3, paper supp. §7.1).

A prompt is: system message → introduction (with a verb drawn from the task's set) and a short
acknowledgement → the exemplar history, shuffled, a random ``keep_fraction`` of it kept, and the
verbs inside the exemplar instructions swapped at random within the set → the new query.

Everything random comes from one seed, and the row records which exemplars and which verb swaps
were used, so ``build(..., seed)`` rebuilds the exact prompt from a row's provenance.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
REQUIRED_KEYS = ("task", "system", "introduction", "introduction_reply", "verbs", "answer_schema", "exemplars")


class PromptFileError(ValueError):
    pass


@dataclass(frozen=True)
class PromptSpec:
    task: str
    system: str
    introduction: str
    introduction_reply: str
    verbs: tuple[str, ...]
    answer_schema: dict
    exemplars: tuple[dict, ...]
    file_hash: str

    @property
    def verb_pattern(self) -> re.Pattern:
        return _verb_pattern(self.verbs)


@lru_cache(maxsize=64)
def _verb_pattern(verbs: tuple[str, ...]) -> re.Pattern:
    """Built once per verb set (it was built for every exemplar of every prompt: half the prompt
    builder's time). Longest first so "turn into" wins over "turn"; whole words only."""
    alts = sorted(verbs, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(v) for v in alts) + r")\b", re.IGNORECASE)


@lru_cache(maxsize=64)
def load_prompt(task: str, prompts_dir: str | None = None) -> PromptSpec:
    path = Path(prompts_dir or PROMPTS_DIR) / f"{task}.yaml"
    if not path.exists():
        raise PromptFileError(f"{path}: prompt file for task {task!r} not found")
    raw = path.read_bytes()
    data = yaml.safe_load(raw)
    missing = [k for k in REQUIRED_KEYS if k not in (data or {})]
    if missing:
        raise PromptFileError(f"{path}: missing keys {missing}")
    if data["task"] != task:
        raise PromptFileError(f"{path}: task is {data['task']!r}, expected {task!r}")
    if "{verb}" not in data["introduction"]:
        raise PromptFileError(f"{path}: introduction must contain '{{verb}}'")
    ids = [e.get("id") for e in data["exemplars"]]
    if len(set(ids)) != len(ids) or None in ids:
        raise PromptFileError(f"{path}: every exemplar needs a unique id")
    for e in data["exemplars"]:
        if not isinstance(e.get("query"), str) or not isinstance(e.get("answer"), dict):
            raise PromptFileError(f"{path}: exemplar {e.get('id')!r} needs a string query and an answer mapping")
    return PromptSpec(
        task=task, system=data["system"].strip(), introduction=data["introduction"].strip(),
        introduction_reply=data["introduction_reply"].strip(), verbs=tuple(data["verbs"]),
        answer_schema=data["answer_schema"], exemplars=tuple(data["exemplars"]),
        file_hash=hashlib.sha256(raw).hexdigest()[:16],
    )


@dataclass
class BuiltPrompt:
    messages: list[dict]
    exemplar_ids: list[str]
    intro_verb: str
    verb_swaps: dict[str, list[list[str]]] = field(default_factory=dict)

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.messages, sort_keys=True).encode()).hexdigest()[:16]


def _match_case(src: str, new: str) -> str:
    return new[:1].upper() + new[1:] if src[:1].isupper() else new


def swap_verbs(text: str, spec: PromptSpec, rng: np.random.Generator) -> tuple[str, list[list[str]]]:
    """Replace every verb of the set found in ``text`` by a random verb of the set."""
    swaps: list[list[str]] = []

    def sub(m: re.Match) -> str:
        new = spec.verbs[int(rng.integers(len(spec.verbs)))]
        swaps.append([m.group(0), new])
        return _match_case(m.group(0), new)

    return spec.verb_pattern.sub(sub, text), swaps


def build(spec: PromptSpec, query: str, seed: int, *, keep_fraction: float = 0.6,
          shuffle: bool = True, swap: bool = True) -> BuiltPrompt:
    """Render one prompt. ``shuffle=False, keep_fraction=1, swap=False`` gives the fixed prompt
    (all exemplars, file order) used as the baseline when measuring diversity."""
    rng = np.random.default_rng([seed, 0x5EED])
    # The introduction's verb is drawn too, unless verbs are not swapped (the fixed baseline: one
    # prompt prefix per task, which the server's prefix cache then serves for every caption).
    intro_verb = spec.verbs[int(rng.integers(len(spec.verbs)))] if swap else spec.verbs[0]
    n = len(spec.exemplars)
    n_keep = n if keep_fraction >= 1 else max(1, round(keep_fraction * n))
    if shuffle:
        order = rng.permutation(n)[:n_keep].tolist()          # a random subset in random order
    else:
        order = sorted(rng.choice(n, size=n_keep, replace=False).tolist()) if n_keep < n else list(range(n))
    messages = [
        {"role": "system", "content": spec.system},
        {"role": "user", "content": spec.introduction.replace("{verb}", intro_verb)},
        {"role": "assistant", "content": spec.introduction_reply},
    ]
    ids, swaps = [], {}
    for i in order:
        ex = spec.exemplars[int(i)]
        answer = dict(ex["answer"])
        if swap and isinstance(answer.get("instruction"), str):
            answer["instruction"], s = swap_verbs(answer["instruction"], spec, rng)
            if s:
                swaps[ex["id"]] = s
        ids.append(ex["id"])
        messages.append({"role": "user", "content": ex["query"]})
        messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
    messages.append({"role": "user", "content": query})
    return BuiltPrompt(messages=messages, exemplar_ids=ids, intro_verb=intro_verb, verb_swaps=swaps)
