"""Diffusion settings of a job (``JobConfig.diffusion``): step counts, candidates, resolution and the
parameter ranges of the Emu Edit recipes (supplementary Sec. 7.2). Checkpoints are not here: they
are ``models.text_to_image`` and ``models.inpaint``."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.models.device import DEVICE_HELP, Device


class _Strict(BaseModel):
    # as pipeline.config._Strict; defined here because pipeline.config imports this module
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Range(_Strict):
    """A closed interval a value is drawn from uniformly."""
    low: float = Field(description="Lower end (inclusive).")
    high: float = Field(description="Upper end (inclusive).")

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) < low ({self.low})")
        return self


def _r(lo: float, hi: float):
    return lambda: Range(low=lo, high=hi)


class P2PRanges(_Strict):
    """Sampling ranges of mask-blended prompt-to-prompt for one group of tasks."""
    guidance: Range = Field(default_factory=_r(4.0, 8.0), description="Classifier-free guidance scale.")
    n_cross: Range = Field(default_factory=_r(0.3, 0.9), description="N_c: fraction of the steps with cross-attention "
                           "injected on the tokens both captions share.")
    n_self: Range = Field(default_factory=_r(0.3, 0.9), description="N_s: fraction of the steps with self-attention maps shared.")
    blend_s: Range = Field(default_factory=_r(0.02, 0.2), description="blend_s: fraction of the first steps in which the "
                           "edited latent is replaced by the input's; later steps blend x_t·m + (1−m)·y_t.")


class PnPRanges(_Strict):
    guidance: Range = Field(default_factory=_r(6.5, 10.0), description="Classifier-free guidance scale of the style edit.")
    n_self: Range = Field(default_factory=_r(0.5, 1.0), description="N_s: fraction of the steps with self-attention "
                          "queries and keys taken from the inverted input.")
    feature_frac: float = Field(0.8, ge=0, le=1, description="Fraction of the steps with the spatial (ResNet) features "
                                "of the inverted input injected (paper: 0.8).")


class InpaintRanges(_Strict):
    guidance: Range = Field(default_factory=_r(5.0, 10.0), description="Guidance scale of the background inpainting "
                            "candidates (the paper varies noise and guidance without naming a range).")


class DiffusionConfig(_Strict):
    steps: int = Field(10, ge=2, le=1000, description="DDIM steps of base generation, inversion and every edit "
                       "(the default suits the tiny embedded models; paper profile: 50).")
    inpaint_steps: int = Field(10, ge=2, le=1000, description="Steps of the background inpainting sampler.")
    candidates: int = Field(10, ge=1, le=64, description="Candidates per sample (paper: 10); for region tasks spread "
                            "round-robin over the mask variants. All go through the UNet in one batch.")
    candidate_chunk: int = Field(10, ge=1, le=64, description="Most candidates in one UNet batch (memory bound on a "
                                 "GPU); the source branch is computed once per chunk.")
    resolution: int = Field(64, ge=32, le=2048, description="Side of generated base images (default for the tiny "
                            "embedded models; paper profile: 512); real photos are resized so "
                            "their longer side is this (both rounded down to what the VAE and UNet can divide).")
    base_guidance: float = Field(7.5, ge=1, le=30, description="Guidance of the base image generation (x, or y for add).")
    zero_terminal_snr: bool = Field(False, description="Rescale the noise schedule to zero terminal SNR with trailing "
                                    "timesteps and guidance rescale (Lin et al. 2024); needs a v-prediction checkpoint.")
    guidance_rescale: float = Field(0.7, ge=0, le=1, description="Guidance rescale φ used with zero_terminal_snr.")
    paste_back: bool = Field(True, description="After decoding, paste the input back outside the mask in pixel space "
                             "(out·m + x·(1−m)), so pixels outside the mask equal the input exactly despite the VAE "
                             "round trip; off keeps the paper's latent-only blending.")
    local: P2PRanges = Field(default_factory=P2PRanges, description="local, texture, add and remove (paper Sec. 7.2.3).")
    global_edit: P2PRanges = Field(default_factory=lambda: P2PRanges(n_cross=Range(low=0.4, high=0.9), n_self=Range(low=0.4, high=0.9),
                                                                     blend_s=Range(low=0.1, high=0.2)),
                                   description="global: blank mask (paper Sec. 7.2.4).")
    style: PnPRanges = Field(default_factory=PnPRanges, description="style: Plug-and-Play on the DDIM-inverted input.")
    background: InpaintRanges = Field(default_factory=InpaintRanges, description="background inpainting candidates.")
    mask_variants: list[str] = Field(default_factory=lambda: ["precise", "dilated_blurred", "bbox"],
                                     description="Mask variants a region task's candidates cycle through (those the row has).")
    pnp_feature_layers: list[str] = Field(default_factory=lambda: ["up_blocks.1.resnets.1"],
                                          description="Module names (fnmatch patterns) of the UNet ResNet blocks whose output "
                                          "PnP injects; the default is PnP's layer on SD 1.x and exists in every 2+ level UNet.")
    pnp_self_layers: list[str] = Field(default_factory=lambda: ["up_blocks.*attn1*"],
                                       description="Self-attention processor names (fnmatch) PnP injects queries and keys in: the decoder.")
    p2p_self_max_tokens: int = Field(16 * 16, ge=1, description="P2P shares self-attention only in layers with at most "
                                     "this many tokens (P2P uses 16×16 on SD at 512 px: the finest maps carry texture, not layout).")
    dtype: str = Field("float32", pattern="^(float32|float16|bfloat16)$", description="Weights and compute dtype (float16 on GPUs).")
    device: Device = Field("auto", description="Stable Diffusion models of the diffusion stages. " + DEVICE_HELP)
