"""Token alignment of two captions for cross-attention injection (P2P "refine").

Works with whatever tokenizer the pipeline uses: both captions are tokenized to ids, the id
sequences are aligned with ``difflib.SequenceMatcher``, and every position of the target caption
that is part of a matching block takes the source's attention column at the matched position.
Padding after the end token is aligned too (it carries attention mass in CLIP models)."""
from __future__ import annotations

from difflib import SequenceMatcher

import torch


def _ids(tokenizer, text: str, length: int) -> list[int]:
    return tokenizer(text, truncation=True, max_length=length)["input_ids"]


def token_alignment(tokenizer, source: str, target: str, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(map, alpha), each of ``length`` (the padded text length): ``map[i]`` is the source position
    whose attention column target position ``i`` takes, ``alpha[i]`` is 1 where the token is common
    to both captions (inject) and 0 where it is new (keep the candidate's own attention)."""
    length = length or tokenizer.model_max_length
    s, t = _ids(tokenizer, source, length), _ids(tokenizer, target, length)
    tmap = torch.arange(length)
    alpha = torch.zeros(length)
    for a, b, n in SequenceMatcher(a=s, b=t, autojunk=False).get_matching_blocks():
        if n:
            tmap[b:b + n] = torch.arange(a, a + n)
            alpha[b:b + n] = 1.0
    pads = torch.arange(len(t), length)
    tmap[len(t):] = torch.clamp(len(s) + pads - len(t), max=length - 1)
    alpha[len(t):] = 1.0
    return tmap, alpha


def common_words(tokenizer, source: str, target: str) -> list[str]:
    """The tokens the alignment treats as shared (for params and debugging)."""
    length = tokenizer.model_max_length
    s, t = _ids(tokenizer, source, length), _ids(tokenizer, target, length)
    special = set(getattr(tokenizer, "all_special_ids", []))
    out = []
    for a, b, n in SequenceMatcher(a=s, b=t, autojunk=False).get_matching_blocks():
        out += [tokenizer.convert_ids_to_tokens(i) for i in t[b:b + n] if i not in special]
    return out
