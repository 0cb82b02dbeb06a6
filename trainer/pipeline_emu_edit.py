"""EmuEditPipeline: the editor that ``pairforge train`` fits, as a diffusers pipeline.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("runs/demo/final", trust_remote_code=True)   # or a Hub id
    edited = pipe(Image.open("photo.png"), "make it look like winter", task="global").images[0]

This file is self-contained on purpose: it imports only torch, numpy, PIL and diffusers, so a
checkpoint folder (or its copy on the Hub) carries it and loads where pairforge is not installed —
``model_index.json`` names it (``"_class_name": ["pipeline_emu_edit", "EmuEditPipeline"]``) and
``task_embedding/`` holds a copy for the ``TaskEmbedding`` component. ``pairforge edit`` and
``pairforge eval`` call this class; there is no second sampling loop.

The model (InstructPix2Pix-style, Emu Edit's task conditioning):
  UNet input      noisy latent ⊕ latent of the input image (8 channels)
  cross-attention instruction tokens from the frozen text encoder + one token projected from the
                  task vector
  timestep        the task vector is added to the timestep embedding (``class_embed_type="identity"``,
                  so the UNet needs ``class_labels``: a bare InstructPix2Pix pipeline cannot run it)

Guidance (InstructPix2Pix's two-condition form, the paper's scales γ_I = 1.5, γ_T = 5.0):
    ε = ε(∅, ∅) + γ_I · (ε(image, ∅) − ε(∅, ∅)) + γ_T · (ε(image, text) − ε(image, ∅))
"∅ image" is a zero latent and "∅ text" the empty instruction, as training's conditioning dropout
made them. The task vector conditions all three branches.

Multi-turn editing (``edit_turns``) applies sequential-edit thresholding (paper Eq. 4): after each
turn, keep the previous turn's pixel where the low-pass-filtered L1 change over RGB (images in
[0, 1]) is below α = 0.03, the new pixel elsewhere, so reconstruction drift does not pile up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import nn

from diffusers import DiffusionPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

PIPELINE_FILE = "pipeline_emu_edit"        # this file's name in a checkpoint folder (without .py)
DEFAULT_TASK_PREDICTOR = "filters/data/task_predictor_minilm_ft.safetensors"   # pairforge's shipped one


class TaskEmbedding(ModelMixin, ConfigMixin):
    """One learned vector per task (added to the timestep embedding) and its projection to one
    cross-attention token. Lives outside the UNet: task inversion optimises one new row while the
    UNet stays bit-for-bit what it was. Saved with ``save_pretrained`` (config + safetensors)."""

    @register_to_config
    def __init__(self, names: list[str], time_dim: int, cross_dim: int):
        super().__init__()
        self.table = nn.Embedding(len(names), time_dim)
        nn.init.normal_(self.table.weight, std=0.02)   # small: a fresh table barely moves a pretrained UNet
        self.to_token = nn.Linear(time_dim, cross_dim)

    @property
    def names(self) -> list[str]:
        return list(self.config.names)

    def id_of(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"task {name!r} has no embedding in this model; known: {', '.join(self.names)}")
        return self.names.index(name)

    def add_task(self, name: str, vector: torch.Tensor) -> int:
        """Append a row (task inversion's result); the existing rows are copied unchanged."""
        if name in self.names:
            raise ValueError(f"task {name!r} already has an embedding")
        old = self.table.weight.data
        table = nn.Embedding(old.shape[0] + 1, old.shape[1]).to(old)
        table.weight.data[:-1] = old
        table.weight.data[-1] = vector.detach().to(old)
        self.table = table
        self.register_to_config(names=self.names + [name])
        return len(self.names) - 1

    def forward(self, task_ids: torch.Tensor | None = None, vectors: torch.Tensor | None = None):
        """(task vectors for ``class_labels``, one cross-attention token per row)."""
        vec = self.table(task_ids) if vectors is None else vectors
        return vec, self.to_token(vec.to(self.to_token.weight.dtype)).unsqueeze(1)


def task_conditioned_noise(unet, task_embedding: TaskEmbedding, noisy: torch.Tensor, image_latents: torch.Tensor,
                           timesteps, text_states: torch.Tensor, task_ids: torch.Tensor | None = None,
                           task_vectors: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's prediction under a task: the one forward pass that training and sampling share."""
    vec, token = task_embedding(task_ids, task_vectors)
    states = torch.cat([text_states, token.to(text_states.dtype)], dim=1)
    x = torch.cat([noisy, image_latents], dim=1)
    return unet(x, timesteps, encoder_hidden_states=states, class_labels=vec.to(noisy.dtype)).sample


def _gaussian_blur(d: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian low-pass (radius 4σ, mirrored border: OpenCV's default for float images)."""
    r = max(1, int(round(4 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-x * x / (2 * sigma * sigma))
    k /= k.sum()
    pad = np.pad(d, r, mode="reflect")
    pad = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, pad)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, pad).astype(np.float32)


def threshold_edit(previous: np.ndarray, edited: np.ndarray, alpha: float = 0.03, sigma: float = 1.0) -> np.ndarray:
    """Per pixel: ``previous`` where the smoothed change is below ``alpha``, else ``edited``.

    The change is the L1 norm over RGB of the difference (values in [0, 1], so 0…3); ``sigma`` is
    the Gaussian low-pass in pixels (0 = none), which softens the seam between kept and new."""
    previous, edited = np.asarray(previous), np.asarray(edited)
    if previous.shape != edited.shape or previous.ndim != 3 or previous.shape[2] != 3:
        raise ValueError(f"threshold_edit: images must be HxWx3 of one shape, got {previous.shape} and {edited.shape}")
    d = np.abs(edited.astype(np.float32) - previous.astype(np.float32)).sum(axis=2) / 255.0
    if sigma > 0:
        d = _gaussian_blur(d, sigma)
    keep = d < alpha
    return np.where(keep[..., None], previous, edited)


def working_size(h: int, w: int, resolution: int, multiple: int) -> tuple[int, int]:
    """The long side at the training resolution, both sides multiples of what the model needs."""
    s = resolution / max(h, w)
    return (max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple))


def _as_uint8(image) -> np.ndarray:
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"image: want a PIL image or an HxWx3 uint8 array, got {type(image).__name__} "
                     f"{getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}")


@dataclass
class EmuEditPipelineOutput(BaseOutput):
    images: list                  # PIL images, or HxWx3 uint8 arrays with output_type="np"
    tasks: list[str]              # the task each image was edited under (given or predicted)


class EmuEditPipeline(DiffusionPipeline):
    """Instruction-based image editing with a task-conditioned InstructPix2Pix UNet (Emu Edit).

    ``task`` is one of ``pipe.tasks``; without one, ``pipe.task_predictor`` (anything with
    ``predict_proba(list[str]) -> (probabilities, names)``) picks it. When none is set and pairforge
    is importable, its shipped MiniLM task predictor is loaded on first need; with ``task`` given,
    no predictor is ever loaded."""

    model_cpu_offload_seq = "text_encoder->task_embedding->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, task_embedding, resolution: int = 512):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, task_embedding=task_embedding)
        self.register_to_config(resolution=resolution)
        self.task_predictor = None

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return self.task_embedding.names

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this (VAE × UNet downsampling)."""
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def predict_task(self, instruction: str) -> str:
        """The task predictor's most likely task among those this model has an embedding for."""
        if self.task_predictor is None:
            # pairforge's own predictor, when pairforge is installed. Imported by name: diffusers
            # scans a remote-code file's import statements and refuses to load it when one is missing
            import importlib
            try:
                load_task_predictor = importlib.import_module("filters.task_predictor").load_task_predictor
            except ImportError:
                load_task_predictor = None
            if load_task_predictor is None:
                raise ValueError("no task given and no task predictor: pass task=one of "
                                 f"{self.tasks}, or set pipe.task_predictor")
            self.task_predictor = load_task_predictor(DEFAULT_TASK_PREDICTOR)
        proba, names = self.task_predictor.predict_proba([instruction])
        ranked = sorted(((p, n) for p, n in zip(proba[0], names) if n in self.tasks), reverse=True)
        if not ranked:
            raise ValueError("the task predictor knows none of this model's tasks")
        return ranked[0][1]

    def encode_prompt(self, prompts: list[str], device) -> torch.Tensor:
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.text_encoder(enc["input_ids"].to(device))[0]

    def encode_image(self, image: np.ndarray, device) -> torch.Tensor:
        """HxWx3 uint8 → scaled latent: the posterior's mode (deterministic; its spread is small
        next to the diffusion noise)."""
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float()[None] / 127.5 - 1.0
        x = x.to(device=device, dtype=self.vae.dtype)
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Latent → HxWx3 uint8, rounded as diffusers' image processor does."""
        x = self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)
        x = (x.float() / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        return np.round(x * 255).astype(np.uint8)

    # -- one edit ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image, instruction: str, task: str | None = None, *, image_guidance_scale: float = 1.5,
                 guidance_scale: float = 5.0, num_inference_steps: int = 50,
                 generator: torch.Generator | None = None, output_type: str = "pil",
                 return_dict: bool = True) -> EmuEditPipelineOutput | tuple:
        """Edit ``image`` (PIL or HxWx3 uint8) as ``instruction`` says, under ``task`` (default:
        predicted). Returns the edited image at the input's size."""
        # 1. check inputs, pick the task
        pixels = _as_uint8(image)
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction: want a non-empty string")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}")
        if output_type not in ("pil", "np"):
            raise ValueError(f"output_type: pil or np, got {output_type!r}")
        task = task or self.predict_task(instruction)
        device = self._execution_device
        task_ids = torch.tensor([self.task_embedding.id_of(task)] * 3, device=device)

        # 2. the input image at the working size (long side = training resolution), encoded
        h, w = pixels.shape[:2]
        wh, ww = working_size(h, w, self.config.resolution, self.pixel_multiple)
        x = np.asarray(PIL.Image.fromarray(pixels).resize((ww, wh), PIL.Image.BICUBIC))
        image_latents = self.encode_image(x, device).to(self.unet.dtype)

        # 3. conditioning of the three guidance branches: (image, text) (image, ∅) (∅, ∅)
        text_states = self.encode_prompt([instruction, "", ""], device)
        image_branches = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])

        # 4. starting noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = randn_tensor(image_latents.shape, generator=generator, device=device, dtype=image_latents.dtype)
        latents = latents * self.scheduler.init_noise_sigma

        # 5. denoising loop with two-condition guidance
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = self.scheduler.scale_model_input(torch.cat([latents] * 3), t)
            full, image_only, uncond = task_conditioned_noise(self.unet, self.task_embedding, inp, image_branches, t,
                                                              text_states, task_ids=task_ids).chunk(3)
            pred = uncond + image_guidance_scale * (image_only - uncond) + guidance_scale * (full - image_only)
            latents = self.scheduler.step(pred, t, latents).prev_sample

        # 6. decode, back to the input's size
        y = self.decode_latents(latents)
        out = PIL.Image.fromarray(y).resize((w, h), PIL.Image.BICUBIC)
        self.maybe_free_model_hooks()
        result = [out if output_type == "pil" else np.asarray(out)]
        if not return_dict:
            return result, [task]
        return EmuEditPipelineOutput(images=result, tasks=[task])

    # -- several turns -----------------------------------------------------------------------------
    def edit_turns(self, image, instructions: list[str], tasks: list[str | None] | None = None, *,
                   alpha: float = 0.03, sigma: float = 1.0, generator: torch.Generator | None = None,
                   **kwargs: Any) -> EmuEditPipelineOutput:
        """Multi-turn editing: each turn edits the previous result, then sequential-edit
        thresholding (α = 0 turns it off) keeps the previous pixel wherever the change is too small
        to be an edit. One generator serves all turns in order. Returns one image per turn."""
        tasks = list(tasks) if tasks else [None] * len(instructions)
        if len(tasks) != len(instructions):
            raise ValueError(f"tasks: one per instruction ({len(instructions)}), got {len(tasks)}")
        as_pil = kwargs.pop("output_type", "pil") == "pil"
        kwargs.pop("return_dict", None)
        cur, images, used = _as_uint8(image), [], []
        for ins, task in zip(instructions, tasks):
            out = self(cur, ins, task, generator=generator, output_type="np", **kwargs)
            new = threshold_edit(cur, out.images[0], alpha, sigma) if alpha > 0 else out.images[0]
            images.append(PIL.Image.fromarray(new) if as_pil else new)
            used.append(out.tasks[0])
            cur = new
        return EmuEditPipelineOutput(images=images, tasks=used)

    # -- saving --------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs):
        """diffusers' save_pretrained (safetensors), then make the folder load without pairforge:
        this file beside ``model_index.json`` and in ``task_embedding/``, and ``model_index.json``
        pointing at it."""
        import inspect
        import json
        import os
        import shutil

        if not safe_serialization:
            raise ValueError("EmuEditPipeline saves safetensors only")
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        src = inspect.getsourcefile(EmuEditPipeline) or __file__
        for folder in (save_directory, os.path.join(save_directory, "task_embedding")):
            dst = os.path.join(folder, f"{PIPELINE_FILE}.py")
            if os.path.abspath(src) != os.path.abspath(dst):
                shutil.copyfile(src, dst)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [PIPELINE_FILE, "EmuEditPipeline"]
        index["task_embedding"] = [PIPELINE_FILE, "TaskEmbedding"]
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
