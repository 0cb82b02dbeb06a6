"""Fonts for new text: which font files exist on the machine, and which one fits a description.

The agent describes the font in words ("bold sans-serif", "handwritten script", "tall condensed
capitals"). No script or brush font ships with DejaVu or the Debian packages we install, so a
description is reduced to traits a font file really has — family class (sans / serif / mono),
bold, italic, condensed — and the font with the most matching traits wins (ties: the job's rng).
The traits are read from the font's own name table (PIL ``getname``), not from its file name.
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Folders of the fonts we rely on: DejaVu is on almost every Debian/Ubuntu machine (fonts-dejavu-core);
# Liberation and FreeFont are the Debian packages deploy/setup.sh installs when it can.
FONT_GLOBS = ("/usr/share/fonts/truetype/dejavu/*.ttf", "/usr/share/fonts/truetype/liberation/*.ttf",
              "/usr/share/fonts/truetype/liberation2/*.ttf", "/usr/share/fonts/truetype/freefont/*.ttf")
# Thin or symbol fonts make text OCR cannot read back (and nobody asks for them).
_SKIP = re.compile(r"ExtraLight|MathTeX|Symbol", re.I)

# description words -> trait; the first table hit per word wins
_TRAIT_WORDS = {
    "mono": ("mono", "monospace", "typewriter", "code", "courier", "terminal", "pixel"),
    "serif": ("serif", "roman", "times", "elegant", "classic", "engraved", "newspaper", "book", "gold"),
    "bold": ("bold", "heavy", "block", "chunky", "black", "thick", "athletic", "fat", "strong", "poster",
             "display", "impact", "stencil", "highway"),
    "italic": ("italic", "oblique", "script", "handwriting", "handwritten", "cursive", "calligraphy",
               "brush", "slanted", "hand-painted", "chalk", "casual", "signature"),
    "condensed": ("condensed", "narrow", "tall", "compressed"),
}


@dataclass(frozen=True)
class FontInfo:
    path: str
    family: str
    style: str
    traits: frozenset[str]


def check_font_file(path: str) -> str | None:
    """None when PIL can load ``path`` as a font, else what is wrong (for the config error)."""
    from PIL import ImageFont

    try:
        ImageFont.truetype(path, 12)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read as a font by PIL ({e})"
    return None


def default_fonts() -> list[str]:
    """Every usable font file of ``FONT_GLOBS`` on this machine, sorted (so the config is stable)."""
    out = []
    for g in FONT_GLOBS:
        out += [p for p in glob.glob(g) if not _SKIP.search(p)]
    return sorted(set(out))


@lru_cache(maxsize=256)
def font_info(path: str) -> FontInfo:
    from PIL import ImageFont

    family, style = ImageFont.truetype(path, 12).getname()
    family, style = family or "", style or ""
    name = f"{family} {style}".lower()
    traits = set()
    if "mono" in name or "courier" in name:
        traits.add("mono")
    elif ("serif" in name and "sans" not in name) or "times" in name:
        traits.add("serif")
    if "bold" in name:
        traits.add("bold")
    if "italic" in name or "oblique" in name:
        traits.add("italic")
    if "condensed" in name or "narrow" in name:
        traits.add("condensed")
    return FontInfo(path, family, style, frozenset(traits))


def wanted_traits(description: str) -> set[str]:
    """Traits a description asks for; "sans-serif" is explicitly not serif."""
    d = (description or "").lower()
    sans = bool(re.search(r"sans[\s-]*serif|\bsans\b|grotesk|helvetica|arial", d))
    d = re.sub(r"sans[\s-]*serif", " ", d)
    words = re.findall(r"[a-z][a-z-]*", d)
    out = set()
    for w in words:
        for trait, keys in _TRAIT_WORDS.items():
            if any(w == k or w.startswith(k) for k in keys):
                out.add(trait)
                break
    if sans:
        out.discard("serif")
        out.add("sans")
    return out


def choose_font(description: str, fonts: list[str], rng: np.random.Generator) -> tuple[FontInfo, list[str]]:
    """The font among ``fonts`` sharing the most traits with ``description``; returns it and the
    traits asked for. A font with a trait that was not asked for loses a point (no surprise italics)."""
    if not fonts:
        raise ValueError("text.fonts: no font files configured or found on this machine "
                         "(install fonts-dejavu-core or list font files)")
    want = wanted_traits(description)
    scored = []
    for p in fonts:
        info = font_info(p)
        have = set(info.traits) | ({"sans"} if not info.traits & {"serif", "mono"} else set())
        scored.append((len(want & have) - len(have - want - {"sans"}), info))
    best = max(s for s, _ in scored)
    ties = [info for s, info in scored if s == best]
    return ties[int(rng.integers(len(ties)))], sorted(want)
