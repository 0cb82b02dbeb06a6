"""Detector backend: transformers' ``GroundingDinoForObjectDetection`` (hub-format checkpoints such
as IDEA-Research/grounding-dino-base, a local folder saved with ``save_pretrained``, or tiny-random).

Images are prepared by ``detector.letterbox`` rather than ``GroundingDinoProcessor``: the processor
pads each batch to its largest image, so an image's tensor (and its boxes) would depend on which
other images share its batch."""
from __future__ import annotations

import numpy as np

from pipeline.grounding.detector import (REAL_IMAGE_SIZE, TINY_IMAGE_SIZE, Detection, Detector, build_caption,
                                         decode, letterbox, phrase_token_index, pick_device)
from pipeline.models.tiny import TINY, is_tiny


class TransformersDetector(Detector):
    def __init__(self, spec: str, g):
        import torch
        from transformers import AutoTokenizer, GroundingDinoForObjectDetection

        self.g = g
        self.device = pick_device(g.device)
        if is_tiny(spec):
            from pipeline.grounding.tiny_models import tiny_hf_grounding_dino
            from pipeline.models.tiny import tiny_tokenizer
            self.model, self.tokenizer = tiny_hf_grounding_dino(), tiny_tokenizer()
            self.model_id = f"{TINY}:transformers-grounding-dino"
            default_size = TINY_IMAGE_SIZE
        else:
            self.model = GroundingDinoForObjectDetection.from_pretrained(spec)
            self.tokenizer = AutoTokenizer.from_pretrained(spec)
            self.model_id = spec
            default_size = REAL_IMAGE_SIZE
        self.model.to(self.device).eval()
        self.size = g.detector_image_size or default_size
        self.max_len = int(self.model.config.max_text_len)
        self._torch = torch

    def detect(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[list[Detection]]:
        if len(images) != len(phrases):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
        if not images:
            return []
        torch = self._torch
        # 1. captions and which tokens belong to which phrase
        caps, spans = zip(*(build_caption(p) for p in phrases))
        out: list[list[Detection]] = [[] for _ in images]
        todo = [i for i, c in enumerate(caps) if c]          # an image with no phrase has nothing to find
        if not todo:
            return out
        images = [images[i] for i in todo]
        caps, spans = [caps[i] for i in todo], [spans[i] for i in todo]
        tokens = phrase_token_index(self.tokenizer, caps, spans, self.max_len)
        # 2. one forward pass for the whole batch
        px, valid = letterbox(images, self.size)
        enc = self.tokenizer(caps, padding="longest", truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        with torch.inference_mode():
            res = self.model(pixel_values=px.to(self.device), pixel_mask=valid.long().to(self.device),
                             input_ids=enc["input_ids"].to(self.device),
                             attention_mask=enc["attention_mask"].to(self.device),
                             token_type_ids=enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])).to(self.device))
        prob = res.logits.sigmoid().float().cpu().numpy()        # [B, Q, max_text_len]; -inf → 0 past the text
        boxes = res.pred_boxes.float().cpu().numpy()             # [B, Q, 4] cx cy w h, relative to the image
        # 3. thresholds, phrase attribution, NMS
        for k, (i, img) in enumerate(zip(todo, images)):
            out[i] = decode(prob[k], boxes[k], tokens[k], img.shape[:2], self.g)
        return out
