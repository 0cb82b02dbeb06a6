"""The paper's automatic metrics, in one place for the filters and the trainer's evaluation.

  CLIP_dir  cosine between the change in CLIP image embeddings (output − input) and the change in
            CLIP text embeddings (output caption − input caption) — did the image move the way the
            captions say;
  CLIP_img  cosine between the CLIP embeddings of input and output image — how much was kept;
  CLIP_out  cosine between the output image and the output caption;
  L1        mean absolute pixel difference, images scaled to [0, 1];
  DINO      cosine between the DINO [CLS] embeddings of input and output image (``models.dino``:
            DINO ViT, or EfficientNet-Lite0 features in the embedded default — pipeline/models/dino.py).

``MetricModels`` loads the encoders once; ``compute`` scores many pairs in batched encoder calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    return np.sum(_unit(a) * _unit(b), axis=-1)


def clip_dir(img_in: np.ndarray, img_out: np.ndarray, cap_in: np.ndarray, cap_out: np.ndarray) -> np.ndarray:
    return cosine_rows(img_out - img_in, cap_out - cap_in)


def clip_img(img_in: np.ndarray, img_out: np.ndarray) -> np.ndarray:
    return cosine_rows(img_in, img_out)


def clip_out(img_out: np.ndarray, cap_out: np.ndarray) -> np.ndarray:
    return cosine_rows(img_out, cap_out)


def l1(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a − b| over pixels and channels of two uint8 images, in [0, 1]."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() / 255.0)


@dataclass
class PairText:
    input_caption: str
    output_caption: str


class MetricModels:
    """CLIP and DINO encoders by spec (``tiny-random`` or a checkpoint), loaded once."""

    def __init__(self, clip: str = "tiny-random", dino: str | None = "tiny-random", device: str = "cpu"):
        from pipeline.models.clip import ClipEncoder
        from pipeline.models.dino import image_similarity_encoder

        self.clip = ClipEncoder(clip, device)
        self.dino = image_similarity_encoder(dino, device) if dino else None

    def compute(self, inputs: list[np.ndarray], outputs: list[np.ndarray], input_captions: list[str],
                output_captions: list[str]) -> list[dict[str, float]]:
        """Scores per pair: clip_dir, clip_img, clip_out, l1 (and dino when a DINO model is set).
        Identical images or captions give a zero direction, hence clip_dir 0."""
        n = len(inputs)
        if not (len(outputs) == len(input_captions) == len(output_captions) == n):
            raise ValueError("inputs, outputs and both caption lists must have one entry per pair")
        if n == 0:
            return []
        # unique images/captions once: candidates of one sample share their input and captions
        imgs, img_idx = _dedupe_images(list(inputs) + list(outputs))
        e_img = self.clip.images(imgs)[img_idx]
        caps = list(input_captions) + list(output_captions)
        uniq = sorted(set(caps))
        e_txt_u = self.clip.texts(uniq)
        e_txt = e_txt_u[[uniq.index(c) for c in caps]]
        ei, eo, ti, to = e_img[:n], e_img[n:], e_txt[:n], e_txt[n:]
        scores = {"clip_dir": clip_dir(ei, eo, ti, to), "clip_img": clip_img(ei, eo), "clip_out": clip_out(eo, to)}
        if self.dino is not None:
            d = self.dino.images(imgs)[img_idx]
            scores["dino"] = cosine_rows(d[:n], d[n:])
        out = []
        for i in range(n):
            s = {k: float(np.nan_to_num(v[i])) for k, v in scores.items()}
            s["l1"] = l1(inputs[i], outputs[i])
            out.append(s)
        return out


def _dedupe_images(images: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    seen: dict[tuple, int] = {}
    uniq, idx = [], []
    for im in images:
        key = (im.shape, hash(im.tobytes()))
        if key not in seen:
            seen[key] = len(uniq)
            uniq.append(im)
        idx.append(seen[key])
    return uniq, np.asarray(idx)
