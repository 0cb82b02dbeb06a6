"""Job-file block ``translation:`` — the annotators of the five translation tasks.

Checkpoints are not here but in ``models.depth`` / ``models.pose`` / ``models.segmentation`` (the
depth model is shared with the depth-L1 filter); this block holds how each map is drawn.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.models.device import DEVICE_HELP, Device


class _Strict(BaseModel):
    # the same base as pipeline.config._Strict (pipeline.config imports this module)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _ordered(name: str, r: tuple[float, float]) -> None:
    if r[0] > r[1]:
        raise ValueError(f"{name}: low end {r[0]} is above high end {r[1]}")


class DepthMapConfig(_Strict):
    colormap: Literal["gray", "inferno", "turbo"] = Field(
        "gray", description="How the normalised depth is drawn: gray (near = bright, the ControlNet convention) "
        "or an OpenCV colour map.")


class SketchConfig(_Strict):
    detector: Literal["canny"] = Field(
        "canny", description="Edge detector. Only OpenCV Canny: HED (lllyasviel/Annotators "
        "ControlNetHED_Apache2.pth) needs network code no installed package ships.")
    thresholds: Literal["auto", "sampled"] = Field(
        "auto", description="auto: low/high from the image median (median·(1∓sigma)); sampled: drawn per sample "
        "from low_range / high_range. Either way the pair's params store them.")
    sigma: float = Field(0.33, gt=0, lt=1, description="auto thresholds: relative width around the median.")
    low_range: tuple[float, float] = Field((50.0, 120.0), description="sampled: range of Canny's low threshold.")
    high_range: tuple[float, float] = Field((150.0, 250.0), description="sampled: range of Canny's high threshold.")
    blur_ksize: int = Field(5, ge=0, le=31, description="Odd Gaussian kernel applied before Canny against "
                            "texture noise; 0 = no blur.")
    line_style: Literal["black_on_white", "white_on_black"] = Field(
        "black_on_white", description="black_on_white looks like a pencil sketch; white_on_black is the "
        "ControlNet Canny convention.")
    min_edge_fraction: float = Field(0.002, ge=0, le=1, description="Fewer edge pixels than this fraction of the "
                                     "image: reject 'empty_map'.")

    @model_validator(mode="after")
    def _check(self):
        _ordered("translation.sketch.low_range", self.low_range)
        _ordered("translation.sketch.high_range", self.high_range)
        if self.low_range[1] > self.high_range[0]:
            raise ValueError("translation.sketch: low_range must end at or below the start of high_range")
        if self.blur_ksize and self.blur_ksize % 2 == 0:
            raise ValueError(f"translation.sketch.blur_ksize: must be odd or 0, got {self.blur_ksize}")
        return self


class NormalConfig(_Strict):
    strength: float = Field(1.0, gt=0, description="Slope scale: a depth ramp across the whole image width "
                            "tilts the normal by atan(strength).")
    smooth_sigma: float = Field(2.0, ge=0, description="Gaussian sigma (pixels) on the depth map before the "
                                "gradients; 0 = none.")


class PoseConfig(_Strict):
    person_boxes: Literal["whole_image", "detector"] = Field(
        "whole_image", description="Where the keypoint model looks: the whole image as one person box, or the "
        "boxes the grounding detector (models.detector) finds for person_phrase. MediaPipe finds the most "
        "prominent person inside each box itself.")
    person_phrase: str = Field("a person", min_length=1, description="detector: the phrase for people.")
    max_people: int = Field(4, ge=1, le=32, description="detector: at most this many person boxes per image.")
    min_keypoint_score: float = Field(0.3, ge=0, description="A keypoint counts when its score is at least this "
                                      "(ViTPose: heatmap peak; MediaPipe: landmark visibility, 0..1) and it lies "
                                      "inside the image.")
    min_person_score: float = Field(0.7, ge=0, le=1, description="MediaPipe only: its person detector's score "
                                    "must reach this, else reject 'no_pose'. Its graph's own cut is 0.5, at which it "
                                    "took the demo's motorcycle (0.57 at 512 px) for a person; the astronaut scores 0.81.")
    min_keypoints: int = Field(5, ge=1, le=17, description="Fewer counted keypoints in the best person: reject "
                               "'no_pose'.")
    line_width: int = Field(0, ge=0, le=64, description="Skeleton line width in pixels; 0 = about 1% of the "
                            "image's longer side.")


class SegmentationMapConfig(_Strict):
    min_labels: int = Field(2, ge=1, le=256, description="Fewer distinct classes in the map: reject 'empty_map' "
                            "(a one-class map says nothing).")


class TranslationConfig(_Strict):
    """The annotators that turn a photo into its map (the pair is photo → map or map → photo)."""
    depth: DepthMapConfig = Field(default_factory=DepthMapConfig, description="Depth maps (models.depth).")
    sketch: SketchConfig = Field(default_factory=SketchConfig, description="Sketch (edge) maps.")
    normal: NormalConfig = Field(default_factory=NormalConfig, description="Normal maps from the depth map "
                                 "(models.depth).")
    pose: PoseConfig = Field(default_factory=PoseConfig, description="Pose skeletons (models.pose).")
    segmentation: SegmentationMapConfig = Field(default_factory=SegmentationMapConfig,
                                                description="Semantic segmentation maps (models.segmentation).")
    device: Device = Field("auto", description="Depth, pose and segmentation models of the translation stage. "
                        + DEVICE_HELP)
    min_map_std: float = Field(2.0, ge=0, description="A map whose pixel standard deviation (0..255 levels) is "
                               "below this is blank: reject 'empty_map'.")
