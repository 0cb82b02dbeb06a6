"""The encoder behind the DINO similarity metric, by ``models.dino`` spec:

- a hub id / folder (``facebook/dino-vitb16`` in the paper profile): DINO ViT, embedding = the
  [CLS] token of the last layer, unit length — what the DINO metric of Emu Edit / MagicBrush compares;
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 features (pipeline/models/efficientnet_lite.py),
  the embedded default's real stand-in, since no pip package ships DINO weights;
- ``tiny-random``: a 2-layer random-init ViTModel from config (code-path tests; its cosines mean nothing).

``image_similarity_encoder`` picks the class; every one has ``images()`` and ``model_ref()``."""
from __future__ import annotations

import numpy as np

from pipeline.models.tiny import batches, check_local_path, is_tiny, seeded

TINY_IMAGE_SIZE = 64


class DinoEncoder:
    def __init__(self, spec: str = "tiny-random", device: str = "cpu"):
        import torch
        from transformers import ViTConfig, ViTImageProcessor, ViTModel

        if is_tiny(spec):
            with seeded(0xD1A0):
                model = ViTModel(ViTConfig(image_size=TINY_IMAGE_SIZE, patch_size=16, hidden_size=32,
                                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
                                 add_pooling_layer=False)
            self.processor = ViTImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
        else:
            check_local_path(spec, "dino")
            model = ViTModel.from_pretrained(spec, add_pooling_layer=False)
            self.processor = ViTImageProcessor.from_pretrained(spec)
        self.spec, self.device = spec, device
        self.model = model.to(device).eval()
        self._torch = torch

    def model_ref(self) -> dict[str, str]:
        return {"id": "tiny-random-dino" if is_tiny(self.spec) else self.spec}

    def images(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for chunk in batches(images, batch_size, self.device):
                px = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
                cls = self.model(pixel_values=px.to(self.device)).last_hidden_state[:, 0]
                out.append(torch.nn.functional.normalize(cls.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


def image_similarity_encoder(spec: str = "tiny-random", device: str = "cpu"):
    """The encoder for ``models.dino``: EfficientNet-Lite0 for ``efficientnet-lite0``, else DINO ViT."""
    from pipeline.models.efficientnet_lite import EfficientNetLite0Encoder, is_efficientnet_lite0

    return EfficientNetLite0Encoder(device) if is_efficientnet_lite0(spec) else DinoEncoder(spec, device)
