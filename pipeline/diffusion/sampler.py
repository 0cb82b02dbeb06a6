"""The shared DDIM loop: a source branch and k candidates in one UNet batch, with attention control,
per-row guidance, an optional source trajectory and mask blending. P2P and PnP are configurations
of it (``p2p.py``, ``pnp.py``); helpers for text, noise and the VAE live here too."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.diffusion.processors import AttentionControl, BatchLayout, controlled
from pipeline.models.sd import SDComponents


# ------------------------------------------------------------------------------------------------
# text, noise, VAE
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def encode_text(comps: SDComponents, prompts: list[str]) -> torch.Tensor:
    """(n, L, D) text embeddings, padded to the tokenizer's length as StableDiffusionPipeline does."""
    tok = comps.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return comps.text_encoder(ids.to(comps.device))[0].to(comps.dtype)


def initial_noise(comps: SDComponents, seed: int, height: int, width: int) -> torch.Tensor:
    """z_T for a seed, drawn on the CPU so every device and actor gets the same noise."""
    s = comps.vae_scale
    g = torch.Generator("cpu").manual_seed(int(seed) % (2 ** 63))
    z = torch.randn((1, comps.vae.config.latent_channels, height // s, width // s),
                    generator=g, dtype=torch.float32)
    return (z * comps.scheduler.init_noise_sigma).to(comps.device, comps.dtype)


def pixels_to_unit(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 → (3, H, W) float32 in [-1, 1], on the CPU (the VAE's input range; the trainer uses it too)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0


def to_tensor(image: np.ndarray, comps: SDComponents) -> torch.Tensor:
    """HxWx3 uint8 → (1, 3, H, W) in [-1, 1] on the components' device."""
    return pixels_to_unit(image)[None].to(comps.device, comps.dtype)


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """(n, 3, H, W) in [-1, 1] → list of HxWx3 uint8, rounded as the diffusers image processor does."""
    x = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [np.round(a * 255).astype(np.uint8) for a in x]


@torch.no_grad()
def vae_encode(comps: SDComponents, image: np.ndarray) -> torch.Tensor:
    """Deterministic latent (the posterior mean), scaled as the UNet expects."""
    return comps.vae.encode(to_tensor(image, comps)).latent_dist.mode() * comps.vae.config.scaling_factor


@torch.no_grad()
def vae_decode(comps: SDComponents, latents: torch.Tensor) -> list[np.ndarray]:
    return to_uint8(comps.vae.decode(latents / comps.vae.config.scaling_factor).sample)


def latent_mask(mask: np.ndarray | None, latent_hw: tuple[int, int], device, dtype) -> torch.Tensor:
    """HxW uint8 (255 = edit) → (1, 1, h, w) in [0, 1] at latent size. A latent cell is as editable
    as the most editable pixel it covers (max pooling): the edit must not be starved at the mask's
    border; what leaks outside is restored by the pixel paste-back. ``None`` = blank mask (edit
    everywhere)."""
    if mask is None:
        return torch.ones((1, 1, *latent_hw), device=device, dtype=dtype)
    m = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None] / 255.0
    return torch.nn.functional.adaptive_max_pool2d(m, latent_hw).to(device, dtype)


def paste_back(edited: np.ndarray, original: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """edited·m + original·(1−m) in pixel space (m = mask/255); a blank mask keeps the edit."""
    if mask is None:
        return edited
    m = (mask.astype(np.float32) / 255.0)[..., None]
    return np.round(edited.astype(np.float32) * m + original.astype(np.float32) * (1 - m)).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# model output → epsilon / x0 (epsilon and v-prediction checkpoints)
# ------------------------------------------------------------------------------------------------

def eps_and_x0(comps: SDComponents, out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor):
    kind = comps.scheduler.config.prediction_type
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    if kind == "epsilon":
        return out, (x - s * out) / a
    if kind == "v_prediction":
        return a * out + s * x, a * x - s * out
    raise ValueError(f"prediction type {kind!r} is not supported by the DDIM loop")


# ------------------------------------------------------------------------------------------------
# the batched controlled loop
# ------------------------------------------------------------------------------------------------

@dataclass
class BranchInputs:
    """Everything one batched run needs. k = number of candidates."""
    z_T: torch.Tensor                      # (1, 4, h, w): source and candidates start from the same noise
    src_emb: torch.Tensor                  # (1, L, D) source caption
    cand_emb: torch.Tensor                 # (k, L, D) candidate captions
    uncond_emb: torch.Tensor               # (1, L, D) empty caption
    cand_guidance: list[float]             # k
    src_guidance: float = 7.5              # used only by a free-running source
    trajectory: list[torch.Tensor] | None = None   # T+1 latents (1,4,h,w) the source is held to
    masks: torch.Tensor | None = None      # (k, 1, h, w) latent masks; None: no blending
    blend_steps: list[int] | None = None   # k: steps in which candidates are replaced by the source
    source_uncond: bool = False            # keep an unconditional source row even when held to a trajectory
                                           # (PnP injects each CFG half from the matching source half)


@torch.no_grad()
def run_branches(comps: SDComponents, inp: BranchInputs, control: AttentionControl | None, steps: int, *,
                 feature_layers: list[str] | None = None, guidance_rescale: float = 0.0) -> torch.Tensor:
    """DDIM sampling of [source, cand_1..k] in one UNet batch per step; returns (1+k, 4, h, w) final
    latents (row 0: source)."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    # 1. check inputs
    k = inp.cand_emb.shape[0]
    layout = BatchLayout(k, source_cfg=inp.trajectory is None or inp.source_uncond)
    if control is not None and control.layout != layout:
        raise ValueError(f"control layout {control.layout} does not match the inputs {layout}")
    if len(inp.cand_guidance) != k:
        raise ValueError(f"{len(inp.cand_guidance)} guidance values for {k} candidates")
    if inp.trajectory is not None and len(inp.trajectory) != steps + 1:
        raise ValueError(f"trajectory has {len(inp.trajectory)} latents, {steps} steps need {steps + 1}")
    if (inp.masks is None) != (inp.blend_steps is None):
        raise ValueError("masks and blend_steps go together")
    sched = comps.scheduler
    sched.set_timesteps(steps, device=comps.device)

    # 2. batch: embeddings [uncond block | cond block], per-row guidance
    dev, dt = comps.device, comps.dtype
    emb = torch.cat([inp.uncond_emb.expand(layout.n_uncond, -1, -1), inp.src_emb, inp.cand_emb])
    g = torch.tensor([inp.src_guidance, *inp.cand_guidance], device=dev, dtype=dt).view(-1, 1, 1, 1)
    lat = (inp.trajectory[0] if inp.trajectory is not None else inp.z_T).expand(1 + k, -1, -1, -1).clone()

    ctx = controlled(comps.unet, control, feature_layers=feature_layers) if control is not None else _null()
    with ctx:
        for i, t in enumerate(sched.timesteps):
            # 3. one UNet call for source and candidates, conditional and unconditional
            if control is not None:
                control.set_step(i, dev)
            unet_in = torch.cat([lat if layout.source_cfg else lat[1:], lat])
            unet_in = sched.scale_model_input(unet_in, t)
            out = comps.unet(unet_in, t, encoder_hidden_states=emb).sample
            out_u, out_c = out[:layout.n_uncond], out[layout.n_uncond:]
            if not layout.source_cfg:          # the held source needs no guidance: its step is overwritten
                out_u = torch.cat([out_c[:1], out_u])
            pred = out_u + g * (out_c - out_u)
            if guidance_rescale > 0:
                pred = rescale_noise_cfg(pred, out_c, guidance_rescale=guidance_rescale)
            # 4. DDIM step for all rows, then hold the source to its trajectory
            lat = sched.step(pred, t, lat).prev_sample
            if inp.trajectory is not None:
                lat[0] = inp.trajectory[i + 1][0]
            # 5. mask blending: replace during the first blend_s steps, then x_t·m + (1−m)·y_t
            if inp.masks is not None:
                for j in range(k):
                    if i < inp.blend_steps[j]:
                        lat[1 + j] = lat[0]
                    else:
                        m = inp.masks[j]
                        lat[1 + j] = lat[1 + j] * m + lat[0] * (1 - m)
    return lat


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def n_steps(frac: float, steps: int) -> int:
    """Steps covered by a fraction of the schedule (rounded; 1.0 covers all)."""
    return int(round(float(frac) * steps))
