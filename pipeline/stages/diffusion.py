"""Diffusion stages (DESIGN.md §1: "Base image" and "Edit").

``DiffusionBaseStage`` runs before grounding: for the diffusion tasks it puts the image to be
grounded into ``input_png`` — a base generated from the caption (local, texture, remove, global on
caption-only rows), from the *output* caption for add (y holds the added object), or the row's real
photo resized to the diffusion resolution (every other case). What regenerates the base is stored
in ``params`` as ``{"base": ...}``.

``DiffusionEditStage`` runs after grounding and writes ``candidates`` (ten by default, each with
its input, output, mask, variant and every sampled value); ``output_png`` stays empty for the
filter stage, which keeps the best passing candidate. Region rows without masks are rejected
``no_mask``; for add the pair is flipped so x is the edited image and y the base.
"""
from __future__ import annotations

import json

import cv2
import numpy as np

from pipeline.models.provenance import add_models, model_ref
from pipeline.schema import reject
from pipeline.sources import decode_png, encode_png
from pipeline.stages.base import Stage
from tasks import get_task

REGION_TASKS = frozenset({"local", "texture", "add", "remove"})


def _answer(row: dict) -> dict:
    return json.loads(row["answer"]) if row["answer"] else {}


def _base_seed(row_seed: int) -> int:
    return (int(row_seed) ^ 0xBA5E) & 0x7FFFFFFFFFFFFFFF


def row_masks(row: dict, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """variant → HxW uint8 at the image's size (nearest-neighbour if the grounding ran on another size)."""
    out = {}
    for m in row.get("masks") or []:
        if not m or not m.get("png"):
            continue
        a = decode_png(m["png"])
        a = a[..., 0] if a.ndim == 3 else a
        if a.shape != shape:
            a = cv2.resize(a, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        out[m["variant"]] = a.astype(np.uint8)
    return out


class _DiffusionStage(Stage):
    load_inpaint = False

    def setup(self) -> None:
        from pipeline.diffusion.recipes import DiffusionGenerators

        m = self.cfg.models
        self.gen = DiffusionGenerators(self.cfg.diffusion, m.text_to_image, m.inpaint if self.load_inpaint else None)
        g = self.gen
        self.refs = {"text_to_image": model_ref(g.t2i.spec, g.t2i.unet, g.t2i.vae, g.t2i.text_encoder)}
        if g.inp is not None:
            self.refs["inpaint"] = model_ref(g.inp.spec, g.inp.unet, g.inp.vae, g.inp.text_encoder)

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        # a color or text job must not start (and on a cluster reserve GPUs for) SD actors
        return any(get_task(t).stage == "diffusion" for t in tasks)

    def wants(self, row: dict) -> bool:
        return get_task(row["task"]).stage == "diffusion"


class DiffusionBaseStage(_DiffusionStage):
    name = "diffusion_base"
    resources_key = "diffusion_base"     # stages.diffusion_base, else stages.diffusion

    def process_row(self, row: dict) -> None:
        answer, task = _answer(row), row["task"]
        if task == "add":                     # y from the output caption; any photo is not used
            prompt = (answer.get("output_caption") or "").strip()
            if not prompt:
                reject(row, self.name, "no_output_caption")
                return
            img, base = self.gen.base_image(prompt, _base_seed(row["seed"]))
            base["role"] = "output"
            add_models(row, {"text_to_image": self.refs["text_to_image"]})
        elif row["input_png"] is not None:
            img, base = self.gen.fit_photo(decode_png(row["input_png"]))
            base["role"] = "input"
        else:
            img, base = self.gen.base_image(row["caption"], _base_seed(row["seed"]))
            base["role"] = "input"
            add_models(row, {"text_to_image": self.refs["text_to_image"]})
        row["input_png"] = encode_png(img)
        row["params"] = json.dumps({"base": base}, sort_keys=True)


class DiffusionEditStage(_DiffusionStage):
    name = "diffusion_edit"
    resources_key = "diffusion_edit"     # stages.diffusion_edit, else stages.diffusion
    load_inpaint = True

    def process_row(self, row: dict) -> None:
        answer, task = _answer(row), row["task"]
        params = json.loads(row["params"]) if row["params"] else {}
        base = params.get("base")
        if row["input_png"] is None or base is None:
            reject(row, self.name, "no_base_image", "the diffusion_base stage did not run for this row")
            return
        image = decode_png(row["input_png"])
        rng = np.random.default_rng([row["seed"] & 0xFFFFFFFF, 0xD1FF])
        caption, out_caption = row["caption"], answer.get("output_caption") or ""
        g = self.gen
        if task in REGION_TASKS or task == "background":
            masks = row_masks(row, image.shape[:2])
            if task == "background":
                masks = {k: v for k, v in masks.items() if k == "background"}
            if not masks or not any(v.any() for v in masks.values()):
                reject(row, self.name, "no_mask", f"no usable mask for {task} (grounding found none)")
                return
        if task == "add":                     # the base is y (output caption): edit back to x
            cands = g.p2p_candidates(task, image, base, out_caption, caption, masks, rng)
            for c in cands:
                c.input_image, c.output_image = c.output_image, c.input_image
        elif task in REGION_TASKS:
            cands = g.p2p_candidates(task, image, base, caption, out_caption, masks, rng)
        elif task == "global":
            cands = g.p2p_candidates(task, image, base, caption, out_caption, {}, rng)
        elif task == "background":
            cands = g.background_candidates(image, base, masks["background"], out_caption, rng)
            add_models(row, {"inpaint": self.refs["inpaint"]})
        elif task == "style":
            cands = g.style_candidates(image, base, caption, out_caption, rng)
        else:
            reject(row, self.name, "no_generator", f"no diffusion recipe for task {task!r}")
            return
        if task != "background":                # P2P and PnP run the text-to-image model
            add_models(row, {"text_to_image": self.refs["text_to_image"]})
        row["candidates"] = [{"input_png": encode_png(c.input_image), "output_png": encode_png(c.output_image),
                              "mask_png": encode_png(c.mask) if c.mask is not None else None,
                              "mask_variant": c.mask_variant, "params": json.dumps(c.params, sort_keys=True)}
                             for c in cands]
        row["output_png"] = None
        # the row's params list every candidate's sampled values until the filter keeps one
        params["candidates"] = [c.params | {"base": None} for c in cands]
        row["params"] = json.dumps(params, sort_keys=True)
