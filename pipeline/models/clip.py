"""CLIP by spec: ``tiny-random`` (a 2-layer CLIPModel from config, offline tokenizer) or a hub id /
local folder (e.g. ``openai/clip-vit-large-patch14`` in the paper profile).

``ClipEncoder`` exposes only what the metrics need: unit-length image and text embeddings in the
shared CLIP space, batched."""
from __future__ import annotations

import numpy as np

from pipeline.models.tiny import batches, check_local_path, is_tiny, seeded, tiny_tokenizer

TINY_IMAGE_SIZE = 64


def _tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = tiny_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=tok.model_max_length,
                eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id)
    vision = dict(image_size=TINY_IMAGE_SIZE, patch_size=16, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4)
    with seeded(0xC11F):
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    proc = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE},
                              crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return model, tok, proc


class ClipEncoder:
    def __init__(self, spec: str = "tiny-random", device: str = "cpu"):
        import torch
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        if is_tiny(spec):
            model, self.tokenizer, self.processor = _tiny_clip()
        else:
            check_local_path(spec, "clip")
            model = CLIPModel.from_pretrained(spec)
            self.tokenizer = AutoTokenizer.from_pretrained(spec)
            self.processor = CLIPImageProcessor.from_pretrained(spec)
        self.spec, self.device = spec, device
        self.model = model.to(device).eval()
        self._torch = torch

    def images(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """HxWx3 uint8 RGB images → (N, D) unit vectors."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for chunk in batches(images, batch_size, self.device):
                px = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
                f = self.model.get_image_features(pixel_values=px.to(self.device))
                f = getattr(f, "pooler_output", f)
                out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)

    def texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Strings → (N, D) unit vectors (truncated to the text model's context)."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for chunk in batches(texts, batch_size, self.device):
                enc = self.tokenizer(chunk, padding="max_length", truncation=True,
                                     max_length=self.model.config.text_config.max_position_embeddings,
                                     return_tensors="pt")
                f = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                                 attention_mask=enc["attention_mask"].to(self.device))
                f = getattr(f, "pooler_output", f)
                out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)
