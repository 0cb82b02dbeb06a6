"""DDIM inversion of a real image: the latent trajectory z_0 → z_T that DDIM sampling with the same
caption (guidance 1) approximately retraces. Computed once per sample and shared by every
candidate; the source branch of P2P / PnP is held to it (as in "direct inversion", Ju et al. 2023),
which removes the reconstruction drift from the source features without null-text optimisation."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.diffusion.sampler import encode_text, eps_and_x0, vae_encode
from pipeline.models.sd import SDComponents


@torch.no_grad()
def ddim_invert(comps: SDComponents, image: np.ndarray, prompt: str, steps: int, *,
                fixed_point_iters: int = 0) -> list[torch.Tensor]:
    """Trajectory ``traj`` with ``traj[i]`` the latent entering sampling step i and ``traj[steps]``
    the encoded image (so ``run_branches`` can hold a source row to it).

    ``fixed_point_iters`` > 0 refines each step by re-predicting the noise at the latent just found
    (fixed-point inversion, Pan et al. 2023): the forward DDIM step then evaluates the noise where
    sampling will, so sampling with the caption retraces the trajectory much more closely. Costs
    that many extra UNet calls per step, once per sample (the candidates share the trajectory)."""
    # 1. check inputs
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"want HxWx3 uint8, got {image.shape} {image.dtype}")
    m = comps.pixel_multiple
    if image.shape[0] % m or image.shape[1] % m:
        raise ValueError(f"image sides {image.shape[:2]} must be multiples of {m}")
    sched = comps.scheduler
    sched.set_timesteps(steps, device=comps.device)
    ts = sched.timesteps
    # 2. encode, 3. walk the schedule backwards: the step i → i+1 of sampling is undone by
    # predicting the noise of z_{i+1} at timestep t_i (the usual DDIM-inversion approximation)
    emb = encode_text(comps, [prompt])
    z = vae_encode(comps, image)
    traj = [z]
    ac = sched.alphas_cumprod.to(comps.device)
    step = sched.config.num_train_timesteps // steps
    for i in reversed(range(steps)):
        t = ts[i]
        prev_t = int(t) - step
        a_prev = ac[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod.to(comps.device)
        a_t = ac[int(t)]
        z_next = z
        for _ in range(1 + fixed_point_iters):
            out = comps.unet(sched.scale_model_input(z_next, t), t, encoder_hidden_states=emb).sample
            eps, _ = eps_and_x0(comps, out, z_next, a_t)        # the noise sampling will predict at t
            x0 = (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
            z_next = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        z = z_next
        traj.append(z)
    return traj[::-1]
