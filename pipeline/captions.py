"""Caption hygiene, applied once to every source row as it is made (``SourceIndex.rows``).

``clean_caption`` makes a caption plain single-line text:
  * invisible characters are removed: zero-width ones (U+200B–U+200D, U+2060, U+FEFF) and the
    bidirectional embeddings, overrides, isolates and marks (U+202A–U+202E, U+2066–U+2069,
    U+200E, U+200F, U+061C), which can make text read differently from what it holds;
  * line breaks, tabs and other control characters (Unicode category Cc, U+2028, U+2029) become
    spaces, then runs of whitespace become one space and the ends are stripped;
  * the result is NFC-normalised (a composed "é" and "e" + combining accent compare equal).
A caption with nothing left is "" and is rejected later as ``empty_caption``.

``injection_issue`` says why a caption looks like an attempt to steer the LLM that writes the edit
instruction (the caption is pasted into its prompt), or None. The rules are few on purpose:
  * chat-template control tokens: ``<|...|>`` (ChatML ``<|im_start|>``, ``<|endoftext|>``, Llama-3
    ``<|eot_id|>`` ...), ``[INST]``/``[/INST]``, ``<<SYS>>``, ``<s>``/``</s>``,
    ``<start_of_turn>``/``<end_of_turn>``;
  * directives to the model: "ignore/disregard/forget (all) (the/your) previous/above/prior/earlier
    instructions", "system prompt", and "you are now a/an …" or "you are now in … mode" (a persona
    switch; "You are now entering Vermont" on a road sign is a caption, not an attack).
Such rows are rejected at the source as ``caption_injection`` with the rule that matched.
"""
from __future__ import annotations

import re
import unicodedata

# removed outright (not replaced by a space): they are invisible inside a word
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"
                                    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                                    "\u200e\u200f\u061c"))
_SPACE_LIKE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")     # category Cc, line/paragraph separators

INJECTION_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("chat-template token", re.compile(r"<\|[^|<>\s]{1,40}\|>")),
    ("chat-template token", re.compile(r"\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>", re.I)),
    ("directive to the model", re.compile(
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+|my\s+)?"
        r"(?:previous|above|prior|earlier|preceding)\s+(?:instructions?|prompts?|rules|directions)\b", re.I)),
    ("directive to the model", re.compile(r"\bsystem\s+prompt\b", re.I)),
    ("directive to the model", re.compile(
        r"\byou\s+are\s+now\s+(?:an?\s+\w|in\s+\w+\s+mode\b|dan\b|jailbroken\b|unrestricted\b)", re.I)),
)


def clean_caption(text):
    """See the module doc; anything that is not a str (None, a number from a Parquet column) is
    returned as it is."""
    if not isinstance(text, str):
        return text
    t = text.translate(_INVISIBLE)
    t = _SPACE_LIKE.sub(" ", t)
    t = unicodedata.normalize("NFC", t)
    return " ".join(t.split())


def injection_issue(text) -> str | None:
    """Why ``text`` (a cleaned caption) is rejected as ``caption_injection``, or None."""
    if not isinstance(text, str) or not text:
        return None
    for what, rx in INJECTION_RULES:
        m = rx.search(text)
        if m:
            return f"{what} {m.group(0)[:60]!r}"
    return None
