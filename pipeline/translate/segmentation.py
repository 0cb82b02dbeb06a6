"""Segmentation maps: a transformers semantic segmentation model (``models.segmentation``;
SegFormer by default, any ``AutoModelForSemanticSegmentation`` checkpoint such as UperNet works)
labels every pixel with a class; the label map is coloured with one fixed palette.

Why a semantic segmenter and not the grounding stage's SAM: a segmentation *map* names every region
of the scene with a class (the ADE20K maps image generators are conditioned on), while SAM cuts out
one prompted object with no class at all; covering a scene with SAM needs a grid of prompts and
still gives no labels.
"""
from __future__ import annotations

import numpy as np

from pipeline.models.device import to_cpu
from pipeline.models.tiny import check_local_path, is_tiny, seeded
from pipeline.translate.config import SegmentationMapConfig
from pipeline.translate.maps import MapResult
from tasks.base import SampleReject

TINY_SIZE = 64
TINY_LABELS = 150               # ADE20K's class count, like the production checkpoint
SEED_TINY_SEG = 0x5E65
PALETTE_NAME = "pairforge-256-v1"
MAX_LISTED = 32                 # params list the largest classes only


def make_palette(n: int = 256) -> np.ndarray:
    """A fixed palette: class i always gets colour i, in every job and every version (its name is in
    the params). Bright, well separated colours from a seeded generator; class order is irrelevant."""
    rng = np.random.default_rng(0x9A1E77E)
    return rng.integers(40, 256, size=(n, 3), dtype=np.uint8)


PALETTE = make_palette()


def colourise(labels: np.ndarray) -> np.ndarray:
    return PALETTE[labels.astype(np.int64) % len(PALETTE)]


def tiny_segformer():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[16, 32],
                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                          decoder_hidden_size=32, num_labels=TINY_LABELS,
                          # a wider init than 0.02 gives fewer, larger regions that follow the image
                          initializer_range=0.2)
    with seeded(SEED_TINY_SEG):
        return SegformerForSemanticSegmentation(cfg).eval()


class SegmentationAnnotator:
    def __init__(self, spec: str, cfg: SegmentationMapConfig, device: str = "cpu"):
        import torch

        if is_tiny(spec):
            from transformers import SegformerImageProcessor
            self.model = tiny_segformer()
            self.processor = SegformerImageProcessor(size={"height": TINY_SIZE, "width": TINY_SIZE})
            self.model_id = "tiny-random-segformer"
        else:
            from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
            check_local_path(spec, "segmentation")
            self.model = AutoModelForSemanticSegmentation.from_pretrained(spec).eval()
            self.processor = AutoImageProcessor.from_pretrained(spec)
            self.model_id = spec
        self.model.to(device)
        self.cfg, self._torch, self.device = cfg, torch, device

    def labels(self, image: np.ndarray) -> np.ndarray:
        """HxW class ids at the photo's size."""
        torch = self._torch
        inputs = self.processor(images=[image], return_tensors="pt")
        with torch.inference_mode():
            out = to_cpu(self.model(pixel_values=inputs["pixel_values"].to(self.device)))
        return self.processor.post_process_semantic_segmentation(out, target_sizes=[image.shape[:2]])[0].numpy()

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MapResult:
        lab = self.labels(image)
        ids, counts = np.unique(lab, return_counts=True)
        if len(ids) < self.cfg.min_labels:
            raise SampleReject("empty_map", f"segmentation has {len(ids)} class(es) "
                               f"(< translation.segmentation.min_labels={self.cfg.min_labels})")
        order = np.argsort(-counts)
        names = self.model.config.id2label
        classes = [{"id": int(ids[i]), "label": names.get(int(ids[i]), str(ids[i])),
                    "fraction": round(float(counts[i]) / lab.size, 4)} for i in order[:MAX_LISTED]]
        return MapResult(colourise(lab), {"annotator": "semantic_segmentation", "model": self.model_id,
                                          "palette": PALETTE_NAME, "num_classes": int(len(ids)), "classes": classes})
