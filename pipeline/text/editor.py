"""The text task's pair generator: OCR → match the named text → mask → inpaint → (draw new text).

    1. OCR the photo; no text at all                          → reject ``no_text``
    2. find the text the answer names (old_text for remove / replace, new_text for add: the add
       pair runs backwards, the photo is its output, so the text it "adds" must be the one
       already there); not found                              → reject ``named_text_not_found``
    3. mask: the matched OCR quads, grown by ``text.mask_dilation_px`` (the pair's mask: every
       changed pixel is inside it); what is erased is the glyph strokes within it (``mask_mode``)
    4. inpaint what is erased (opencv or diffusion)
    5. remove: (photo → inpainted); add: (inpainted → photo);
       replace: new_text drawn on the inpainted region in the chosen font and colour, sized to the
       box                                                    → (photo → redrawn)
Everything decided on the way (OCR boxes and confidences, font file and size, colour and whether it
was adjusted for contrast, inpaint method) goes to ``params``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.text.config import TextConfig
from pipeline.text.fonts import choose_font
from pipeline.text.inpaint import inpaint_opencv
from pipeline.models.device import resolve_device
from pipeline.text.masks import boxes_mask, stroke_mask
from pipeline.text.ocr import OcrBox
from pipeline.text.ocr import OcrReader, find_text, norm_text
from pipeline.text.render import draw_text, fit_font_size, pick_color, text_frame
from tasks.base import Pair, SampleReject

MIN_FONT_PX = 8          # smaller text is not something OCR (or a person) reads back


class TextEditor:
    def __init__(self, cfg: TextConfig, ocr: OcrReader | None = None, inpaint_model: str = "tiny-random"):
        self.cfg = cfg
        self.ocr = ocr or OcrReader(cfg.ocr_model_dir, cfg.ocr_languages, cfg.min_confidence,
                                    gpu=resolve_device(cfg.device).startswith("cuda"))
        self.diffusion = None
        if cfg.inpaint_backend == "diffusion":
            from pipeline.text.inpaint import DiffusionTextInpainter
            self.diffusion = DiffusionTextInpainter(inpaint_model, steps=cfg.diffusion_steps,
                                                    guidance=cfg.diffusion_guidance,
                                                    resolution=cfg.diffusion_resolution, prompt=cfg.diffusion_prompt,
                                                    device=cfg.device)
        if not cfg.fonts:
            raise ValueError("text.fonts: no font files configured or found on this machine "
                             "(install fonts-dejavu-core, or list font files)")

    def model_refs(self) -> dict[str, str]:
        """provenance.models entries: EasyOCR, and the inpainting model when diffusion inpaints."""
        from pipeline.models.provenance import model_ref

        refs = {"ocr": self.ocr.ref()}
        if self.diffusion is not None:
            c = self.diffusion.comps
            refs["inpaint"] = model_ref(c.spec, c.unet, c.vae, c.text_encoder)
        return refs

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        if self.diffusion is not None:
            out, p = self.diffusion(image, mask, int(rng.integers(2 ** 62)))
            return out, {"backend": "diffusion", **p}
        c = self.cfg
        return (inpaint_opencv(image, mask, c.inpaint_radius, c.inpaint_method),
                {"backend": "opencv", "method": c.inpaint_method, "radius": c.inpaint_radius})

    def make_pair(self, image: np.ndarray, answer: dict[str, Any], plan: dict[str, Any],
                  rng: np.random.Generator, *, ocr_boxes: list[OcrBox] | None = None) -> Pair:
        """``ocr_boxes``: the photo's OCR result when the caller already has it (the benchmark makes
        several pairs per photo); None runs OCR here."""
        c = self.cfg
        op = plan.get("op")
        if op not in ("add", "remove", "replace"):
            raise SampleReject("bad_plan", f"text op {op!r}")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise SampleReject("bad_input_image", f"want HxWx3 uint8, got {getattr(image, 'shape', None)}")
        named = answer.get("new_text" if op == "add" else "old_text") or ""
        if not norm_text(named):
            raise SampleReject("text_op_mismatch", f"the answer names no text for op {op}")
        # 1. OCR
        boxes = self.ocr.read(image) if ocr_boxes is None else ocr_boxes
        params: dict[str, Any] = {"op": op, "ocr": [b.to_json() for b in boxes], "ocr_model": self.ocr.model_id,
                                  "min_confidence": c.min_confidence}
        if not boxes:
            raise SampleReject("no_text", f"OCR found no text with confidence >= {c.min_confidence}")
        # 2. the named text
        matched, score = find_text(boxes, named, c.match_threshold)
        if not matched:
            read = " | ".join(b.text for b in boxes)[:200]
            raise SampleReject("named_text_not_found",
                               f"{named!r} not read in the photo (best similarity {score:.2f} < "
                               f"{c.match_threshold}); OCR read: {read}")
        params.update(named_text=named, matched=[b.to_json() for b in matched], match_score=round(score, 4))
        # 3. mask, 4. inpaint
        mask = boxes_mask(image.shape[:2], matched, c.mask_dilation_px)
        erase = mask
        if c.mask_mode == "strokes":
            erase = stroke_mask(image, matched, c.stroke_dilation_px) & mask
            if not (erase > 127).any():     # no ink/surface split found: erase the whole box
                erase = mask
        params.update(mask_dilation_px=c.mask_dilation_px, mask_mode=c.mask_mode,
                      erase_fraction=round(float((erase > 127).sum()) / max(1, int((mask > 127).sum())), 4))
        clean, params["inpaint"] = self.inpaint(image, erase, rng)
        # 5. the pair
        if op == "remove":
            return Pair(image, clean, params, mask, "ocr")
        if op == "add":
            return Pair(clean, image, params, mask, "ocr")
        new = (answer.get("new_text") or "").strip().strip("\"'\u201c\u201d\u2018\u2019`").strip()
        rp, frame = self._render_params(new, answer, clean, mask, matched, rng)
        params.update(rp)
        out = draw_text(clean, mask, new, rp["font"]["path"], rp["font"]["size"], tuple(rp["color"]["rgb"]), frame)
        return Pair(image, out, params, mask, "ocr")

    def _render_params(self, new: str, answer: dict, clean: np.ndarray, mask: np.ndarray, matched, rng):
        """Font, size, colour and frame of the new text: (params, frame)."""
        c = self.cfg
        frame = text_frame(matched)
        font, wanted = choose_font(answer.get("font") or "", c.fonts, rng)
        size = fit_font_size(new, font.path, frame.width, frame.height, c.text_fill)
        if size < MIN_FONT_PX:
            raise SampleReject("text_too_long_for_box",
                               f"{new!r} fits the {frame.width:.0f}x{frame.height:.0f} px box only at {size} px")
        bg = tuple(int(v) for v in np.median(clean[mask > 127], axis=0))
        color = pick_color(answer.get("color") or "", bg, c.min_contrast)
        return {"new_text": new, "frame": {k: round(v, 2) for k, v in vars(frame).items()}, "background_rgb": list(bg),
                "font": {"path": font.path, "family": font.family, "style": font.style, "size": size,
                         "description": answer.get("font") or "", "traits_wanted": wanted,
                         "traits": sorted(font.traits)},
                "color": {"name": answer.get("color") or "", **color}}, frame
