"""The "color" vision task (Emu Edit): the output is the input after global colour / focus filters.

Operations (each a small pure function on an HxWx3 uint8 RGB image, implemented with OpenCV):
brightness, contrast, saturation, hue, gaussian_blur, sharpen (unsharp mask), defocus (disk kernel).

``plan`` draws one or two distinct operations with parameters sampled away from identity, plus a
short human phrase per operation; the phrases go into the LLM query so the agent's instruction
describes exactly the change the pixels will show. ``make_pair`` applies the operations in order.

Answer keys: ``instruction`` and ``output_caption``. The change is global: an instruction may name
things of the caption ("so the red car leans pink") but no object the caption lacks ("make the red
car brighter" over a photo with no car), which is a counted reject
``instruction_object_not_in_caption`` (tasks/object_nouns.py).
"""
from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

from tasks import register
from tasks.base import Pair, SampleReject, Task
from tasks.object_nouns import absent_objects

OPS = ("brightness", "contrast", "saturation", "hue", "gaussian_blur", "sharpen", "defocus")
# At most one op of this group per sample: "blur then sharpen" is not an edit anyone asks for.
FOCUS_OPS = frozenset({"gaussian_blur", "sharpen", "defocus"})
P_TWO_OPS = 0.4           # probability that a sample combines two operations
P_GRAYSCALE = 0.25        # probability that a saturation op removes all colour (factor exactly 0)


# ----------------------------------------------------------------------------------------------
# Operations: pure functions, uint8 RGB in, new uint8 RGB out (the input is never modified).
# ----------------------------------------------------------------------------------------------

def _gray3(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale every pixel by ``factor`` (blend with black), saturating at 0..255."""
    return cv2.convertScaleAbs(image, alpha=float(factor), beta=0.0)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean grey level: factor < 1 flattens, > 1 spreads values away from the mean."""
    mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
    return cv2.addWeighted(image, float(factor), image, 0.0, (1.0 - float(factor)) * mean)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's own luma: 0 gives grey (equal channels), > 1 exaggerates colour."""
    return cv2.addWeighted(image, float(factor), _gray3(image), 1.0 - float(factor), 0.0)


def shift_hue(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate hue by ``degrees`` on the colour wheel; saturation and value are kept."""
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)   # H in [0, 360)
    hsv[..., 0] = np.mod(hsv[..., 0] + float(degrees), 360.0)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, ksize: int, sigma: float) -> np.ndarray:
    """Gaussian blur with an odd square kernel of side ``ksize``."""
    k = int(ksize)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"gaussian_blur ksize must be odd and positive, got {ksize}")
    return cv2.GaussianBlur(image, (k, k), float(sigma), borderType=cv2.BORDER_REFLECT_101)


def sharpen(image: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    """Unsharp mask: image + amount * (image - gaussian(image, sigma))."""
    blurred = cv2.GaussianBlur(image, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT_101)
    return cv2.addWeighted(image, 1.0 + float(amount), blurred, -float(amount), 0.0)


def disk_kernel(radius: int) -> np.ndarray:
    """Normalised flat disk (the point-spread function of an out-of-focus lens)."""
    r = int(radius)
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    cv2.circle(k, (r, r), r, 1.0, thickness=-1, lineType=cv2.LINE_AA)
    return k / k.sum()


def defocus(image: np.ndarray, radius: int) -> np.ndarray:
    """Lens defocus: convolution with a disk of the given radius."""
    if int(radius) < 1:
        raise ValueError(f"defocus radius must be >= 1, got {radius}")
    return cv2.filter2D(image, -1, disk_kernel(radius), borderType=cv2.BORDER_REFLECT_101)


def _apply_brightness(img, op):
    return adjust_brightness(img, op["factor"])


def _apply_contrast(img, op):
    return adjust_contrast(img, op["factor"])


def _apply_saturation(img, op):
    return adjust_saturation(img, op["factor"])


def _apply_hue(img, op):
    return shift_hue(img, op["degrees"])


def _apply_gaussian_blur(img, op):
    return gaussian_blur(img, op["ksize"], op["sigma"])


def _apply_sharpen(img, op):
    return sharpen(img, op["amount"], op["sigma"])


def _apply_defocus(img, op):
    return defocus(img, op["radius"])


APPLY: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "brightness": _apply_brightness, "contrast": _apply_contrast, "saturation": _apply_saturation,
    "hue": _apply_hue, "gaussian_blur": _apply_gaussian_blur, "sharpen": _apply_sharpen,
    "defocus": _apply_defocus,
}


def apply_op(image: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    name = op.get("op")
    if name not in APPLY:
        raise ValueError(f"unknown color op {name!r}")
    return APPLY[name](image, op)


# ----------------------------------------------------------------------------------------------
# Sampling: parameters away from identity, and the human phrase for each.
# ----------------------------------------------------------------------------------------------

def _two_sided(rng: np.random.Generator, low: tuple[float, float], high: tuple[float, float]) -> float:
    lo, hi = low if rng.random() < 0.5 else high
    return float(rng.uniform(lo, hi))


def _phrase_brightness(f: float) -> str:
    if f < 0.6:
        return "make it much darker"
    if f < 1.0:
        return "make it darker"
    if f < 1.5:
        return "make it brighter"
    return "make it much brighter"


def _phrase_contrast(f: float) -> str:
    if f < 0.6:
        return "lower the contrast a lot, flat and washed out"
    if f < 1.0:
        return "lower the contrast"
    if f < 1.6:
        return "raise the contrast"
    return "raise the contrast a lot, punchy and harsh"


def _phrase_saturation(f: float) -> str:
    if f == 0.0:
        return "remove all colour, black and white"
    if f < 0.3:
        return "drain almost all colour"
    if f < 1.0:
        return "mute the colours"
    if f < 1.8:
        return "make the colours more vivid"
    return "make the colours extremely saturated"


def _phrase_hue(d: float) -> str:
    if abs(d) >= 110:
        return "shift the hues to near-opposite colours"
    if d > 0:
        return ("shift the hues slightly, reds toward orange" if d < 50
                else "shift the hues strongly, reds toward yellow-green and blues toward purple")
    return ("shift the hues slightly, reds toward pink" if d > -50
            else "shift the hues strongly, reds toward magenta and blues toward teal")


def _phrase_gaussian_blur(k: int) -> str:
    if k <= 9:
        return "add a slight blur"
    if k <= 19:
        return "blur it noticeably"
    return "add a strong blur"


def _phrase_sharpen(amount: float) -> str:
    return "sharpen the details" if amount < 1.5 else "sharpen it strongly, crisp hard edges"


def _phrase_defocus(r: int) -> str:
    if r <= 5:
        return "make it slightly out of focus"
    if r <= 8:
        return "throw it out of focus"
    return "make it badly out of focus, like a missed lens focus"


# Every phrase ``plan`` can emit, by op (the prompt exemplars are checked against this table).
PHRASES: dict[str, tuple[str, ...]] = {
    "brightness": tuple(_phrase_brightness(f) for f in (0.5, 0.7, 1.3, 1.7)),
    "contrast": tuple(_phrase_contrast(f) for f in (0.5, 0.7, 1.4, 1.8)),
    "saturation": tuple(_phrase_saturation(f) for f in (0.0, 0.2, 0.5, 1.5, 2.0)),
    "hue": tuple(dict.fromkeys(_phrase_hue(d) for d in (30, 80, 140, -30, -80, -140))),
    "gaussian_blur": tuple(_phrase_gaussian_blur(k) for k in (7, 15, 25)),
    "sharpen": tuple(_phrase_sharpen(a) for a in (1.0, 2.0)),
    "defocus": tuple(_phrase_defocus(r) for r in (4, 7, 10)),
}
PHRASE_TO_OP: dict[str, str] = {p: op for op, ps in PHRASES.items() for p in ps}


def sample_op(rng: np.random.Generator, name: str) -> dict[str, Any]:
    """Draw the parameters of one operation; floats rounded so plans print and hash cleanly."""
    if name == "brightness":
        f = round(_two_sided(rng, (0.45, 0.8), (1.25, 1.8)), 3)
        return {"op": name, "factor": f, "phrase": _phrase_brightness(f)}
    if name == "contrast":
        f = round(_two_sided(rng, (0.4, 0.75), (1.3, 2.0)), 3)
        return {"op": name, "factor": f, "phrase": _phrase_contrast(f)}
    if name == "saturation":
        if rng.random() < P_GRAYSCALE:
            f = 0.0
        else:
            f = round(_two_sided(rng, (0.05, 0.6), (1.4, 2.2)), 3)
        return {"op": name, "factor": f, "phrase": _phrase_saturation(f)}
    if name == "hue":
        d = round(float(rng.uniform(20.0, 160.0)) * (1 if rng.random() < 0.5 else -1), 1)
        return {"op": name, "degrees": d, "phrase": _phrase_hue(d)}
    if name == "gaussian_blur":
        k = int(rng.integers(2, 16)) * 2 + 1                       # odd, 5..31
        sigma = round(k / 6.0 * float(rng.uniform(0.7, 1.0)), 3)   # kernel spans about ±3 sigma
        return {"op": name, "ksize": k, "sigma": sigma, "phrase": _phrase_gaussian_blur(k)}
    if name == "sharpen":
        a = round(float(rng.uniform(0.8, 2.5)), 3)
        s = round(float(rng.uniform(1.0, 3.0)), 3)
        return {"op": name, "amount": a, "sigma": s, "phrase": _phrase_sharpen(a)}
    if name == "defocus":
        r = int(rng.integers(3, 13))                                # 3..12
        return {"op": name, "radius": r, "phrase": _phrase_defocus(r)}
    raise ValueError(f"unknown color op {name!r}")


def sample_plan(rng: np.random.Generator) -> dict[str, Any]:
    n = 2 if rng.random() < P_TWO_OPS else 1
    first = OPS[int(rng.integers(len(OPS)))]
    names = [first]
    if n == 2:
        allowed = [o for o in OPS if o != first and not (o in FOCUS_OPS and first in FOCUS_OPS)]
        names.append(allowed[int(rng.integers(len(allowed)))])
    return {"ops": [sample_op(rng, name) for name in names]}


def render_query(caption: str, phrases: list[str]) -> str:
    return f"Caption: {caption.strip()}\nChange: {'; '.join(phrases)}"


@register
class ColorTask(Task):
    name = "color"
    stage = "cpu"
    needs_input_image = True
    prompt_file = "color.yaml"

    def plan(self, rng: np.random.Generator, caption: str) -> dict[str, Any]:
        return sample_plan(rng)

    def llm_query(self, caption: str, plan: dict[str, Any]) -> str:
        return render_query(caption, [op["phrase"] for op in plan["ops"]])

    def check_answer(self, caption: str, answer: dict[str, Any], plan: dict[str, Any]) -> str | None:
        from tasks.color_words import color_instruction_issue

        if absent_objects(str(answer.get("instruction") or ""), caption):
            return "instruction_object_not_in_caption"
        issue = color_instruction_issue(answer.get("instruction") or "", plan.get("ops") or [])
        return issue[0] if issue else None

    def make_pair(self, image: np.ndarray, answer: dict[str, Any], plan: dict[str, Any],
                  rng: np.random.Generator) -> Pair:
        # 1. check inputs
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or min(image.shape[:2]) < 8:
            raise SampleReject("bad_input_image",
                               f"want HxWx3 uint8, got {getattr(image, 'shape', None)} "
                               f"{getattr(image, 'dtype', None)}")
        ops = plan.get("ops") if isinstance(plan, dict) else None
        if not ops or any(not isinstance(op, dict) or op.get("op") not in APPLY for op in ops):
            raise SampleReject("bad_plan", repr(plan)[:200])
        # 2. apply the operations in order (deterministic: the plan holds every parameter)
        out = np.ascontiguousarray(image)
        try:
            for op in ops:
                out = apply_op(out, op)
        except (KeyError, ValueError, cv2.error) as e:
            raise SampleReject("bad_plan", str(e)[:200]) from e
        # 3. the pair; params carry the full parameters of every op
        return Pair(input_image=image, output_image=out,
                    params={"ops": [dict(op) for op in ops]})
