"""The editing model: an InstructPix2Pix-style UNet conditioned on a learned task embedding.

  UNet input      noisy latent ⊕ latent of the input image (8 channels; the 4 extra ``conv_in``
                  channels start at zero when the UNet comes from a text-to-image checkpoint, so
                  training starts from exactly the text-to-image model)
  cross-attention instruction tokens from the (frozen) text encoder + one task token
  timestep        the task vector is added to the timestep embedding (``class_embed_type="identity"``)

The task embedding lives OUTSIDE the UNet (``TaskEmbedding``): task inversion optimises one new
vector while the UNet and the text encoder stay bit-for-bit what they were. The embedding and the
forward pass under a task are defined once, in ``trainer/pipeline_emu_edit.py`` (the diffusers
pipeline users load), and used here for training.

Checkpoint layout: a diffusers pipeline folder that ``EmuEditPipeline.from_pretrained`` and
``DiffusionPipeline.from_pretrained`` load without pairforge:
  model_index.json, pipeline_emu_edit.py             the pipeline (and its code, for custom_pipeline)
  unet/ vae/ text_encoder/ tokenizer/ scheduler/      ``save_pretrained`` of each component
  task_embedding/                                     TaskEmbedding: config (task names) + safetensors
  trainer.json                                        step, the resolved config, the data consumed
  README.md                                           model card (tasks, data, recipe, eval numbers)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks import TASK_NAMES
from trainer.pipeline_emu_edit import EmuEditPipeline, TaskEmbedding, task_conditioned_noise

LATENT_CHANNELS = 4


class TaskConditionedUNet(nn.Module):
    """UNet + task embedding: everything that training updates, in one module for DDP and EMA."""

    def __init__(self, unet, tasks: TaskEmbedding):
        super().__init__()
        self.unet, self.tasks = unet, tasks

    def forward(self, noisy: torch.Tensor, image_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, task_ids: torch.Tensor | None = None,
                task_vectors: torch.Tensor | None = None) -> torch.Tensor:
        return task_conditioned_noise(self.unet, self.tasks, noisy, image_latents, timesteps, text_states,
                                      task_ids=task_ids, task_vectors=task_vectors)


def editing_unet_from_text_to_image(t2i_unet):
    """Same UNet with 8 input channels (extra ones zero) and an identity class embedding."""
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in t2i_unet.config.items() if k != "_use_default_values"}   # else diffusers resets
    cfg.update(in_channels=2 * LATENT_CHANNELS, class_embed_type="identity")          # these two to defaults
    unet = UNet2DConditionModel.from_config(cfg)
    assert unet.config.class_embed_type == "identity" and unet.config.in_channels == 2 * LATENT_CHANNELS
    state = t2i_unet.state_dict()
    w = state["conv_in.weight"]
    new_w = torch.zeros(w.shape[0], 2 * LATENT_CHANNELS, *w.shape[2:], dtype=w.dtype)
    new_w[:, :w.shape[1]] = w
    state["conv_in.weight"] = new_w
    unet.load_state_dict(state, strict=True)
    return unet


def time_embed_dim(unet) -> int:
    return unet.time_embedding.linear_2.out_features


def is_trainer_checkpoint(path: str | Path) -> bool:
    te = Path(path) / "task_embedding"
    return (te / "config.json").exists() or (te / "tasks.json").exists()     # tasks.json: before pipelines


@dataclass
class EditModel:
    """Everything an edit needs. ``net`` is trained; VAE and text encoder stay frozen."""
    net: TaskConditionedUNet
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any                 # DDIMScheduler: adds training noise and samples at inference
    meta: dict

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def device(self):
        return next(self.net.parameters()).device

    @property
    def pixel_multiple(self) -> int:
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return vae_scale * 2 ** (len(self.net.unet.config.block_out_channels) - 1)

    # -- encoders (frozen) -------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.text_encoder(enc["input_ids"].to(self.device))[0]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images → scaled latents. The distribution's mode, not a sample: deterministic,
        and the VAE posterior's spread is small next to the diffusion noise."""
        images = images.to(self.device, self.vae.dtype)
        return self.vae.encode(images).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def to(self, device) -> "EditModel":
        for m in (self.net, self.vae, self.text_encoder):
            m.to(device)
        return self

    # -- checkpoint ----------------------------------------------------------------------------
    def pipeline(self, meta: dict | None = None) -> EmuEditPipeline:
        """This model as the diffusers pipeline (the same module objects, nothing copied). Its
        working resolution is the training one (``meta``: what ``save`` is about to record)."""
        cfg = ({**self.meta, **(meta or {})}).get("config") or {}
        resolution = (cfg.get("model") or {}).get("resolution") or 512
        return EmuEditPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                               unet=self.net.unet, scheduler=self.scheduler, task_embedding=self.net.tasks,
                               resolution=resolution)

    def save(self, path: str | Path, **meta) -> Path:
        """The pipeline's ``save_pretrained`` (safetensors), ``trainer.json`` and the model card."""
        from trainer.model_card import write_model_card

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.pipeline(meta).save_pretrained(path)
        (path / "trainer.json").write_text(json.dumps({**self.meta, **meta}, indent=1, default=str))
        write_model_card(path)
        return path


def _tiny_components(cfg) -> tuple:
    from pipeline.models.sd import TINY_UNETS, tiny_text_encoder, tiny_unet, tiny_vae

    if cfg.model.unet_shape not in TINY_UNETS:
        raise ValueError(f"model.unet_shape: unknown tiny UNet {cfg.model.unet_shape!r}")
    text_encoder, tok = tiny_text_encoder()
    return tiny_unet(cfg.model.unet_shape, in_channels=LATENT_CHANNELS), tiny_vae(), text_encoder, tok, None


def _pretrained_components(spec: str) -> tuple:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from pipeline.models.tiny import check_local_path

    check_local_path(spec, "model.base")
    unet = UNet2DConditionModel.from_pretrained(spec, subfolder="unet")
    if unet.config.in_channels != LATENT_CHANNELS:
        raise ValueError(f"model.base: {spec!r} has a UNet with {unet.config.in_channels} input channels; "
                         f"a text-to-image checkpoint ({LATENT_CHANNELS}) or a checkpoint of this trainer is needed")
    return (unet, AutoencoderKL.from_pretrained(spec, subfolder="vae"),
            CLIPTextModel.from_pretrained(spec, subfolder="text_encoder"),
            AutoTokenizer.from_pretrained(spec, subfolder="tokenizer"),
            dict(DDIMScheduler.load_config(spec, subfolder="scheduler")))


def build_edit_model(cfg) -> EditModel:
    """A fresh editing model from ``cfg.model.base`` (tiny-random or a text-to-image checkpoint),
    or the checkpoint itself when ``base`` is one this trainer saved."""
    from pipeline.models.sd import make_scheduler
    from pipeline.models.tiny import is_tiny, seeded

    if not is_tiny(cfg.model.base) and is_trainer_checkpoint(cfg.model.base):
        return load_edit_model(cfg.model.base)
    unet, vae, text_encoder, tok, sched_cfg = (_tiny_components(cfg) if is_tiny(cfg.model.base)
                                               else _pretrained_components(cfg.model.base))
    sched_cfg = dict(sched_cfg or dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000))
    sched_cfg["prediction_type"] = cfg.model.prediction_type
    scheduler = make_scheduler(sched_cfg, zero_terminal_snr=cfg.model.zero_terminal_snr)
    unet = editing_unet_from_text_to_image(unet)
    with seeded(cfg.seed + 0x7A5C):
        tasks = TaskEmbedding(list(TASK_NAMES), time_embed_dim(unet), unet.config.cross_attention_dim)
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    meta = {"base": cfg.model.base, "zero_terminal_snr": cfg.model.zero_terminal_snr}
    return EditModel(TaskConditionedUNet(unet, tasks), vae, text_encoder, tok, scheduler, meta)


def _load_task_embedding(folder: Path) -> TaskEmbedding:
    if (folder / "config.json").exists():
        return TaskEmbedding.from_pretrained(folder)
    from safetensors.torch import load_file      # checkpoints saved before the pipeline: tasks.json + weights
    info = json.loads((folder / "tasks.json").read_text())
    tasks = TaskEmbedding(info["names"], info["time_dim"], info["cross_dim"])
    tasks.load_state_dict(load_file(folder / "model.safetensors"))
    return tasks


def load_edit_model(path: str | Path, device: str = "cpu") -> EditModel:
    """A checkpoint as trainable modules (pairforge's own classes; users load the pipeline instead)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    path = Path(path)
    if not is_trainer_checkpoint(path):
        raise FileNotFoundError(f"{path}: not a checkpoint of `pairforge train` (no task_embedding/)")
    tasks = _load_task_embedding(path / "task_embedding")
    unet = UNet2DConditionModel.from_pretrained(path / "unet")
    vae = AutoencoderKL.from_pretrained(path / "vae").requires_grad_(False).eval()
    te = CLIPTextModel.from_pretrained(path / "text_encoder").requires_grad_(False).eval()
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    sched = DDIMScheduler.from_pretrained(path / "scheduler")
    meta = json.loads((path / "trainer.json").read_text()) if (path / "trainer.json").exists() else {}
    return EditModel(TaskConditionedUNet(unet, tasks), vae, te, tok, sched, meta).to(device)
