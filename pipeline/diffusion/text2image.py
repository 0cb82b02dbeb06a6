"""Base images from captions with diffusers' ``StableDiffusionPipeline`` (x for local / texture /
remove / global, y for add).

The starting noise is drawn from the sample's seed by ``sampler.initial_noise`` and handed to the
pipeline, so the edit stage can regenerate the same trajectory as the source branch of its batch
(P2P's own arrangement) instead of storing latents between stages."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.diffusion.sampler import initial_noise
from pipeline.models.sd import SDComponents


def sd_pipeline(comps: SDComponents):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
                                   unet=comps.unet, scheduler=comps.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@torch.no_grad()
def generate_base(comps: SDComponents, prompt: str, *, seed: int, steps: int, guidance: float, size: int,
                  guidance_rescale: float = 0.0, pipe=None, trajectory: list | None = None) -> np.ndarray:
    """One HxWx3 uint8 image for ``prompt`` from the noise of ``seed``. Pass a list as
    ``trajectory`` to receive the T+1 latents of the generation (z_T … z_0): PnP on a generated
    image holds its source branch to them instead of inverting the image."""
    # 1. check inputs
    if not prompt or not prompt.strip():
        raise ValueError("empty prompt")
    if size % comps.pixel_multiple:
        raise ValueError(f"size {size} is not a multiple of {comps.pixel_multiple}")
    # 2. the seed's noise, 3. the pipeline (DDIM, eta 0)
    pipe = pipe or sd_pipeline(comps)
    pipe.set_progress_bar_config(disable=True)
    z_T = initial_noise(comps, seed, size, size)
    record = None
    if trajectory is not None:
        trajectory[:] = [z_T]

        def record(p, i, t, kw):
            trajectory.append(kw["latents"].clone())
            return kw
    out = pipe(prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
               latents=z_T, guidance_rescale=guidance_rescale, output_type="np", eta=0.0,
               callback_on_step_end=record)
    return np.round(out.images[0] * 255).astype(np.uint8)
