"""The segmenter interface (box prompts → object masks) and the backend factory.

Both backends run SAM:
  * ``segment-anything`` — Meta's package and its ``.pth`` checkpoints, through ``SamPredictor``
    (``segmenter_sa.py``);
  * ``transformers`` — ``SamModel`` (hub-format checkpoints, tiny-random) (``segmenter_hf.py``).

Batching: the image encoder (nearly all of SAM's cost) runs once for all images of a call; the
prompt encoder and mask decoder then take all boxes of one image in one pass.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)


class Segmenter(ABC):
    model_id: str = ""
    spec: str = ""                          # what it was built from (models.segmenter), for provenance

    @abstractmethod
    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """images: HxWx3 uint8 RGB; boxes[i]: [N_i, 4] x0, y0, x1, y1 in pixels of images[i].
        Returns per image a bool array [N_i, H, W]: one mask per box."""


def check_inputs(images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
    out = []
    for img, b in zip(images, boxes):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"segmenter wants HxWx3 uint8 RGB images, got {img.shape} {img.dtype}")
        b = np.asarray(b, np.float32).reshape(-1, 4)
        out.append(b)
    return out


def resize_longest(img: np.ndarray, size: int) -> np.ndarray:
    """SAM's ResizeLongestSide: longer side → size (rounded as SAM rounds), bilinear via PIL."""
    from PIL import Image

    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = int(h * s + 0.5), int(w * s + 0.5)
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))


def sam_batch(images: list[np.ndarray], size: int):
    """SAM's preprocessing for a batch: resize, normalise, pad right/bottom to size x size.
    Returns (pixel_values [B,3,S,S] float32 tensor, resized (h, w) per image)."""
    import torch

    px = np.zeros((len(images), 3, size, size), np.float32)
    sizes = []
    for i, img in enumerate(images):
        r = resize_longest(img, size)
        h, w = r.shape[:2]
        px[i, :, :h, :w] = ((r.astype(np.float32) - SAM_PIXEL_MEAN) / SAM_PIXEL_STD).transpose(2, 0, 1)
        sizes.append((h, w))
    return torch.from_numpy(px), sizes


def upscale_masks(low_res, size: int, resized_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """SAM's postprocess_masks: low-res logits [N,1,s,s] → padded input size → crop → original
    size → bool [N, H, W]."""
    import torch.nn.functional as F

    m = F.interpolate(low_res.float(), (size, size), mode="bilinear", align_corners=False)
    m = m[..., :resized_hw[0], :resized_hw[1]]
    m = F.interpolate(m, orig_hw, mode="bilinear", align_corners=False)
    return (m[:, 0] > 0).cpu().numpy()


def _is_pth(spec: str) -> bool:
    return spec.endswith((".pth", ".pt"))


def build_segmenter(spec: str, cfg=None) -> Segmenter:
    """The segmenter named by ``spec`` (JobConfig.models.segmenter: "tiny-random", a hub id or folder,
    or a segment-anything ``.pth``); ``cfg`` is the JobConfig or its GroundingConfig."""
    from pipeline.grounding.detector import grounding_cfg
    from pipeline.models.tiny import check_local_path, is_tiny

    g = grounding_cfg(cfg)
    backend = g.segmenter_backend
    if backend == "auto":
        backend = "segment-anything" if (spec and _is_pth(spec)) else "transformers"
    if not is_tiny(spec):
        check_local_path(spec, "segmenter")
    if backend == "segment-anything":
        from pipeline.grounding.segmenter_sa import SegmentAnythingSegmenter
        seg = SegmentAnythingSegmenter(spec, g)
    else:
        from pipeline.grounding.segmenter_hf import TransformersSegmenter
        seg = TransformersSegmenter(spec, g)
    seg.spec = spec or "tiny-random"
    return seg
