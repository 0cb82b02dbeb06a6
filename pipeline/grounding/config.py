"""Job-file block ``grounding:`` — thresholds, backends and mask sizes of the grounding stage.

Checkpoints themselves are named in ``models.detector`` / ``models.segmenter`` (a hub id, a local
folder, a ``.pth`` of the original package, or ``tiny-random``); this block says how to use them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.models.device import Device


class _Strict(BaseModel):
    # the same base as pipeline.config._Strict; pipeline.config imports this module, so this module
    # cannot import from it
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GroundingConfig(_Strict):
    detector_backend: Literal["auto", "transformers", "groundingdino"] = Field(
        "auto", description="auto: a .pth/.pt checkpoint loads with groundingdino-py (the original IDEA "
        "checkpoints), anything else (hub id, folder, tiny-random) with transformers' "
        "GroundingDinoForObjectDetection. Name a backend to force it (tiny-random exists for both).")
    segmenter_backend: Literal["auto", "transformers", "segment-anything"] = Field(
        "auto", description="auto: a .pth checkpoint loads with segment-anything (SamPredictor), anything "
        "else with transformers' SamModel. Name a backend to force it (tiny-random exists for both).")
    box_threshold: float = Field(0.35, ge=0, le=1, description="A box is kept when its best token score "
                                 "(sigmoid) is above this (Grounding DINO's default 0.35). 1.0 detects nothing. "
                                 "Random-init tiny models score most boxes 0.5-1.0, so the defaults detect there too.")
    text_threshold: float = Field(0.25, ge=0, le=1, description="A box is attributed to the phrase whose tokens "
                                  "score highest only when that score is above this (Grounding DINO's default 0.25).")
    nms_iou: float = Field(0.8, gt=0, le=1, description="Boxes of the same phrase overlapping more than this IoU "
                           "are suppressed (Grounded-SAM uses 0.8).")
    max_detections: int = Field(10, ge=1, le=900, description="At most this many detections per image, best first.")
    detector_image_size: int | None = Field(None, ge=32, le=2048, description="Images are letterboxed (longer side "
                                            "resized to this, padded to a square, padding masked) before the detector, "
                                            "so a batch gives the same boxes as one image at a time. None: 800 for real "
                                            "checkpoints, 96 for tiny-random.")
    detector_config: str | None = Field(None, description="groundingdino-py only: the model's config .py "
                                        "(e.g. GroundingDINO_SwinT_OGC.py). None: the config shipped with "
                                        "groundingdino-py, chosen by the checkpoint's file name (swint / swinb).")
    text_encoder_dir: str | None = Field(None, description="groundingdino-py only: local folder of its BERT text "
                                         "encoder (bert-base-uncased saved with save_pretrained, model + tokenizer). "
                                         "Required for a real .pth checkpoint: without it the package fetches it from the hub.")
    segmenter_type: str | None = Field(None, description="segment-anything only: the architecture of the .pth "
                                       "(vit_h, vit_l, vit_b, or tiny). None: taken from the file name "
                                       "(sam_vit_h_4b8939.pth → vit_h).")
    device: Device = Field("auto", description="Torch device for both models: auto (cuda when available), cpu, cuda, cuda:N.")
    dilate_frac: float = Field(0.02, ge=0, le=0.5, description="dilated_blurred mask: dilation radius as a fraction "
                               "of the image's shorter side.")
    blur_frac: float = Field(0.01, ge=0, le=0.5, description="dilated_blurred mask: Gaussian sigma as a fraction of "
                             "the image's shorter side.")
    background_widen_frac: float = Field(0.02, ge=0, le=0.5, description="background mask: minimum-filter radius "
                                         "(fraction of the shorter side) by which the background grows into the object's edge.")
    background_blur_frac: float = Field(0.01, ge=0, le=0.5, description="background mask: Gaussian sigma (fraction "
                                        "of the shorter side) of its soft edge.")
