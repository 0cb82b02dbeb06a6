"""Per-task recipes (Emu Edit supplementary 7.2.3–7.2.4) on top of the three generators.

``DiffusionGenerators`` holds the loaded components and knows, per task, which generator runs with
which sampled parameters, which masks and which direction:

  local, texture, remove   base x (generated or photo) → P2P to the output caption inside the mask
  add                      base y from the output caption → P2P to the input caption inside the mask
                           of the added object; the pair is (edited x, base y)
  global                   P2P with a blank mask
  background               inpaint the background mask, blended with the input inside it
  style                    PnP on the inverted photo (or the generation trajectory of a base)

Every candidate carries every sampled value in ``params``; region candidates cycle through the
mask variants the row has. A real photo is inverted once per sample and shared by all candidates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pipeline.diffusion.config import DiffusionConfig, P2PRanges, Range
from pipeline.diffusion.inpaint import InpaintCandidate, inpaint_candidates
from pipeline.diffusion.inversion import ddim_invert
from pipeline.diffusion.p2p import P2PCandidate, P2PSource, p2p_edit
from pipeline.diffusion.pnp import PnPCandidate, pnp_edit
from pipeline.diffusion.text2image import generate_base, sd_pipeline

P2P_TASKS = ("local", "texture", "add", "remove", "global")
TASKS = (*P2P_TASKS, "background", "style")


@dataclass
class Candidate:
    input_image: np.ndarray
    output_image: np.ndarray
    mask: np.ndarray | None
    mask_variant: str
    params: dict[str, Any] = field(default_factory=dict)


def _u(rng: np.random.Generator, r: Range) -> float:
    return round(float(rng.uniform(r.low, r.high)), 4)


def sample_p2p(rng: np.random.Generator, ranges: P2PRanges, n: int) -> list[dict]:
    return [{"guidance": _u(rng, ranges.guidance), "n_cross": _u(rng, ranges.n_cross),
             "n_self": _u(rng, ranges.n_self), "blend_s": _u(rng, ranges.blend_s)} for _ in range(n)]


def fit_photo(image: np.ndarray, side: int, multiple: int) -> np.ndarray:
    """Resize so the longer side is ``side`` and both sides are multiples of ``multiple``."""
    h, w = image.shape[:2]
    s = side / max(h, w)
    nh, nw = max(multiple, int(h * s) // multiple * multiple), max(multiple, int(w * s) // multiple * multiple)
    if (nh, nw) == (h, w):
        return image
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if nh < h else cv2.INTER_CUBIC)


class DiffusionGenerators:
    def __init__(self, cfg: DiffusionConfig, text_to_image: str = "tiny-random", inpaint: str | None = "tiny-random",
                 *, t2i=None, inp=None):
        """Loads the text-to-image components (and the inpainting ones unless ``inpaint`` is None);
        ``t2i`` / ``inp`` pass prebuilt ``SDComponents`` (tests)."""
        from pipeline.models.sd import load_sd

        self.cfg = cfg
        kw = dict(zero_terminal_snr=cfg.zero_terminal_snr, device=cfg.device, dtype=cfg.dtype)
        self.t2i = t2i or load_sd(text_to_image, role="text_to_image", **kw)
        self.inp = inp if inp is not None else (
            load_sd(inpaint, role="inpaint", inpaint=True, **kw) if inpaint is not None else None)
        self._pipe = sd_pipeline(self.t2i)
        self.size = cfg.resolution // self.t2i.pixel_multiple * self.t2i.pixel_multiple
        self.rescale = cfg.guidance_rescale if cfg.zero_terminal_snr else 0.0

    # ------------------------------------------------------------------ base images
    def base_image(self, prompt: str, seed: int) -> tuple[np.ndarray, dict]:
        """A generated base and what regenerates it (stored in the row's params as ``base``)."""
        c = self.cfg
        img = generate_base(self.t2i, prompt, seed=seed, steps=c.steps, guidance=c.base_guidance, size=self.size,
                            guidance_rescale=self.rescale, pipe=self._pipe)
        return img, {"generated": True, "prompt": prompt, "seed": int(seed), "guidance": c.base_guidance,
                     "steps": c.steps, "size": self.size, "zero_terminal_snr": c.zero_terminal_snr,
                     "model": self.t2i.spec}

    def fit_photo(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        out = fit_photo(image, self.size, self.t2i.pixel_multiple)
        return out, {"generated": False, "size": list(out.shape[:2]), "original_size": list(image.shape[:2])}

    # ------------------------------------------------------------------ P2P family
    def p2p_source(self, image: np.ndarray, base: dict, prompt: str) -> P2PSource:
        if base.get("generated"):
            return P2PSource(prompt=base["prompt"], image=image, seed=base["seed"], guidance=base["guidance"])
        traj = ddim_invert(self.t2i, image, prompt, self.cfg.steps)          # once, shared by all candidates
        return P2PSource(prompt=prompt, image=image, trajectory=traj)

    def p2p_candidates(self, task: str, image: np.ndarray, base: dict, source_prompt: str, target_prompt: str,
                       masks: dict[str, np.ndarray], rng: np.random.Generator) -> list[Candidate]:
        """``masks``: variant → HxW uint8 (empty for global: blank mask). The returned candidates'
        input/output are (base, edit); ``add`` swaps them in the stage."""
        c = self.cfg
        ranges = c.global_edit if task == "global" else c.local
        params = sample_p2p(rng, ranges, c.candidates)
        variants = [v for v in c.mask_variants if v in masks] if task != "global" else ["blank"]
        if not variants:
            raise ValueError(f"no usable mask variant (have {sorted(masks)}, diffusion.mask_variants {c.mask_variants})")
        for j, p in enumerate(params):
            p["mask_variant"] = variants[j % len(variants)]
        source = self.p2p_source(image, base, source_prompt)
        out: list[Candidate] = []
        for lo in range(0, len(params), c.candidate_chunk):
            chunk = params[lo:lo + c.candidate_chunk]
            cands = [P2PCandidate(p["guidance"], p["n_cross"], p["n_self"], p["blend_s"],
                                  mask=masks.get(p["mask_variant"])) for p in chunk]
            res = p2p_edit(self.t2i, source, target_prompt, cands, steps=c.steps, paste=c.paste_back,
                           self_max_tokens=c.p2p_self_max_tokens, guidance_rescale=self.rescale)
            for j, (p, cand, img) in enumerate(zip(chunk, cands, res.images)):
                out.append(Candidate(image, img, cand.mask, p["mask_variant"], {
                    "recipe": "p2p", "candidate": lo + j, **p, "steps": c.steps, "paste_back": c.paste_back,
                    "source_prompt": source_prompt, "target_prompt": target_prompt,
                    "source": "generation" if source.seed is not None else "ddim_inversion",
                    "base": base, "model": self.t2i.spec}))
        return out

    # ------------------------------------------------------------------ style (PnP)
    def style_candidates(self, image: np.ndarray, base: dict, source_prompt: str, target_prompt: str,
                         rng: np.random.Generator) -> list[Candidate]:
        c, r = self.cfg, self.cfg.style
        if base.get("generated"):        # reuse the generation trajectory: regenerate it once, no inversion
            traj: list = []
            generate_base(self.t2i, base["prompt"], seed=base["seed"], steps=c.steps, guidance=base["guidance"],
                          size=base["size"], guidance_rescale=self.rescale, pipe=self._pipe, trajectory=traj)
            how = "generation"
        else:
            traj, how = ddim_invert(self.t2i, image, source_prompt, c.steps), "ddim_inversion"
        params = [{"guidance": _u(rng, r.guidance), "n_self": _u(rng, r.n_self), "feature_frac": r.feature_frac}
                  for _ in range(c.candidates)]
        out: list[Candidate] = []
        for lo in range(0, len(params), c.candidate_chunk):
            chunk = params[lo:lo + c.candidate_chunk]
            imgs = pnp_edit(self.t2i, traj, source_prompt, target_prompt,
                            [PnPCandidate(p["guidance"], p["n_self"], p["feature_frac"]) for p in chunk],
                            steps=c.steps, feature_layers=c.pnp_feature_layers, self_layers=c.pnp_self_layers,
                            guidance_rescale=self.rescale).images
            for j, (p, img) in enumerate(zip(chunk, imgs)):
                out.append(Candidate(image, img, None, "blank", {
                    "recipe": "pnp", "candidate": lo + j, **p, "steps": c.steps, "source": how,
                    "feature_layers": c.pnp_feature_layers, "self_layers": c.pnp_self_layers,
                    "source_prompt": source_prompt, "target_prompt": target_prompt, "base": base,
                    "model": self.t2i.spec}))
        return out

    # ------------------------------------------------------------------ background (inpainting)
    def background_candidates(self, image: np.ndarray, base: dict, mask: np.ndarray, prompt: str,
                              rng: np.random.Generator) -> list[Candidate]:
        if self.inp is None:
            raise ValueError("models.inpaint is not loaded")
        c = self.cfg
        params = [{"guidance": _u(rng, c.background.guidance), "seed": int(rng.integers(2 ** 62))}
                  for _ in range(c.candidates)]
        out: list[Candidate] = []
        for lo in range(0, len(params), c.candidate_chunk):
            chunk = params[lo:lo + c.candidate_chunk]
            imgs = inpaint_candidates(self.inp, image, mask, prompt,
                                      [InpaintCandidate(p["guidance"], p["seed"]) for p in chunk], steps=c.inpaint_steps)
            for j, (p, img) in enumerate(zip(chunk, imgs)):
                out.append(Candidate(image, img, mask, "background", {
                    "recipe": "inpaint", "candidate": lo + j, **p, "steps": c.inpaint_steps, "prompt": prompt,
                    "base": base, "model": self.inp.spec}))
        return out
