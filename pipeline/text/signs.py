"""Photos with text the pipeline knows: a sign, placard or caption band composed onto a real photo.

The bundled photos carry no text, so the demo (and the text benchmark) paste one: a panel in a
contrasting colour with one or two words in a bold-ish font, at a random place, size and slight
slant, all drawn from a seed. The caption names the text, so the agent can quote it and the result
can be checked by OCR.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# sign wording (what the photo says) and replacement wording (what the benchmark asks for);
# short, common words: signs, not prose
SIGN_TEXTS = ("OPEN", "SALE", "EXIT", "CAFE", "HOTEL", "PARKING", "BAKERY", "TICKETS", "FRESH BREAD", "NO ENTRY",
              "WELCOME", "SUMMER", "MARKET", "GARDEN", "MUSEUM", "PHARMACY", "BOOKS", "PIZZA", "TAXI", "STATION",
              "Open Late", "Fresh Fish", "Hello", "Coffee", "Lost Cat", "Quiet Please", "Free Wifi")
NEW_TEXTS = ("CLOSED", "LIBRARY", "FLOWERS", "BAR", "DENTIST", "THEATRE", "HARBOR", "BUS STOP", "POST OFFICE",
             "SCHOOL", "BANK", "DINER", "BIKES", "ZOO", "GIFTS", "TEA ROOM", "Goodbye", "Sold Out", "Back Soon",
             "Tacos", "Bakery", "Gallery", "Bistro", "Hotel", "Music", "Pet Shop", "Park")

# (photo, how the caption starts); photos in which a sign is believable
SIGN_PHOTOS = (("chelsea", "A tabby cat"), ("astronaut", "A smiling astronaut in an orange suit"),
               ("coffee", "A cup of espresso on a wooden table"), ("rocket", "A white rocket on its launch pad"),
               ("motorcycle", "A red motorcycle in a garage"))
SIGN_KINDS = (("sign", "beside a sign reading"), ("placard", "next to a placard that says"),
              ("banner", "under a banner reading"), ("caption", "with a caption that says"))
# (panel, ink) pairs with strong contrast
PALETTES = (((245, 240, 225), (25, 25, 25)), ((255, 255, 255), (180, 20, 20)), ((250, 215, 60), (20, 20, 20)),
            ((25, 45, 110), (255, 255, 255)), ((20, 90, 50), (250, 250, 240)), ((30, 30, 30), (255, 220, 60)),
            ((170, 30, 30), (255, 255, 255)))
SIGN_SEED = 0x5167
# DejaVu only: it is on every machine we run on, so a sign index gives the same picture everywhere
# (fonts from optional packages would change which font an index draws)
SIGN_FONT_NAMES = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed-Bold.ttf",
                   "DejaVuSans.ttf", "DejaVuSansMono-Bold.ttf")


@dataclass
class SignSample:
    image: np.ndarray          # HxWx3 uint8 RGB
    text: str
    caption: str
    photo: str
    font: str
    box: tuple[int, int, int, int]    # panel bounds in the image (after slanting)
    angle: float


def sign_fonts() -> list[str]:
    from pipeline.text.fonts import default_fonts

    have = default_fonts()
    out = [p for name in SIGN_FONT_NAMES for p in have if p.endswith("/" + name)]
    if not out:
        raise RuntimeError("no font for demo signs: install fonts-dejavu-core")
    return out


def compose_sign(photo: np.ndarray, text: str, rng: np.random.Generator, font_path: str,
                 panel_rgb=(245, 240, 225), ink_rgb=(25, 25, 25), banner: bool = False) -> tuple[np.ndarray, tuple, float]:
    """Paste a panel with ``text`` onto ``photo``; returns (image, panel box, slant in degrees)."""
    from PIL import Image, ImageDraw, ImageFont

    H, W = photo.shape[:2]
    px = max(22, int(min(H, W) * rng.uniform(0.08, 0.13)))
    font = ImageFont.truetype(font_path, px)
    while px > 14:       # shrink until the panel fits in 85% of the width
        x0, y0, x1, y1 = font.getbbox(text)
        if (x1 - x0) + 2 * px <= 0.85 * W:
            break
        px = int(px * 0.9)
        font = ImageFont.truetype(font_path, px)
    x0, y0, x1, y1 = font.getbbox(text)
    padx, pady = int(px * rng.uniform(0.5, 0.9)), int(px * rng.uniform(0.35, 0.6))
    pw, ph = (x1 - x0) + 2 * padx, (y1 - y0) + 2 * pady
    if banner:
        pw = max(pw, int(W * 0.9))
    panel = Image.new("RGBA", (pw, ph), (*panel_rgb, 255))
    d = ImageDraw.Draw(panel)
    border = max(2, px // 10)
    d.rectangle([border // 2, border // 2, pw - 1 - border // 2, ph - 1 - border // 2], outline=(*ink_rgb, 255),
                width=border)
    d.text((pw / 2, ph / 2), text, font=font, fill=(*ink_rgb, 255), anchor="mm")
    angle = 0.0 if banner else float(rng.uniform(-6.0, 6.0))
    if angle:
        panel = panel.rotate(angle, resample=Image.BICUBIC, expand=True)
    lw, lh = panel.size
    lw, lh = min(lw, W), min(lh, H)
    ox = int(rng.integers(0, W - lw + 1))
    oy = int(rng.integers(0, H - lh + 1)) if not banner else int(H - lh - rng.integers(0, max(1, H // 12)))
    img = Image.fromarray(photo).convert("RGBA")
    img.alpha_composite(panel.crop((0, 0, lw, lh)), (ox, oy))
    return np.asarray(img.convert("RGB")), (ox, oy, ox + lw, oy + lh), angle


@dataclass(frozen=True)
class SignSpec:
    index: int
    photo: str
    text: str
    kind: str
    caption: str
    palette: int


def sign_spec(index: int, seed: int = SIGN_SEED) -> SignSpec:
    """What the ``index``-th demo sign says and where it stands (cheap: no image is made)."""
    rng = np.random.default_rng([seed, index])
    photo, subject = SIGN_PHOTOS[index % len(SIGN_PHOTOS)]
    text = SIGN_TEXTS[int(rng.integers(len(SIGN_TEXTS)))]
    kind, phrase = SIGN_KINDS[int(rng.integers(len(SIGN_KINDS)))]
    return SignSpec(index, photo, text, kind, f'{subject} {phrase} "{text}"', int(rng.integers(len(PALETTES))))


def sign_sample(index: int, seed: int = SIGN_SEED) -> SignSample:
    """The ``index``-th demo sign photo (deterministic)."""
    from pipeline.demo_data import load_demo_photo

    spec = sign_spec(index, seed)
    rng = np.random.default_rng([seed, index, 1])
    panel, ink = PALETTES[spec.palette]
    fonts = sign_fonts()
    font = fonts[int(rng.integers(len(fonts)))]
    img, box, angle = compose_sign(load_demo_photo(spec.photo), spec.text, rng, font, panel, ink,
                                   banner=spec.kind == "banner")
    return SignSample(img, spec.text, spec.caption, spec.photo, font, box, angle)
