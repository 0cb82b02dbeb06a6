"""Editing with a trained checkpoint: task prediction, classifier-free guidance on image and text,
and sequential-edit thresholding for multi-turn edits.

Guidance (InstructPix2Pix's two-condition form, the paper's scales γ_I = 1.5, γ_T = 5.0):
    ε = ε(∅, ∅) + γ_I · (ε(image, ∅) − ε(∅, ∅)) + γ_T · (ε(image, text) − ε(image, ∅))
"∅ image" is a zero latent and "∅ text" the empty instruction, as the conditioning dropout of
training made them. The task vector conditions all three branches: it says which kind of edit,
the guidance says how strongly to follow the image and the words.

Sequential-edit thresholding (paper Eq. 4): after each turn, keep the previous turn's pixel where
the low-pass-filtered L1 change over RGB (images in [0, 1]) is below α = 0.03; take the new pixel
elsewhere. Small reconstruction drift stops piling up turn after turn; real edits go through.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.diffusion.sampler import pixels_to_unit, to_uint8
from tasks import SampleReject
from trainer.model import EditModel, load_edit_model

log = logging.getLogger("pairforge.edit")
DEFAULT_PREDICTOR = "filters/data/task_predictor_minilm_ft.safetensors"   # .npz: the older logreg


def threshold_edit(previous: np.ndarray, edited: np.ndarray, alpha: float = 0.03, sigma: float = 1.0) -> np.ndarray:
    """Per pixel: ``previous`` where the smoothed change is below ``alpha``, else ``edited``.

    The change is the L1 norm over RGB of the difference (values in [0, 1], so 0…3); ``sigma`` is
    the Gaussian low-pass in pixels (0 = none), which softens the seam between kept and new."""
    import cv2

    if previous.shape != edited.shape or previous.ndim != 3 or previous.shape[2] != 3:
        raise ValueError(f"threshold_edit: images must be HxWx3 of one shape, got {previous.shape} and {edited.shape}")
    d = np.abs(edited.astype(np.float32) - previous.astype(np.float32)).sum(axis=2) / 255.0
    if sigma > 0:
        d = cv2.GaussianBlur(d, (0, 0), sigma)
    keep = d < alpha
    return np.where(keep[..., None], previous, edited)


def _working_size(h: int, w: int, resolution: int, multiple: int) -> tuple[int, int]:
    """The long side at the training resolution, both sides multiples of what the model needs."""
    s = resolution / max(h, w)
    return (max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple))


class Editor:
    """A checkpoint loaded once; ``edit`` one turn, ``edit_turns`` several with thresholding."""

    def __init__(self, checkpoint: str | Path | EditModel, device: str = "cpu",
                 task_predictor: str | None = DEFAULT_PREDICTOR, resolution: int | None = None):
        self.model = checkpoint if isinstance(checkpoint, EditModel) else load_edit_model(checkpoint, device)
        self.model.net.eval()
        cfg = self.model.meta.get("config") or {}
        self.resolution = resolution or (cfg.get("model") or {}).get("resolution") or 512
        self._predictor_path = task_predictor
        self._predictor = None

    @property
    def tasks(self) -> list[str]:
        return self.model.net.tasks.names

    def predict_task(self, instruction: str) -> str:
        """The task predictor's most likely task among those this model has an embedding for."""
        if self._predictor is None:
            if not self._predictor_path:
                raise ValueError("no task given and no task predictor configured; pass --task")
            from filters.task_predictor import load_task_predictor
            self._predictor = load_task_predictor(self._predictor_path)
        proba, names = self._predictor.predict_proba([instruction])
        ranked = sorted(((p, n) for p, n in zip(proba[0], names) if n in self.tasks), reverse=True)
        if not ranked:
            raise ValueError("the task predictor knows none of this model's tasks")
        return ranked[0][1]

    @torch.no_grad()
    def edit(self, image: np.ndarray, instruction: str, task: str | None = None, *, steps: int = 50,
             image_guidance: float = 1.5, text_guidance: float = 5.0, seed: int = 0) -> tuple[np.ndarray, str]:
        """One edit. Returns the edited image (same size as ``image``) and the task used."""
        import cv2

        # 1. check inputs
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise SampleReject("bad_input_image", f"want HxWx3 uint8, got {getattr(image, 'shape', None)}")
        if not (instruction or "").strip():
            raise SampleReject("no_instruction")
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        m = self.model
        task = task or self.predict_task(instruction)
        task_id = torch.tensor([m.net.tasks.id_of(task)] * 3, device=m.device)
        # 2. the input at the working size, encoded
        h, w = image.shape[:2]
        wh, ww = _working_size(h, w, self.resolution, m.pixel_multiple)
        x = cv2.resize(image, (ww, wh), interpolation=cv2.INTER_AREA)
        img_lat = m.encode_images(pixels_to_unit(x)[None])
        image_branches = torch.cat([img_lat, img_lat, torch.zeros_like(img_lat)])
        text_branches = m.encode_text([instruction, "", ""])           # (image,text) (image,∅) (∅,∅)
        # 3. DDIM from noise with two-condition guidance
        sched = m.scheduler
        sched.set_timesteps(steps, device=m.device)
        g = torch.Generator().manual_seed(seed)
        lat = torch.randn(img_lat.shape, generator=g).to(m.device) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([lat] * 3), t)
            full, img_only, uncond = m.net(inp, image_branches, t.expand(3), text_branches, task_ids=task_id).chunk(3)
            pred = uncond + image_guidance * (img_only - uncond) + text_guidance * (full - img_only)
            lat = sched.step(pred, t, lat).prev_sample
        # 4. decode at the input's size
        y = to_uint8(m.decode(lat))[0]
        return cv2.resize(y, (w, h), interpolation=cv2.INTER_CUBIC), task

    def edit_turns(self, image: np.ndarray, instructions: list[str], tasks: list[str | None] | None = None, *,
                   alpha: float = 0.03, sigma: float = 1.0, **kw) -> list[tuple[np.ndarray, str]]:
        """Multi-turn editing: each turn edits the previous result, then thresholding (α = 0 turns
        it off) keeps the previous pixel wherever the change is too small to be an edit."""
        tasks = tasks or [None] * len(instructions)
        seed = kw.pop("seed", 0)
        cur, out = image, []
        for i, (ins, task) in enumerate(zip(instructions, tasks)):
            new, used = self.edit(cur, ins, task, seed=seed + i, **kw)
            if alpha > 0:
                new = threshold_edit(cur, new, alpha, sigma)
            out.append((new, used))
            cur = new
        return out
