"""Plug-and-Play (Tumanyan et al. 2023) for the style task: the source branch is held to the DDIM
inversion of the input (computed once, or a generation trajectory when one is at hand); every
candidate starts from the same z_T and receives the source's spatial features (ResNet outputs of
``pnp_feature_layers``) for the first ``feature_frac`` of the steps and the source's self-attention
queries and keys in ``pnp_self_layers`` for the first N_s, in both halves of CFG, each half from
the matching half of the source (its unconditional row sees the empty caption, as PnP's feature
extraction does) — all candidates in one batch."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.diffusion.processors import AttentionControl, BatchLayout, name_filter
from pipeline.diffusion.sampler import BranchInputs, encode_text, n_steps, run_branches, vae_decode
from pipeline.models.sd import SDComponents


@dataclass
class PnPCandidate:
    guidance: float
    n_self: float
    feature_frac: float = 0.8


@dataclass
class PnPResult:
    images: list[np.ndarray]                # one per candidate
    latents: torch.Tensor                   # (1+k, 4, h, w) final latents, row 0 the source (= the input's latent)
    injections: Counter                     # (kind, layer, step) → injections applied ("feature" / "self")


def check_self_layers(comps: SDComponents, patterns: list[str]) -> None:
    import fnmatch
    names = [n.removesuffix(".processor") for n in comps.unet.attn_processors]
    if not any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
        raise ValueError(f"diffusion.pnp_self_layers: {patterns} match no attention layer of this UNet "
                         f"(it has e.g. {names[:4]})")


def pnp_edit(comps: SDComponents, trajectory: list[torch.Tensor], source_prompt: str, target_prompt: str,
             cands: list[PnPCandidate], *, steps: int, feature_layers: list[str], self_layers: list[str],
             guidance_rescale: float = 0.0, inject: bool = True) -> PnPResult:
    """``inject=False``: the same sampling from the inverted noise with no feature or attention
    injection (the baseline PnP's structure preservation is measured against)."""
    # 1. check inputs
    if not cands:
        raise ValueError("no candidates")
    if len(trajectory) != steps + 1:
        raise ValueError(f"trajectory has {len(trajectory)} latents for {steps} steps")
    check_self_layers(comps, self_layers)
    k = len(cands)
    # 2. text; 3. schedules (no cross-attention injection: the new caption drives the style)
    src_emb, tgt_emb, uncond = encode_text(comps, [source_prompt, target_prompt, ""]).split(1)
    control = AttentionControl(BatchLayout(k, source_cfg=True),
                               self_steps=[n_steps(c.n_self, steps) for c in cands],
                               feature_steps=[n_steps(c.feature_frac, steps) for c in cands],
                               inject_uncond=True, self_layer=name_filter(self_layers), inject=inject)
    inp = BranchInputs(z_T=trajectory[0], src_emb=src_emb, cand_emb=tgt_emb.expand(k, -1, -1), uncond_emb=uncond,
                       cand_guidance=[c.guidance for c in cands], trajectory=trajectory, source_uncond=True)
    # 4. one batched run, 5. decode
    lat = run_branches(comps, inp, control, steps, feature_layers=feature_layers, guidance_rescale=guidance_rescale)
    return PnPResult(vae_decode(comps, lat[1:]), lat, control.log)
