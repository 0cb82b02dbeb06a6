"""Mask-blended prompt-to-prompt (Emu Edit supplementary 7.2.1): k candidates of one sample, each
with its own guidance, N_c, N_s, blend_s and mask, in one batch with one shared source branch.

The source branch is either regenerated from the base image's seed and caption (a generated base:
the same DDIM trajectory as ``text2image.generate_base``) or held to a DDIM-inversion trajectory
(a real photo). Guarantees (tests/test_p2p.py): where a candidate's latent mask is 0 its final
latent equals the source's; with ``paste_back`` the pixels where the pixel mask is 0 equal the
input exactly; identical captions and the source's guidance reproduce the source.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.diffusion.processors import AttentionControl, BatchLayout, size_filter
from pipeline.diffusion.sampler import (BranchInputs, encode_text, initial_noise, latent_mask, n_steps, paste_back,
                                        run_branches, vae_decode)
from pipeline.diffusion.tokens import token_alignment
from pipeline.models.sd import SDComponents


@dataclass
class P2PSource:
    """The image being edited: a generated base (``seed`` + ``guidance``) or an inverted photo
    (``trajectory``); ``image`` is its pixels (for paste-back), ``prompt`` its caption."""
    prompt: str
    image: np.ndarray
    seed: int | None = None
    guidance: float = 7.5
    trajectory: list[torch.Tensor] | None = None


@dataclass
class P2PCandidate:
    guidance: float
    n_cross: float
    n_self: float
    blend_s: float
    mask: np.ndarray | None = None          # HxW uint8, 255 = edit; None = blank (global)
    extra: dict = field(default_factory=dict)


@dataclass
class P2PResult:
    images: list[np.ndarray]                # one per candidate (pasted back when asked)
    source_image: np.ndarray                # the source branch decoded (≈ the input up to the VAE)
    latents: torch.Tensor                   # (1+k, 4, h, w) final latents, row 0 the source
    raw_images: list[np.ndarray]            # candidates as decoded, before paste-back
    injections: Counter = field(default_factory=Counter)   # (kind, layer, step) → injections applied


def p2p_edit(comps: SDComponents, source: P2PSource, target_prompt: str, cands: list[P2PCandidate], *,
             steps: int, paste: bool = True, self_max_tokens: int = 256, guidance_rescale: float = 0.0,
             inject: bool = True) -> P2PResult:
    """``inject=False``: no self- or cross-attention injection (mask blending stays): the baseline."""
    # 1. check inputs
    if not cands:
        raise ValueError("no candidates")
    h, w = source.image.shape[:2]
    if (source.trajectory is None) == (source.seed is None):
        raise ValueError("a P2P source needs exactly one of seed (generated base) or trajectory (inverted photo)")
    for c in cands:
        if c.mask is not None and c.mask.shape != (h, w):
            raise ValueError(f"mask {c.mask.shape} does not match the image {(h, w)}")
    s = comps.vae_scale
    lh, lw = h // s, w // s

    # 2. text, token alignment of the two captions, starting noise
    src_emb, tgt_emb, uncond = encode_text(comps, [source.prompt, target_prompt, ""]).split(1)
    k = len(cands)
    tmap, alpha = token_alignment(comps.tokenizer, source.prompt, target_prompt, src_emb.shape[1])
    z_T = initial_noise(comps, source.seed, h, w) if source.seed is not None else None

    # 3. per-candidate schedules: N_s, N_c, blend_s as step counts; masks at latent size
    control = AttentionControl(BatchLayout(k, source_cfg=source.trajectory is None),
                               self_steps=[n_steps(c.n_self, steps) for c in cands],
                               cross_steps=[n_steps(c.n_cross, steps) for c in cands],
                               token_map=tmap.expand(k, -1), token_alpha=alpha.expand(k, -1),
                               inject_uncond=False, self_layer=size_filter(self_max_tokens), inject=inject)
    masks = torch.cat([latent_mask(c.mask, (lh, lw), comps.device, comps.dtype) for c in cands])
    inp = BranchInputs(z_T=z_T, src_emb=src_emb, cand_emb=tgt_emb.expand(k, -1, -1), uncond_emb=uncond,
                       cand_guidance=[c.guidance for c in cands], src_guidance=source.guidance,
                       trajectory=source.trajectory, masks=masks,
                       blend_steps=[n_steps(c.blend_s, steps) for c in cands])

    # 4. one batched run, 5. decode everything at once, paste the input back outside the masks
    lat = run_branches(comps, inp, control, steps, guidance_rescale=guidance_rescale)
    imgs = vae_decode(comps, lat)
    raw = imgs[1:]
    out = [paste_back(im, source.image, c.mask) if paste else im for im, c in zip(raw, cands)]
    return P2PResult(images=out, source_image=imgs[0], latents=lat, raw_images=raw, injections=control.log)
