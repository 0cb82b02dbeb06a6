"""Segmenter backend: transformers' ``SamModel`` (hub-format checkpoints such as facebook/sam-vit-huge,
a local folder saved with ``save_pretrained``, or tiny-random).

Pre- and postprocessing are SAM's own (``segmenter.sam_batch`` / ``upscale_masks``, the same steps
``SamProcessor`` takes), written once so both backends treat pixels alike."""
from __future__ import annotations

import numpy as np

from pipeline.grounding.detector import pick_device
from pipeline.grounding.segmenter import Segmenter, check_inputs, sam_batch, upscale_masks
from pipeline.models.tiny import TINY, is_tiny


class TransformersSegmenter(Segmenter):
    def __init__(self, spec: str, g):
        import torch
        from transformers import SamModel

        self.device = pick_device(g.device)
        if is_tiny(spec):
            from pipeline.grounding.tiny_models import tiny_hf_sam
            self.model, self.model_id = tiny_hf_sam(), f"{TINY}:transformers-sam"
        else:
            self.model, self.model_id = SamModel.from_pretrained(spec), spec
        self.model.to(self.device).eval()
        self.size = int(self.model.config.vision_config.image_size)
        self._torch = torch

    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        boxes = check_inputs(images, boxes)
        out: list[np.ndarray | None] = [np.zeros((0, *img.shape[:2]), bool) for img in images]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        if not todo:
            return out
        # 1. image encoder: the whole batch at once
        px, resized = sam_batch([images[i] for i in todo], self.size)
        with torch.inference_mode():
            emb = self.model.get_image_embeddings(px.to(self.device))
            # 2. prompts + mask decoder: all boxes of one image in one pass
            for k, i in enumerate(todo):
                h, w = images[i].shape[:2]
                rh, rw = resized[k]
                b = boxes[i] * np.array([rw / w, rh / h, rw / w, rh / h], np.float32)
                res = self.model(image_embeddings=emb[k:k + 1],
                                 input_boxes=torch.from_numpy(b)[None].to(self.device), multimask_output=False)
                out[i] = upscale_masks(res.pred_masks[0], self.size, (rh, rw), (h, w))   # [N,1,s,s] → [N,H,W]
        return out
