"""Does a color instruction ask for exactly the planned operations?

The color pair applies the plan's one or two operations and nothing else, so its instruction must
name each of them and no other: "make it more vibrant and bright and sharp" over a pair that was
only sharpened teaches the editor that "vibrant" and "bright" mean nothing (a demo run accepted
that pair). Operations are compared as effects people name: brightness, contrast, saturation, hue,
blur (Gaussian blur and defocus look alike to a reader) and sharpness. Brightness also has a
direction: "darker" over a brightened pair is the reverse edit.

The word lists are what people and the prompt exemplars use; a word that names no effect in an
everyday sentence ("light" as in "light blue", "colours" alone, "focus" alone) is left out, so
the check errs toward passing.
"""
from __future__ import annotations

import re

from tasks.removal_words import asks_removal

OP_EFFECT = {"brightness": "brightness", "contrast": "contrast", "saturation": "saturation", "hue": "hue",
             "gaussian_blur": "blur", "defocus": "blur", "sharpen": "sharpness"}

_BRIGHT_UP = {"bright", "brighter", "brightest", "brighten", "brightened", "brightening", "lighter", "lighten",
              "lightened", "overexposed", "sunnier"}
_BRIGHT_DOWN = {"dark", "darker", "darkest", "darken", "darkened", "darkening", "dim", "dimmer", "dimmed",
                "underexposed", "gloomier"}
EFFECT_WORDS: dict[str, set[str]] = {
    "brightness": _BRIGHT_UP | _BRIGHT_DOWN | {"brightness", "exposure", "luminance"},
    "contrast": {"contrast", "contrasty", "flat", "flatter", "punchy", "punchier", "washed"},
    "saturation": {"saturation", "saturated", "saturate", "desaturate", "desaturated", "oversaturated",
                   "vivid", "vivider", "vibrant", "vibrancy", "colourful", "colorful", "pop", "muted", "mute",
                   "subdued", "colourless", "colorless", "grayscale", "greyscale", "monochrome", "monochromatic",
                   "drain", "drained", "richer", "duller", "sepia"},
    "hue": {"hue", "hues", "tint", "tinted", "tints", "cast"},
    "blur": {"blur", "blurred", "blurry", "blurrier", "blurring", "soft", "softer", "soften", "softened",
             "smear", "smeared", "defocus", "defocused", "unfocused", "fuzzy", "fuzzier", "hazy", "bokeh"},
    "sharpness": {"sharp", "sharpen", "sharpened", "sharper", "sharpness", "sharpening", "crisp", "crisper",
                  "crispness", "detail", "details", "detailed", "clarity", "defined"},
}
EFFECT_PHRASES: dict[str, tuple[tuple[str, ...], ...]] = {
    "saturation": (("black", "and", "white"), ("no", "colour"), ("no", "color")),
    "blur": (("out", "of", "focus"),),
    "hue": (("colour", "shift"), ("color", "shift"), ("shift", "the", "colours"), ("shift", "the", "colors")),
}
_WORD = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def named_effects(text: str) -> set[str]:
    words = _words(text)
    ws = set(words)
    found = {e for e, vocab in EFFECT_WORDS.items() if vocab & ws}
    for e, phrases in EFFECT_PHRASES.items():
        for p in phrases:
            if any(tuple(words[i:i + len(p)]) == p for i in range(len(words) - len(p) + 1)):
                found.add(e)
    return found


def color_instruction_issue(instruction: str, ops: list[dict]) -> tuple[str, str] | None:
    """(reason, detail) when the instruction does not ask for exactly the planned effects."""
    planned = {OP_EFFECT[o["op"]] for o in ops if o.get("op") in OP_EFFECT}
    named = named_effects(instruction)
    missing, extra = planned - named, named - planned
    if missing:
        return "color_op_missing", f"the pair's {', '.join(sorted(missing))} change is not asked for"
    if extra:
        return "color_op_unplanned", f"asks for {', '.join(sorted(extra))}, which the pair does not change"
    # blur and sharpness are each other's undoing: "eliminate the out-of-focus part" asks for the
    # opposite of a defocus, "remove the detail" the opposite of a sharpening
    if planned <= {"blur", "sharpness"} and asks_removal(instruction):
        return "color_wrong_direction", (f"the pair adds {', '.join(sorted(planned))}; the instruction asks "
                                         "to remove it")
    for o in ops:
        if o.get("op") == "brightness" and isinstance(o.get("factor"), (int, float)):
            wrong = _BRIGHT_DOWN if o["factor"] > 1 else _BRIGHT_UP
            if wrong & set(_words(instruction)):
                return "color_wrong_direction", (f"brightness ×{o['factor']} but the instruction says "
                                                 f"{sorted(wrong & set(_words(instruction)))[0]!r}")
    return None
