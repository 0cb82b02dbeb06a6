"""Detector backend: transformers' ``GroundingDinoForObjectDetection`` (hub-format checkpoints such
as IDEA-Research/grounding-dino-base, a local folder saved with ``save_pretrained``, or tiny-random).

Images are prepared by ``detector.letterbox`` rather than ``GroundingDinoProcessor``: the processor
pads each batch to its largest image, so an image's tensor (and its boxes) would depend on which
other images share its batch."""
from __future__ import annotations


from pipeline.grounding.detector import REAL_IMAGE_SIZE, TINY_IMAGE_SIZE, Detector, pick_device
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

    def _forward(self, px, valid, caps):
        torch = self._torch
        enc = self.tokenizer(caps, padding="longest", truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        with torch.inference_mode():
            res = self.model(pixel_values=px.to(self.device), pixel_mask=valid.long().to(self.device),
                             input_ids=enc["input_ids"].to(self.device),
                             attention_mask=enc["attention_mask"].to(self.device),
                             token_type_ids=enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])).to(self.device))
        prob = res.logits.sigmoid().float().cpu().numpy()        # [B, Q, max_text_len]; -inf → 0 past the text
        return prob, res.pred_boxes.float().cpu().numpy()        # [B, Q, 4] cx cy w h, relative to the image
