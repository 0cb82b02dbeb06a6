"""Object-phrase helpers shared by the instruction agents' answer checks.

Object phrases are short noun phrases as given to an open-vocabulary detector ("the red umbrella",
"a dog's tail"). Checks compare them with captions by *head noun*:

* words are lowercased, a possessive "'s" / "s'" is stripped (straight or curly apostrophe), every
  other non-alphanumeric character splits words ("t-shirt" -> "t", "shirt");
* a trailing plural is removed naively: "-ies" -> "-y" (and "-ie" -> "-y", so "cookie" and
  "cookies" meet), "-ses/-xes/-zes/-ches/-shes" -> drop "es",
  otherwise a final "s" is dropped from words longer than three letters not ending in "ss";
* the head noun is the last word of the phrase, after cutting a trailing modifier that starts with
  a preposition or participle ("the man on the left" -> "man", "a cup of coffee" -> "cup",
  "a teapot made of glass" -> "teapot"), except that after a quantity noun the noun after "of" is
  the head ("a pair of glasses" -> "glass", "a herd of zebras" -> "zebra");
* a phrase "appears in" a text when its head noun is among the text's normalised words.

The same normalisation is applied to both sides, so naive singulars ("glasses" -> "glass",
"shoes" -> "shoe", "bus" -> "bus") only need to be consistent, not correct English.
"""
from __future__ import annotations

import re

__all__ = ["normalise_word", "normalise_words", "normalise_phrase", "head_noun", "appears_in",
           "is_possessive", "same_phrase", "contains_phrase", "added_words", "mentions_any"]

_APOS = "'\u2019\u02bc`"
_POSSESSIVE_RE = re.compile(rf"(?<=\w)(?:[{_APOS}]s\b|(?<=s)[{_APOS}](?!\w))", re.IGNORECASE)
_SPLIT_RE = re.compile(r"[^0-9a-z]+")
ARTICLES = frozenset({"a", "an", "the", "some", "its", "his", "her", "their", "this", "that"})
# A head noun is followed, not preceded, by these: "the man on the left" -> "man".
POSTMODIFIERS = frozenset({
    "of", "on", "in", "at", "with", "near", "behind", "under", "over", "above", "below", "beside",
    "by", "from", "inside", "into", "onto", "next", "between", "against", "along", "around",
    "across", "through", "underneath", "beneath", "atop", "without", "for", "like",
    "holding", "wearing", "made", "covered", "wrapped", "painted", "carved", "coated", "topped",
    "filled", "decorated", "dressed", "sitting", "standing", "lying", "that", "which", "who",
})
# "a pair of glasses", "a herd of zebras": the noun after "of" is the head.
QUANTIFIERS = frozenset({
    "pair", "couple", "group", "bunch", "piece", "slice", "set", "stack", "pile", "herd", "flock",
    "bouquet", "handful", "row", "line", "cluster", "crowd", "swarm", "school", "pack", "lot",
    "number", "kind", "type", "sort", "bit", "few", "dozen", "loaf", "sheet", "strip", "scoop",
    "sprig", "bundle", "heap", "team", "family", "litter", "collection", "series", "range",
})


def normalise_word(word: str) -> str:
    """One lowercase alphanumeric word, naively singularised."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "ie"
    elif len(w) > 4 and re.search(r"(?:ss|x|z|ch|sh)es$", w):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 3 and w.endswith("ie"):          # cookie/cookies, puppy/puppies -> "cooky", "puppy"
        w = w[:-2] + "y"
    return w


def _raw_words(text: str) -> list[str]:
    text = _POSSESSIVE_RE.sub("", text or "")
    return [w for w in _SPLIT_RE.split(text.lower()) if w]


def normalise_words(text: str) -> list[str]:
    """Lowercase, possessives stripped, split on punctuation, each word naively singularised."""
    return [normalise_word(w) for w in _raw_words(text)]


def normalise_phrase(phrase: str) -> str:
    """The phrase's normalised words without leading articles/determiners, joined by spaces:
    "The marble tables." -> "marble table"."""
    words = normalise_words(phrase)
    return " ".join(w for w in words if w not in ARTICLES)


def same_phrase(a: str, b: str) -> bool:
    return normalise_phrase(a) == normalise_phrase(b)


def head_noun(phrase: str) -> str:
    """The phrase's head noun (normalised), "" for an empty phrase.

    Modifier words are matched as whole whitespace tokens, so compounds such as "snow-covered"
    or "hand-painted" do not cut the phrase."""
    text = _POSSESSIVE_RE.sub("", phrase or "").lower()
    tokens = [t for t in (_SPLIT_RE.sub("", t) if "-" not in t else t.strip(".,;:!?\"()")
                          for t in text.split()) if t]
    while True:
        cut = next((i for i, t in enumerate(tokens) if t in POSTMODIFIERS and i > 0), None)
        if cut is None:
            break
        if tokens[cut] == "of" and normalise_word(_SPLIT_RE.sub("", tokens[cut - 1])) in QUANTIFIERS \
                and cut + 1 < len(tokens):
            tokens = tokens[cut + 1:]         # "a pair of glasses" -> "glasses"
            continue
        tokens = tokens[:cut]
        break
    words = normalise_words(" ".join(tokens))
    return words[-1] if words else ""


def contains_phrase(text: str, phrase: str) -> bool:
    """True when the phrase's normalised words (articles dropped) occur contiguously in the text's
    normalised words: "a beach" is in "a dog on a sunny beach"; "a snowy beach" is not."""
    needle = normalise_phrase(phrase).split()
    hay = normalise_words(text)
    n = len(needle)
    return n > 0 and any(hay[i:i + n] == needle for i in range(len(hay) - n + 1))


def appears_in(phrase: str, text: str) -> bool:
    """True when the phrase's head noun is one of the text's normalised words."""
    head = head_noun(phrase)
    return bool(head) and head in normalise_words(text)


def added_words(edited: str, original: str) -> list[str]:
    """The edited phrase's normalised words that the original lacks, articles dropped: what a
    texture edit changes ("the wooden table" → "a marble table": ["marble"])."""
    before = set(normalise_phrase(original).split())
    return [w for w in normalise_phrase(edited).split() if w not in before]


def _same_stem(a: str, b: str) -> bool:
    # a noun and the adjective made from it count as one word ("gold"/"golden", "marble"/"marbled",
    # "wood"/"wooden", "silk"/"silky"); below four letters only equal words match ("ice" ≠ "icon")
    short, long_ = sorted((a, b), key=len)
    return a == b or (len(short) >= 4 and long_.startswith(short))


def mentions_any(words: list[str], text: str) -> bool:
    """True when one of the normalised ``words`` is among the text's normalised words (stems too)."""
    hay = normalise_words(text)
    return any(_same_stem(w, h) for w in words for h in hay)


_CONTRACTIONS = frozenset({"it", "that", "there", "here", "what", "who", "he", "she", "let"})


def is_possessive(phrase: str) -> bool:
    """True for "a dog's tail", "the girls' shoes" (detectors often miss such phrases); False for
    contractions such as "it's"."""
    for m in _POSSESSIVE_RE.finditer(phrase or ""):
        before = re.findall(r"\w+$", (phrase or "")[:m.start()])
        if not before or before[0].lower() not in _CONTRACTIONS:
            return True
    return False


# "<owner>'s <object>" with something after the possessive; contractions are not possession.
_OWNER_PREFIX = re.compile(r"^(?:.*?\b)?(?!(?:it|that|there|here|what|who|he|she|let)(?:'|’))[\w-]+(?:'s|s'|’s|s’)\s+(?P<rest>.+)$",
                           re.IGNORECASE)


def strip_possession(phrase: str) -> str:
    """Rule-based fallback when the LLM's de-possessed phrase is unusable: drop everything up to
    the last possessive ("the old man's walking stick" → "walking stick")."""
    out = phrase.strip()
    while (m := _OWNER_PREFIX.match(out)) is not None:
        out = m.group("rest").strip()
    return out


def region_fields(answer: dict) -> tuple[str, str, str]:
    """(original_object, edited_object, output_caption) of a region answer, as strings."""
    return tuple(str(answer.get(k) or "") for k in ("original_object", "edited_object", "output_caption"))
