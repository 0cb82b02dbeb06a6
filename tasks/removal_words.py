"""Does an instruction ask for something to be removed? (the remove and text-remove checks)

The pair of a removal shows the object or text gone; an instruction that asks for anything else
("make the vase blue") would teach the editor that this wording means "remove". The test is
deliberately generous: people and SmolLM2 say "remove", "erase", "get rid of", "take ... off",
"wipe ... out", "make it disappear", "leave the wall blank", "... is gone", "the table without the
vase", and any of these counts. Only an instruction with none of them is rejected.
"""
from __future__ import annotations

import re

# up to four words between a verb and its particle: "take the old vase off", "wipe the word STOP out"
_GAP = r"(?:\s+[\w'’-]+){0,4}?\s+"
_WORDS = (
    # verbs whose meaning is removal (any inflection: remov-e/-ed/-ing/-al, eras-e/-ing, ...)
    r"remov\w*", r"delet\w*", r"eras\w*", r"eliminat\w*", r"wip(?:e|es|ed|ing)", r"scrub\w*",
    r"ditch\w*", r"discard\w*", r"dispos(?:e|es|ed|ing|al)", r"omit\w*", r"effac\w*", r"obliterat\w*",
    r"expung\w*", r"purg\w*", r"banish\w*", r"vanish\w*", r"disappear\w*", r"nix\w*", r"zap\w*",
    # inflections spelled out where a longer word means something else: "clearer", "striped",
    # "blanket", "snow-covered", "droplet" are no removals
    r"strip(?:s|ped|ping)?", r"clear(?:s|ed|ing)?", r"clean(?:s|ed|ing)?", r"hid(?:e|es|ing|den)",
    r"cover(?:s|ed|ing)?", r"blot(?:s|ted|ting)?", r"drop(?:s|ped|ping)?", r"lose", r"rid",
    # states the result is described by
    r"gone", r"without", r"blank(?:s|ed|ing)?", r"bare", r"empty", r"absent", r"missing", r"no\s+longer",
    r"no\s+more", r"free\s+of", r"nothing",
)
# verb + particle, with the object possibly in between ("take the vase away", "edit it out")
_PHRASES = (
    rf"tak(?:e|es|ing|en){_GAP}(?:out|off|away|down)", rf"took{_GAP}(?:out|off|away|down)",
    rf"take\s+(?:out|off|away|down)", r"get(?:ting)?\s+rid", r"do\s+away",
    rf"(?:paint|rub|black|white|edit|cut|leave|left|pull|scratch|cross|brush|sand|peel)\w*{_GAP}(?:out|over|off|away)",
    r"(?:paint|rub|black|white|edit|cut|leave|pull|scratch|cross|brush|peel)\w*\s+(?:out|over|off|away)",
)
# not after a hyphen: "snow-covered", "half-empty" describe, they do not ask
_REMOVAL = re.compile(r"(?<![\w-])(?:" + "|".join(_PHRASES + _WORDS) + r")\b", re.IGNORECASE)


def asks_removal(instruction: str) -> bool:
    """True when the instruction's wording asks for a removal (see the module's note)."""
    return bool(_REMOVAL.search(instruction or ""))
