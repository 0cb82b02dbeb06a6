"""Stable Diffusion components by spec: ``tiny-random`` (random-init UNet, VAE and CLIP text encoder
built from small configs with the real diffusers / transformers classes, as diffusers' fast tests
do) or a hub id / local folder in the diffusers layout (``models.text_to_image``, ``models.inpaint``).

``random-sd15`` is the full-size Stable Diffusion 1.5 architecture (860M-parameter UNet, its VAE,
a 12-layer 768-wide CLIP text encoder) with random weights: real-size speed and memory checks on a
GPU where no checkpoint can be fetched. Its images mean nothing; never use it for data.

Nothing here downloads for ``tiny-random`` / ``random-sd15``; the tokenizer is the offline WordPiece
one of ``pipeline.models.tiny``. ``SDComponents`` is what every generator in ``pipeline.diffusion`` takes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.models.device import resolve_device
from pipeline.models.tiny import check_local_path, is_tiny, seeded, tiny_tokenizer

# Two UNet shapes for tests (the attention control must install on any configuration).
TINY_UNETS: dict[str, dict[str, Any]] = {
    # diffusers' fast-test UNet: 2 levels, attention at the coarse level only
    "default": dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8),
    # 3 levels, attention at the two fine levels (the SD 1.x arrangement), 1 layer per block,
    # 2 transformer layers per attention block, a different head size
    "deep": dict(block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=32,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 attention_head_dim=4, transformer_layers_per_block=2),
}
TINY_TEXT_DIM = 32

# Stable Diffusion 1.5's shapes (runwayml/stable-diffusion-v1-5 configs), for ``random-sd15``.
SD15_UNET: dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, cross_attention_dim=768,
    attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE: dict[str, Any] = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT: dict[str, Any] = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12)


@dataclass
class SDComponents:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any            # a DDIMScheduler (deterministic, eta 0): generation, inversion and edits share it
    spec: str = "tiny-random"

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be a multiple of this: the VAE's factor times the UNet's downsampling."""
        return self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype


# The pipeline's tiny UNet multiplies its cross-attention keys and values by this. At a random init
# the text pathway adds little to the residual stream, so a prompt change barely moves the image: an
# add or remove edit on a generated base changed 0.2–0.9% of a unit inside the object (under the
# minimum-change floor, every candidate a no_change reject). A trained SD is steered by its prompt;
# ×4 makes prompt-to-prompt edits on the stand-in visible (some candidates 38–43% of the object's
# pixels changed), while strong injection still keeps others close to the source, as it should.
TINY_TEXT_GAIN = 4.0


def tiny_unet(shape: str = "default", in_channels: int = 4, seed: int = 0x5D01, text_gain: float = 1.0):
    import torch
    from diffusers import UNet2DConditionModel

    with seeded(seed + in_channels):
        unet = UNet2DConditionModel(in_channels=in_channels, out_channels=4, cross_attention_dim=TINY_TEXT_DIM,
                                    norm_num_groups=16, **TINY_UNETS[shape])
    if text_gain != 1.0:
        with torch.no_grad():
            for name, mod in unet.named_modules():
                if name.endswith("attn2"):          # cross-attention (attn1 is self-attention)
                    mod.to_k.weight.mul_(text_gain)
                    mod.to_v.weight.mul_(text_gain)
    return unet


def tiny_vae():
    from diffusers import AutoencoderKL

    with seeded(0x5D02):
        return AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                             down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                             norm_num_groups=16)


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_tokenizer()
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=TINY_TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=tok.model_max_length,
                         bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    with seeded(0x5D03):
        return CLIPTextModel(cfg), tok


def random_sd15(device: str, inpaint: bool = False, seed: int = 0x5D15) -> SDComponents:
    """Full-size SD 1.5 architecture, random weights, built directly on ``device`` (an 860M-parameter
    random init on the CPU takes longer than the benchmark it serves)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_tokenizer()
    text_cfg = CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=tok.model_max_length,
                              bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                              pad_token_id=tok.pad_token_id, **SD15_TEXT)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=9 if inpaint else 4, out_channels=4, **SD15_UNET)
        vae, text = AutoencoderKL(in_channels=3, out_channels=3, **SD15_VAE), CLIPTextModel(text_cfg)
    return SDComponents(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=make_scheduler(),
                        spec=RANDOM_SD15)


def make_scheduler(config: dict | None = None, *, zero_terminal_snr: bool = False):
    """DDIM (eta 0, deterministic) — what P2P, PnP and DDIM inversion assume. With zero terminal SNR
    the betas are rescaled and timesteps are "trailing" so the first step starts from pure noise."""
    from diffusers import DDIMScheduler

    base = dict(config or dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                               num_train_timesteps=1000, prediction_type="epsilon"))
    base.update(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if zero_terminal_snr:
        base.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return DDIMScheduler.from_config(base)


def _torch_dtype(name: str):
    import torch
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]




def load_sd(spec: str = "tiny-random", *, role: str = "text_to_image", inpaint: bool = False,
            zero_terminal_snr: bool = False, unet_shape: str = "default", device: str = "auto",
            dtype: str = "float32") -> SDComponents:
    """Components for text-to-image / P2P / PnP (``inpaint=False``) or the 9-channel inpainting UNet.

    ``role`` names the config field in errors (``models.text_to_image`` / ``models.inpaint``)."""
    if is_tiny(spec):
        text_encoder, tok = tiny_text_encoder()
        unet = tiny_unet(unet_shape, in_channels=9 if inpaint else 4, text_gain=TINY_TEXT_GAIN)
        # v-prediction for the tiny model under zero SNR: epsilon cannot be predicted at SNR 0
        sched_cfg = None if not zero_terminal_snr else dict(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
            prediction_type="v_prediction")
        comps = SDComponents(unet=unet, vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tok,
                             scheduler=make_scheduler(sched_cfg, zero_terminal_snr=zero_terminal_snr), spec=TINY_SPEC)
    elif spec == RANDOM_SD15:
        if zero_terminal_snr:
            raise ValueError(f"diffusion.zero_terminal_snr: {RANDOM_SD15!r} predicts epsilon; turn the option off")
        comps = random_sd15(resolve_device(device), inpaint=inpaint)
    else:
        check_local_path(spec, role)
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(spec, subfolder="unet")
        want = 9 if inpaint else 4
        if unet.config.in_channels != want:
            raise ValueError(f"models.{role}: {spec!r} has a UNet with {unet.config.in_channels} input channels, "
                             f"this role needs {want} ({'an inpainting' if inpaint else 'a text-to-image'} checkpoint)")
        sched_cfg = dict(DDIMScheduler.load_config(spec, subfolder="scheduler"))
        if zero_terminal_snr and sched_cfg.get("prediction_type", "epsilon") == "epsilon":
            raise ValueError(f"diffusion.zero_terminal_snr: {spec!r} predicts epsilon, which is undefined at zero "
                             "SNR; use a v-prediction checkpoint or turn the option off")
        comps = SDComponents(unet=unet, vae=AutoencoderKL.from_pretrained(spec, subfolder="vae"),
                             text_encoder=CLIPTextModel.from_pretrained(spec, subfolder="text_encoder"),
                             tokenizer=AutoTokenizer.from_pretrained(spec, subfolder="tokenizer"),
                             scheduler=make_scheduler(sched_cfg, zero_terminal_snr=zero_terminal_snr), spec=spec)
    dev, dt = resolve_device(device), _torch_dtype(dtype)
    for m in (comps.unet, comps.vae, comps.text_encoder):
        m.to(dev).eval().requires_grad_(False)
        if dt != _torch_dtype("float32"):     # production GPUs; load-time dtype would be better, later
            m.to(dtype=dt)
    return comps


def with_unet(comps: SDComponents, unet) -> SDComponents:
    """The same components around another UNet (tests: two UNet shapes, one VAE and text encoder)."""
    return replace(comps, unet=unet.to(comps.device, comps.dtype).eval().requires_grad_(False))


TINY_SPEC = "tiny-random"
RANDOM_SD15 = "random-sd15"
