"""Shared tiny Stable Diffusion fixtures for the diffusion tests (no hub, no downloads)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

STEPS = 6          # few DDIM steps: the invariants tested hold at any step count
SIZE = 64          # 64 px → 32×32 latents with the tiny VAE (factor 2)
CAPTION = "a tabby cat sitting on a red sofa"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: faster on a shared 2-core machine and bit-stable between runs. On a GPU
    (tests/gpu_check.sh) full float32: cuDNN convolutions default to TF32 (10-bit mantissa), whose
    rounding the guidance amplifies past the 1e-4 of the batched = alone check."""
    n, tf32 = torch.get_num_threads(), torch.backends.cudnn.allow_tf32
    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_num_threads(n)
    torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture(scope="module")
def sd():
    from pipeline.models.sd import load_sd
    return load_sd()


@pytest.fixture(scope="module")
def sd_deep(sd):
    from pipeline.models.sd import tiny_unet, with_unet
    return with_unet(sd, tiny_unet("deep"))


def blob_mask(size: int = SIZE) -> np.ndarray:
    """A precise (non-rectangular) object mask: an ellipse, 255 inside."""
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (size // 2, size // 2 + 4), (size // 5, size // 7), 20, 0, 360, 255, -1)
    return m


def photo(size: int = SIZE) -> np.ndarray:
    from pipeline.demo_data import load_demo_photo
    return cv2.resize(load_demo_photo("chelsea"), (size, size), interpolation=cv2.INTER_AREA)
