"""Monocular depth by spec: ``tiny-random`` (a small DPTForDepthEstimation from config) or a hub id /
folder (``Intel/dpt-large`` in the paper profile). Shared by the depth-L1 filter and the depth
translation task.

DPT predicts relative inverse depth with an unknown scale and shift per image, so maps are compared
after ``normalise`` (min-max to [0, 1] per image)."""
from __future__ import annotations

import numpy as np

from pipeline.models.tiny import batches, check_local_path, is_tiny, seeded

TINY_IMAGE_SIZE = 64


def normalise(depth: np.ndarray) -> np.ndarray:
    d = depth.astype(np.float32)
    lo, hi = float(d.min()), float(d.max())
    return (d - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(d)


class DepthEstimator:
    def __init__(self, spec: str = "tiny-random", device: str = "cpu"):
        import torch
        from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

        if is_tiny(spec):
            with seeded(0xDE97):
                model = DPTForDepthEstimation(DPTConfig(
                    image_size=TINY_IMAGE_SIZE, patch_size=16, hidden_size=32, num_hidden_layers=4,
                    num_attention_heads=4, intermediate_size=64, backbone_out_indices=[0, 1, 2, 3],
                    neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5],
                    is_hybrid=False,
                    # the default 0.02 init leaves the ReLU head's output ~1e-10 and flat; 0.2 gives a
                    # map that varies with the image, so the filter's code path sees real contrast
                    initializer_range=0.2))
            self.processor = DPTImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
                                               keep_aspect_ratio=False)
        else:
            check_local_path(spec, "depth")
            model = DPTForDepthEstimation.from_pretrained(spec)
            self.processor = DPTImageProcessor.from_pretrained(spec)
        self.spec, self.device = spec, device
        self.model = model.to(device).eval()
        self._torch = torch

    def predict(self, images: list[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        """HxWx3 uint8 → the model's depth map per image at the model's resolution (float32)."""
        torch = self._torch
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for chunk in batches(images, batch_size, self.device):
                px = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
                d = self.model(pixel_values=px.to(self.device)).predicted_depth
                out += [x for x in d.float().cpu().numpy()]
        return out
