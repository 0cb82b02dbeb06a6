"""Segmenter backend: Meta's ``segment-anything`` package with its original ``.pth`` checkpoints
(sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth), through ``SamPredictor``.

Loading is the package's own: the architecture from ``sam_model_registry[type]`` (type from
``grounding.segmenter_type`` or the file name), then the file's state dict. ``tiny`` is one more
architecture in that table (``tiny_models.tiny_sa_sam``), so a tiny checkpoint saved in the same
format loads by path through the same lines as a real one.

``SamPredictor`` embeds one image per ``set_image``; here the image encoder runs once over the
whole batch (with the predictor's own transform and ``Sam.preprocess``) and each image's slice of
the features is handed to the predictor, whose ``predict_torch`` then takes all boxes at once.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.grounding.detector import pick_device
from pipeline.grounding.segmenter import Segmenter, check_inputs
from pipeline.models.tiny import TINY, is_tiny

ARCHS = ("vit_h", "vit_l", "vit_b", "tiny")


def sam_architecture(name: str):
    """A randomly initialised ``Sam`` of the named architecture (weights come from the file)."""
    if name == "tiny":
        from pipeline.grounding.tiny_models import tiny_sa_sam
        return tiny_sa_sam()
    from segment_anything import sam_model_registry
    return sam_model_registry[name](checkpoint=None)


def infer_type(path: str, configured: str | None) -> str:
    if configured:
        if configured not in ARCHS:
            raise ValueError(f"grounding.segmenter_type: {configured!r} is not one of {', '.join(ARCHS)}")
        return configured
    m = re.search(r"vit_([hlb])|(tiny)", Path(path).name.lower())
    if not m:
        raise ValueError(f"models.segmenter: cannot tell the SAM architecture from {Path(path).name!r}; "
                         f"set grounding.segmenter_type to one of {', '.join(ARCHS)}")
    return f"vit_{m.group(1)}" if m.group(1) else "tiny"


def load_sam_checkpoint(path: str, arch: str):
    import torch
    sam = sam_architecture(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    sam.load_state_dict(state)
    return sam.eval()


class SegmentAnythingSegmenter(Segmenter):
    def __init__(self, spec: str, g):
        import torch
        from segment_anything import SamPredictor

        self.device = pick_device(g.device)
        if is_tiny(spec):
            from pipeline.grounding.tiny_models import tiny_sa_sam
            sam, self.model_id = tiny_sa_sam(), f"{TINY}:segment-anything"
        else:
            arch = infer_type(spec, g.segmenter_type)
            sam, self.model_id = load_sam_checkpoint(spec, arch), f"{spec} ({arch})"
        self.sam = sam.to(self.device).eval()
        self.predictor = SamPredictor(self.sam)
        self._torch = torch

    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        boxes = check_inputs(images, boxes)
        out = [np.zeros((0, *img.shape[:2]), bool) for img in images]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        if not todo:
            return out
        p, sam = self.predictor, self.sam
        # 1. the predictor's transform, Sam.preprocess, one encoder pass for the batch
        inputs = [p.transform.apply_image(images[i]) for i in todo]
        x = torch.cat([sam.preprocess(torch.as_tensor(t, device=self.device).permute(2, 0, 1)[None].float())
                       for t in inputs])
        with torch.inference_mode():
            feats = sam.image_encoder(x)
            # 2. per image: hand the predictor its features, then all boxes in one predict_torch
            for k, i in enumerate(todo):
                p.reset_image()
                p.original_size, p.input_size = images[i].shape[:2], tuple(inputs[k].shape[:2])
                p.features, p.is_image_set = feats[k:k + 1], True
                b = p.transform.apply_boxes_torch(torch.from_numpy(boxes[i]).to(self.device), p.original_size)
                masks, _, _ = p.predict_torch(point_coords=None, point_labels=None, boxes=b, multimask_output=False)
                out[i] = masks[:, 0].cpu().numpy()
        p.reset_image()
        return out
