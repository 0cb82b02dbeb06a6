"""The detector interface (open-vocabulary boxes for text phrases) and what its backends share.

Both backends run Grounding DINO; they differ only in where the weights come from:
  * ``transformers`` — ``GroundingDinoForObjectDetection`` (hub-format checkpoints, tiny-random);
  * ``groundingdino`` — the original ``groundingdino-py`` package and its ``.pth`` checkpoints
    (``detector_gdino.py``, with a compatibility layer for transformers 5).

Batching: every image of a call is letterboxed to the same square (longer side resized to
``detector_image_size``, the rest padded and masked out), so the tensors of a batch are exactly the
tensors each image gets alone, and a batch gives the boxes one-by-one calls give. All phrases of an
image go into one caption ("a dog . the frisbee ."), as Grounding DINO is trained: its text
encoder attends within each phrase, but image-text fusion and query selection see every phrase,
so an image's boxes depend on its phrase list (the same list gives the same boxes, batched or not).

Phrases and boxes: a box's score for a phrase is the highest sigmoid score over the phrase's
tokens. A box belongs to its best phrase; it is kept when that score is above ``box_threshold`` and
above ``text_threshold`` (Grounding DINO itself labels a box with the tokens above
``text_threshold``; with one phrase per caption segment this is the same decision).
Then per phrase: non-maximum suppression at ``nms_iou``; per image: best ``max_detections``.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
REAL_IMAGE_SIZE = 800          # Grounding DINO's training resolution (shorter side 800)
TINY_IMAGE_SIZE = 96


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels of the given image
    score: float
    phrase: str                              # which of the image's phrases it belongs to


class Detector(ABC):
    """Both Grounding DINO backends share every step but the forward pass: captions and the
    tokens of each phrase, letterboxing, thresholds / phrase attribution / NMS (``decode``)."""
    model_id: str = ""
    spec: str = ""                          # what it was built from (models.detector), for provenance
    tokenizer: Any
    max_len: int
    size: int
    g: Any

    def detect(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[list[Detection]]:
        """images: HxWx3 uint8 RGB; phrases[i]: the phrases to look for in images[i]. Returns per
        image the detections above the box/text thresholds, best score first."""
        if len(images) != len(phrases):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
        out: list[list[Detection]] = [[] for _ in images]
        if not images:
            return out
        # 1. captions and which tokens belong to which phrase
        caps, spans = zip(*(build_caption(p) for p in phrases))
        todo = [i for i, c in enumerate(caps) if c]          # an image with no phrase has nothing to find
        if not todo:
            return out
        images = [images[i] for i in todo]
        caps, spans = [caps[i] for i in todo], [spans[i] for i in todo]
        tokens = phrase_token_index(self.tokenizer, caps, spans, self.max_len)
        # 2. one forward pass for the whole batch
        px, valid = letterbox(images, self.size)
        prob, boxes = self._forward(px, valid, caps)
        # 3. thresholds, phrase attribution, NMS
        for k, (i, img) in enumerate(zip(todo, images)):
            out[i] = decode(prob[k], boxes[k], tokens[k], img.shape[:2], self.g)
        return out

    def _forward(self, px, valid, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Letterboxed pixels [B,3,S,S], valid-pixel mask [B,S,S] and captions → token
        probabilities [B, Q, max_text_len] and boxes [B, Q, 4] (cx, cy, w, h, relative).
        A backend implements this; a detector that is not Grounding DINO overrides ``detect``."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _forward nor detect")


# ------------------------------------------------------------------------------------------------
# shared by the backends
# ------------------------------------------------------------------------------------------------

def grounding_cfg(cfg: Any):
    """Accept a JobConfig (its ``grounding`` block), a GroundingConfig, or None (defaults)."""
    from pipeline.grounding.config import GroundingConfig
    if cfg is None:
        return GroundingConfig()
    return getattr(cfg, "grounding", cfg)


def pick_device(name: str):
    import torch

    from pipeline.models.device import resolve_device
    return torch.device(resolve_device(name))


def letterbox(images: list[np.ndarray], size: int):
    """(pixel_values [B,3,S,S] float32 ImageNet-normalised, valid [B,S,S] bool). The longer side of
    each image becomes ``size``; padding (right and bottom) is marked invalid."""
    import cv2
    import torch

    px = np.zeros((len(images), 3, size, size), np.float32)
    valid = np.zeros((len(images), size, size), bool)
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"detector wants HxWx3 uint8 RGB images, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA)
        px[i, :, :nh, :nw] = ((r.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
        valid[i, :nh, :nw] = True
    return torch.from_numpy(px), torch.from_numpy(valid)


def clean_phrase(p: str) -> str:
    """Grounding DINO separates phrases with " ." and lowercases; a "." or "?" inside a phrase
    would split it, so they become spaces."""
    return " ".join(p.replace(".", " ").replace("?", " ").lower().split())


def build_caption(phrases: list[str]) -> tuple[str, list[tuple[str, int, int]]]:
    """Caption "p1 . p2 ." and each distinct phrase's character span [start, end)."""
    caption, spans, seen = "", [], set()
    for p in phrases:
        c = clean_phrase(p)
        if not c or c in seen:
            continue
        seen.add(c)
        spans.append((p, len(caption), len(caption) + len(c)))
        caption += c + " . "
    return caption.strip(), spans


def phrase_token_index(tokenizer, captions: list[str], spans: list[list[tuple[str, int, int]]],
                       max_len: int) -> list[list[tuple[str, list[int]]]]:
    """For each caption, each phrase's token positions (as the model sees them, [CLS] at 0)."""
    out = []
    for cap, sp in zip(captions, spans):
        offsets = tokenizer(cap, return_offsets_mapping=True, truncation=True, max_length=max_len)["offset_mapping"]
        per = []
        for phrase, s, e in sp:
            idx = [j for j, (a, b) in enumerate(offsets) if b > a and a >= s and b <= e]
            if idx:
                per.append((phrase, idx))
        out.append(per)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x1, y1 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: np.clip(z[..., 2] - z[..., 0], 0, None) * np.clip(z[..., 3] - z[..., 1], 0, None)
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        if order:
            rest = np.array(order)
            order = [j for j, o in zip(order, _iou(boxes[i], boxes[rest])) if o <= iou]
    return keep


def decode(prob: np.ndarray, boxes_cxcywh: np.ndarray, phrase_tokens: list[tuple[str, list[int]]],
           size_hw: tuple[int, int], g) -> list[Detection]:
    """One image: prob [Q, T] token scores (sigmoid), boxes [Q, 4] normalised to the image →
    detections above threshold, per-phrase NMS, best first."""
    if not phrase_tokens:
        return []
    h, w = size_hw
    per_phrase = np.stack([prob[:, idx].max(axis=1) for _, idx in phrase_tokens], axis=1)   # [Q, P]
    best = per_phrase.argmax(axis=1)
    score = per_phrase[np.arange(len(best)), best]
    keep = score > max(g.box_threshold, g.text_threshold)
    cx, cy, bw, bh = boxes_cxcywh.T
    xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], axis=1)
    xyxy = np.clip(xyxy, 0, [w, h, w, h])
    dets: list[Detection] = []
    for k, (phrase, _) in enumerate(phrase_tokens):
        q = np.flatnonzero(keep & (best == k) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1]))
        for i in (q[j] for j in nms(xyxy[q], score[q], g.nms_iou)):
            dets.append(Detection(box=tuple(round(float(v), 2) for v in xyxy[i]), score=float(score[i]), phrase=phrase))
    dets.sort(key=lambda d: -d.score)
    return dets[:g.max_detections]


def _is_pth(spec: str) -> bool:
    return spec.endswith((".pth", ".pt", ".safetensors"))     # a groundingdino-py checkpoint file


def build_detector(spec: str, cfg=None) -> Detector:
    """The detector named by ``spec`` (JobConfig.models.detector: "tiny-random", a hub id or folder,
    or a groundingdino-py ``.pth``); ``cfg`` is the JobConfig or its GroundingConfig."""
    from pipeline.models.tiny import check_local_path, is_tiny

    g = grounding_cfg(cfg)
    backend = g.detector_backend
    if backend == "auto":
        backend = "groundingdino" if (spec and _is_pth(spec)) else "transformers"
    if not is_tiny(spec):
        check_local_path(spec, "detector")
    if backend == "groundingdino":
        from pipeline.grounding.detector_gdino import GroundingDinoPyDetector
        det = GroundingDinoPyDetector(spec, g)
    else:
        from pipeline.grounding.detector_hf import TransformersDetector
        det = TransformersDetector(spec, g)
    det.spec = spec or "tiny-random"
    return det


def detector_refs(det: Detector) -> dict[str, str]:
    """provenance.models entries of a detector: the checkpoint, and groundingdino-py's BERT folder."""
    from pipeline.models.provenance import model_ref

    if not det.spec:                        # not built by build_detector (a test's stand-in)
        return {}
    refs = {"detector": model_ref(det.spec, det)}
    text_dir = getattr(getattr(det, "g", None), "text_encoder_dir", None)
    if type(det).__name__ == "GroundingDinoPyDetector" and text_dir:
        refs["detector_text_encoder"] = model_ref(text_dir)
    return refs
