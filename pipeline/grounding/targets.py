"""What the grounding stage looks for in each task's image, and which masks it makes.

  local, texture, remove  → ``original_object`` (it is in the input image x); region variants
  add                     → ``edited_object`` (it is in the generated y, which sits in input_png
                            for the add flow); region variants
  detect, segment         → ``edited_object`` (the agent's object to box / paint); the pair
  background              → the caption's subject (below); the background variant

Background subject (what stays; everything else is the background mask). The agent's
``original_object`` names the *current setting*, not the thing to keep, so the subject is chosen:

  1. ``llm``: the agent's ``subject`` key, when it is a noun phrase of the input caption
     (``subject_issue``: its words occur in the caption, every one inside one of the caption's noun
     phrases — "of" / "and" / "," may join two — and it ends where a noun phrase ends, so "dog
     sleeps" or "a red" are refused) and is not the current setting (the head noun of
     ``original_object``);
  2. ``detector``: otherwise (or when the detector finds nothing for the agent's subject) the
     caption's noun phrases (``noun_phrases``) minus the setting and framing words ("photo",
     "portrait") all go to the detector, and the best-scoring detection's phrase is the subject;
  3. neither → the stage rejects the row ``no_subject``. There is no word-position fallback.

Noun phrases come from a small rule chunker, no tagger: a determiner / number starts a phrase;
prepositions, conjunctions, pronouns, auxiliaries and punctuation end one; so do a common verb
("sleeps", "play"), an "-ing" participle and an "-ed" participle followed by a function word, when
the phrase already has a word ("Dog sleeps on a couch" → "dog", "a couch"; "a sleeping dog" stays
whole). "<quantity> of <noun>" is one phrase ("a pair of shoes"); a possessive stays inside its
phrase ("an old man's hat").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tasks.phrases import QUANTIFIERS, head_noun, is_possessive, normalise_word, strip_possession

REGION_TASKS = frozenset({"local", "texture", "remove", "add"})
PAIR_TASKS = frozenset({"detect", "segment"})
BACKGROUND_TASK = "background"
SUBJECT_KEY = "subject"
ANSWER_KEY = {"local": "original_object", "texture": "original_object", "remove": "original_object",
              "add": "edited_object", "detect": "edited_object", "segment": "edited_object"}

# ---------------------------------------------------------------- the noun-phrase chunker

DETERMINERS = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "some", "many", "several", "his", "her", "its",
    "their", "my", "our", "your", "another", "each", "every", "both", "no", "one", "two", "three",
    "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"})
BREAKS = frozenset({
    # prepositions
    "of", "on", "in", "at", "with", "near", "behind", "under", "over", "above", "below", "beside",
    "besides", "by", "from", "inside", "into", "onto", "next", "between", "against", "along", "around",
    "across", "through", "underneath", "beneath", "atop", "without", "for", "like", "to", "toward",
    "towards", "during", "after", "before", "off", "past", "up", "down", "out", "among", "amid",
    "amongst", "beyond", "within", "upon", "outside", "via", "per", "than", "while", "as", "front",
    # conjunctions, relatives, pronouns
    "and", "or", "but", "nor", "so", "yet", "then", "where", "when", "which", "who", "whom", "whose",
    "what", "he", "she", "it", "they", "we", "i", "you", "him", "them", "us", "me", "itself",
    "himself", "herself", "themselves", "there", "here",
    # auxiliaries, copula
    "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do", "does",
    "did", "can", "could", "will", "would", "may", "might", "should", "must", "not",
    # adverbs captions use
    "very", "together", "away", "back", "just", "also", "too", "alone", "still", "again", "almost",
    "closely", "nearby", "outdoors", "indoors", "upside", "side-by-side",
})
# clear verbs of captions (base forms; the third person is derived). Words that are as often nouns
# ("park", "watch", "walk", "face", "line") are left out: they stay inside a phrase.
VERBS = ("sit", "sleep", "stand", "run", "lie", "lay", "lean", "wait", "jump", "swim", "climb", "carry",
         "eat", "hold", "ride", "fly", "look", "play", "grow", "chase", "graze", "perch", "gaze", "stare",
         "sniff", "throw", "catch", "kick", "push", "pull", "drive", "sing", "wear", "feed", "enjoy", "sip",
         "relax", "lounge", "wander", "stroll", "read", "write", "take", "make", "give", "use", "pour",
         "prepare", "build", "fix", "smile", "laugh", "pose", "rest", "hang", "seem", "appear", "mend", "repair",
         "stay", "hide", "peek", "wag", "bite", "chew", "lick", "hug", "kneel", "crouch", "bend", "reach",
         "point", "glide", "soar", "hover", "float", "travel", "cross", "head", "approach", "leave",
         "enter", "fill", "surround", "overlook", "border", "line", "cover", "frame", "reflect", "shine",
         "glow", "sparkle", "blossom", "bloom", "sway")
_NOUNY_VERBS = frozenset({"line", "cover", "frame", "head", "border", "rest", "float", "pose", "smile",
                          "laugh"})


def _verb_forms(v: str) -> set[str]:
    if v.endswith("y") and v[-2:-1] not in "aeiou":
        third = v[:-1] + "ies"
    elif v.endswith(("s", "sh", "ch", "x", "z", "o")):
        third = v + "es"
    else:
        third = v + "s"
    return {third} if v in _NOUNY_VERBS else {v, third}


VERB_FORMS = frozenset(f for v in VERBS for f in _verb_forms(v))
# "-ing" words that are nouns or compound heads ("a living room", "a tall building")
ING_NOUNS = frozenset({
    "building", "painting", "clothing", "ceiling", "evening", "morning", "wedding", "thing", "string",
    "swing", "spring", "railing", "pudding", "frosting", "icing", "sibling", "duckling", "dumpling",
    "earring", "awning", "lightning", "stocking", "sapling", "herring", "viking", "king", "ring", "wing",
    "sling", "landing", "housing", "topping", "filling", "offering", "gathering", "meeting", "crossing"})
# "-ing" words that modify a following noun ("a small fishing boat", "the living room") but are
# participles before a function word ("a man fishing in a lake")
ING_MODIFIERS = frozenset({
    "parking", "dining", "living", "swimming", "waiting", "washing", "sewing", "baking", "fishing",
    "shopping", "running", "training", "camping", "racing", "sailing", "skating", "skiing", "cutting",
    "sitting", "riding", "climbing", "hiking", "surfing", "diving", "reading", "writing", "boxing",
    "bowling", "drawing", "sleeping", "walking", "dressing", "changing", "rocking", "rolling", "spinning"})
FRAMING = frozenset({"photo", "photograph", "picture", "image", "portrait", "close-up", "closeup", "close",
                     "view", "shot", "snapshot", "selfie", "scene", "illustration", "rendering", "render",
                     "side", "front", "top", "background", "foreground", "middle", "left", "right", "distance",
                     "day", "night", "time", "sunset", "sunrise", "dusk", "dawn"})
_TOKEN_RE = re.compile(r"[\w'’-]+|[^\w\s]")
_CONNECTORS = frozenset({"of", "and", ","})


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN_RE.findall(text or "")]


def _is_word(t: str) -> bool:
    return bool(re.match(r"[\w'’-]", t))


def _chunks(tokens: list[str]) -> list[tuple[int, int]]:
    """Token spans [start, end) of the noun phrases, in caption order."""
    out: list[tuple[int, int]] = []
    start, content = None, False          # the open phrase; whether it has a word past determiners

    def close(i: int) -> None:
        nonlocal start, content
        if start is not None and content:
            out.append((start, i))
        start, content = None, False

    n = len(tokens)
    for i, t in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < n else ""
        nxt_function = (not nxt or not _is_word(nxt) or nxt in BREAKS or nxt in DETERMINERS)
        if not _is_word(t) or t in BREAKS:
            close(i)
            continue
        if t in DETERMINERS:
            if content or start is None:
                close(i)
                start = i
            continue
        if content:
            if t in VERB_FORMS:
                close(i)
                continue
            if len(t) > 4 and t.endswith("ing") and t not in ING_NOUNS \
                    and (t not in ING_MODIFIERS or nxt_function):
                close(i)
                continue
            if len(t) > 4 and t.endswith("ed") and nxt_function:
                close(i)
                continue
        elif start is None and t in VERB_FORMS and i > 0 and t not in ING_NOUNS:
            continue                       # "... where children play", a verb with no subject here
        elif start is None and len(t) > 4 and t.endswith("ing") and t not in ING_NOUNS and nxt_function:
            continue                       # a participle on its own ("standing in the rain")
        if start is None:
            start = i
        content = True
    close(n)
    # "<quantity> of <noun>" is one phrase
    merged: list[tuple[int, int]] = []
    for s, e in out:
        if merged and tokens[e - 1:e] and merged[-1][1] + 1 == s and tokens[s - 1] == "of" \
                and normalise_word(re.sub(r"\W", "", tokens[merged[-1][1] - 1])) in QUANTIFIERS:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def _join(tokens: list[str]) -> str:
    return re.sub(r"\s+([,;:.!?)])", r"\1", " ".join(tokens)).replace(" ’", "’")


def noun_phrases(caption: str) -> list[str]:
    """The caption's noun phrases, lowercased, in order, each once."""
    toks = _tokens(caption)
    out: list[str] = []
    for s, e in _chunks(toks):
        p = _join(toks[s:e])
        if p not in out:
            out.append(p)
    return out


def _norm_tokens(tokens: list[str]) -> list[str]:
    return [normalise_word(re.sub(r"['’]s$|['’]$", "", t)) for t in tokens]


def subject_issue(subject: str, caption: str, setting: str = "") -> str | None:
    """None when ``subject`` may be the background task's subject: a noun phrase of ``caption``
    (see the module doc) that is not the current ``setting``; else why not."""
    sub = [t for t in _tokens(subject) if _is_word(t)]
    while sub and sub[0] in DETERMINERS:
        sub = sub[1:]                      # "the dog" names "A dog"
    if not sub:
        return "subject_empty"
    toks = _tokens(caption)
    chunks = _chunks(toks)
    in_np, np_end = set(), set()
    for s, e in chunks:
        in_np.update(range(s, e))
        np_end.add(e - 1)
    hay, needle = _norm_tokens(toks), _norm_tokens(sub)
    k = len(needle)
    found = False
    for i in range(len(hay) - k + 1):
        if hay[i:i + k] != needle:
            continue
        found = True
        span = range(i, i + k)
        inside = all(j in in_np or (toks[j] in _CONNECTORS and j - 1 in in_np and j + 1 in in_np) for j in span)
        if inside and i + k - 1 in np_end:
            break
    else:
        return "subject_not_noun_phrase" if found else "subject_not_in_caption"
    if setting.strip() and head_noun(subject) == head_noun(setting):
        return "subject_is_background"
    return None


def subject_candidates(caption: str, setting: str = "") -> list[str]:
    """The caption's noun phrases the detector may pick the subject from: not the current setting,
    not a framing word ("a photo", "the background")."""
    bad = head_noun(setting) if setting.strip() else None
    out = []
    for p in noun_phrases(caption):
        h = head_noun(p)
        if h and h != bad and h not in FRAMING:
            out.append(p)
    return out


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    phrase: str               # what to ground first ("" when the detector picks among candidates)
    plain: str | None         # the de-possessed phrase, tried when the first finds nothing
    source: str               # where the phrase came from: an answer key; "llm" / "detector" /
                              # "none" for the background subject
    candidates: tuple[str, ...] = ()   # background: the caption's noun phrases the detector picks from
    issue: str | None = None  # background: why the agent's subject was not used (None when it was)


def grounds(task: str) -> bool:
    return task in ANSWER_KEY or task == BACKGROUND_TASK


def background_target(answer: dict, caption: str) -> Target:
    """The background task's subject: the agent's, when valid; else the detector's pick among the
    caption's noun phrases (``candidates``); ``source == "none"`` when there is neither."""
    setting = str(answer.get("original_object") or "")
    subject = str(answer.get(SUBJECT_KEY) or "").strip()
    cands = tuple(subject_candidates(caption, setting))
    issue = subject_issue(subject, caption, setting) if subject else "subject_missing"
    if issue is None:
        plain = strip_possession(subject) if is_possessive(subject) else None
        return Target(subject, plain if plain and plain != subject else None, "llm",
                      tuple(c for c in cands if c != subject.lower()))
    return Target("", None, "detector" if cands else "none", cands, issue)


def target_for(task: str, answer: dict, caption: str) -> Target | None:
    """None when the row has nothing to ground (its task, or an empty phrase)."""
    if task == BACKGROUND_TASK:
        return background_target(answer, caption)
    key = ANSWER_KEY.get(task)
    if key is None:
        return None
    phrase = str(answer.get(key) or "").strip()
    plain = str(answer.get(f"{key}_plain") or "").strip() or None
    if not phrase:
        return None
    return Target(phrase, plain if plain and plain != phrase else None, key)


@dataclass(frozen=True)
class Grounded:
    """One grounded object, as the stage hands it to a task's ``make_pair``."""
    box: tuple[float, float, float, float]   # the detector's box, x0 y0 x1 y1 pixels
    score: float
    phrase: str                              # the phrase that found it
    mask: Any = None                         # HxW uint8 precise mask (None when not segmented)
