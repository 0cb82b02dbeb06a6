"""Background inpainting candidates (Emu Edit supplementary 7.2.3, "Background"): the 9-channel
inpainting UNet repaints the masked background; k candidates with their own noise seed and
guidance run in one batch; the result is blended with the input inside the mask, so everything
outside it is the input's own pixels.

The loop is the one of diffusers' ``StableDiffusionInpaintPipeline`` (latents, mask and masked-image
latents concatenated on channels, masked image = image where mask < 0.5), written out because the
pipeline takes one guidance scale per call and the candidates each need their own in one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.diffusion.sampler import encode_text, initial_noise, paste_back, to_tensor, vae_decode
from pipeline.models.sd import SDComponents


@dataclass
class InpaintCandidate:
    guidance: float
    seed: int


@torch.no_grad()
def inpaint_candidates(comps: SDComponents, image: np.ndarray, mask: np.ndarray, prompt: str,
                       cands: list[InpaintCandidate], *, steps: int) -> list[np.ndarray]:
    """``mask``: HxW uint8, 255 = repaint. Returns one blended HxWx3 uint8 image per candidate."""
    # 1. check inputs
    if comps.unet.config.in_channels != 9:
        raise ValueError(f"models.inpaint: the UNet has {comps.unet.config.in_channels} input channels, not 9")
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        raise ValueError(f"mask {mask.shape} does not match the image {(h, w)}")
    if h % comps.pixel_multiple or w % comps.pixel_multiple:
        raise ValueError(f"image sides {(h, w)} must be multiples of {comps.pixel_multiple}")
    if not cands:
        raise ValueError("no candidates")
    k, s = len(cands), comps.vae_scale
    dev, dt = comps.device, comps.dtype

    # 2. prompt, 3. mask and masked-image latents (shared by every candidate)
    cond, uncond = encode_text(comps, [prompt, ""]).split(1)
    emb = torch.cat([uncond.expand(k, -1, -1), cond.expand(k, -1, -1)])
    m = torch.from_numpy((mask >= 128).astype(np.float32))[None, None].to(dev, dt)
    masked = to_tensor(image, comps) * (m < 0.5)
    masked_lat = comps.vae.encode(masked).latent_dist.mode() * comps.vae.config.scaling_factor
    m_lat = torch.nn.functional.interpolate(m, size=(h // s, w // s))
    extra = torch.cat([m_lat, masked_lat], dim=1).expand(2 * k, -1, -1, -1)

    # 4. each candidate's own noise; one batch through the denoising loop with per-row guidance
    sched = comps.scheduler
    sched.set_timesteps(steps, device=dev)
    lat = torch.cat([initial_noise(comps, c.seed, h, w) for c in cands])
    g = torch.tensor([c.guidance for c in cands], device=dev, dtype=dt).view(-1, 1, 1, 1)
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([lat, lat]), t)
        out = comps.unet(torch.cat([x, extra], dim=1), t, encoder_hidden_states=emb).sample
        out_u, out_c = out.chunk(2)
        lat = sched.step(out_u + g * (out_c - out_u), t, lat).prev_sample

    # 5. decode, blend with the input inside the (soft) mask
    return [paste_back(im, image, mask) for im in vae_decode(comps, lat)]
