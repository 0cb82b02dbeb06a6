"""``pairforge edit`` / ``pairforge eval``'s way into a trained checkpoint: a thin wrapper around
``EmuEditPipeline`` (trainer/pipeline_emu_edit.py), which holds the one implementation of task
prediction, three-branch guidance and sequential-edit thresholding. What this adds is pairforge's
bookkeeping: bad inputs become counted ``SampleReject``s, seeds become generators, and the
checkpoint's ``trainer.json`` is at hand for eval.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from tasks import SampleReject
from trainer.model import EditModel
from trainer.pipeline_emu_edit import DEFAULT_TASK_PREDICTOR, EmuEditPipeline, threshold_edit

log = logging.getLogger("pairforge.edit")
DEFAULT_PREDICTOR = DEFAULT_TASK_PREDICTOR        # .npz: the older logreg

__all__ = ["Editor", "load_pipeline", "threshold_edit", "DEFAULT_PREDICTOR"]


def load_pipeline(checkpoint: str | Path, device: str = "cpu") -> EmuEditPipeline:
    """A checkpoint folder as the pipeline, with pairforge's own classes (no dynamic module; also
    reads checkpoints saved before they were pipeline folders)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from trainer.model import _load_task_embedding, is_trainer_checkpoint

    path = Path(checkpoint)
    if not is_trainer_checkpoint(path):
        raise FileNotFoundError(f"{path}: not a checkpoint of `pairforge train` (no task_embedding/)")
    # assembled from the components with this code's classes: from_pretrained would run the copy of
    # pipeline_emu_edit.py saved in the folder, which may be older than the code that calls it
    index = json.loads((path / "model_index.json").read_text()) if (path / "model_index.json").exists() else {}
    meta = json.loads((path / "trainer.json").read_text()) if (path / "trainer.json").exists() else {}
    resolution = (index.get("resolution") or ((meta.get("config") or {}).get("model") or {}).get("resolution")
                  or 512)
    return EmuEditPipeline(vae=AutoencoderKL.from_pretrained(path / "vae"),
                           text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder"),
                           tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
                           unet=UNet2DConditionModel.from_pretrained(path / "unet"),
                           scheduler=DDIMScheduler.from_pretrained(path / "scheduler"),
                           task_embedding=_load_task_embedding(path / "task_embedding"),
                           resolution=resolution).to(device)


class Editor:
    """A checkpoint loaded once as the pipeline; ``edit`` one turn, ``edit_turns`` several."""

    def __init__(self, checkpoint: str | Path | EditModel, device: str = "cpu",
                 task_predictor: str | None = DEFAULT_PREDICTOR, resolution: int | None = None):
        if isinstance(checkpoint, EditModel):
            self.pipe, self.meta = checkpoint.pipeline(), checkpoint.meta
        else:
            self.pipe = load_pipeline(checkpoint, device)
            p = Path(checkpoint) / "trainer.json"
            self.meta = json.loads(p.read_text()) if p.exists() else {}
        if resolution:
            self.pipe.register_to_config(resolution=resolution)
        self.pipe.set_progress_bar_config(disable=True)
        self._predictor_path = task_predictor

    @property
    def tasks(self) -> list[str]:
        return self.pipe.tasks

    def predict_task(self, instruction: str) -> str:
        if self.pipe.task_predictor is None:
            if not self._predictor_path:
                raise ValueError("no task given and no task predictor configured; pass --task")
            from filters.task_predictor import load_task_predictor
            self.pipe.task_predictor = load_task_predictor(self._predictor_path)
        return self.pipe.predict_task(instruction)

    @staticmethod
    def _check(image, instruction: str) -> None:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise SampleReject("bad_input_image", f"want HxWx3 uint8, got {getattr(image, 'shape', None)}")
        if not (instruction or "").strip():
            raise SampleReject("no_instruction")

    def _kw(self, steps: int, image_guidance: float, text_guidance: float, seed: int) -> dict:
        return dict(num_inference_steps=steps, image_guidance_scale=image_guidance, guidance_scale=text_guidance,
                    generator=torch.Generator().manual_seed(seed), output_type="np")

    def edit(self, image: np.ndarray, instruction: str, task: str | None = None, *, steps: int = 50,
             image_guidance: float = 1.5, text_guidance: float = 5.0, seed: int = 0) -> tuple[np.ndarray, str]:
        """One edit: the pipeline with a CPU generator seeded ``seed``. Returns (image, task used)."""
        self._check(image, instruction)
        out = self.pipe(image, instruction, task or self.predict_task(instruction),
                        **self._kw(steps, image_guidance, text_guidance, seed))
        return out.images[0], out.tasks[0]

    def edit_turns(self, image: np.ndarray, instructions: list[str], tasks: list[str | None] | None = None, *,
                   alpha: float = 0.03, sigma: float = 1.0, steps: int = 50, image_guidance: float = 1.5,
                   text_guidance: float = 5.0, seed: int = 0) -> list[tuple[np.ndarray, str]]:
        """Multi-turn editing through ``EmuEditPipeline.edit_turns`` (one generator seeded ``seed``
        for all turns, so turn 1 equals ``edit`` with the same seed)."""
        for ins in instructions:
            self._check(image, ins)
        tasks = [t or self.predict_task(ins) for t, ins in zip(tasks or [None] * len(instructions), instructions)]
        out = self.pipe.edit_turns(image, instructions, tasks, alpha=alpha, sigma=sigma,
                                   **self._kw(steps, image_guidance, text_guidance, seed))
        return list(zip(out.images, out.tasks))
