"""The ``filters`` block of a job: which checks run for which task, with which thresholds.

Rules are per task and per metric. ``DEFAULT_RULES`` says which metrics judge which task (a task
without a rule for a metric is not judged by it); ``rules`` in the job file overrides them per task
and metric (``null`` removes a default). A rule is absolute (``min`` / ``max``, as InstructPix2Pix
and the paper filter) or quantile-based (``keep_top``: keep the best fraction of the task's
candidates, the threshold calibrated on the job's own first samples — useful when the CLIP model
changes and absolute values mean nothing, e.g. the tiny random models of the embedded profile).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.models.device import DEVICE_HELP, Device

# Which way is good for each metric a rule or ``select_by`` can name — the one table every user
# reads (selection in pipeline/stages/filter.py, quantile calibration in pipeline/runner.py).
# As in the paper: CLIP and DINO similarities higher; L1 (change over the whole pair) and depth-L1
# (structure drift) lower — a pair that changes little beyond the edit is the better pair; that the
# edit happened at all is the min_change floor's job, not L1's.
HIGHER_IS_BETTER = {"clip_dir": True, "clip_img": True, "clip_out": True, "dino": True,
                    "depth_l1": False, "l1": False}


def higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER[metric]


def quantile_threshold(metric: str, values, keep_top: float) -> dict[str, float]:
    """The calibrated bound of a ``keep_top`` rule: keep the best ``keep_top`` fraction of
    ``values`` — a ``min`` for a higher-is-better metric, a ``max`` for a lower-is-better one."""
    import numpy as np
    if higher_is_better(metric):
        return {"min": float(np.quantile(values, 1 - keep_top))}
    return {"max": float(np.quantile(values, keep_top))}

EDIT_TASKS = ("local", "remove", "add", "texture", "background", "global", "style", "text")
# Structure must hold: the scene's geometry stays, only appearance changes.
STRUCTURE_TASKS = ("texture", "global", "style", "color")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MetricRule(_Strict):
    min: float | None = Field(None, description="Absolute: reject a candidate whose score is below this.")
    max: float | None = Field(None, description="Absolute: reject a candidate whose score is above this.")
    keep_top: float | None = Field(None, gt=0, le=1, description="Quantile: keep this best fraction of the "
                                   "task's candidates; the threshold is calibrated on the job's first samples.")

    @model_validator(mode="after")
    def _one_kind(self):
        if self.keep_top is not None and (self.min is not None or self.max is not None):
            raise ValueError("a rule is either absolute (min/max) or quantile (keep_top), not both")
        if self.keep_top is None and self.min is None and self.max is None:
            raise ValueError("a rule needs min, max or keep_top")
        return self


def _default_rules() -> dict[str, dict[str, MetricRule]]:
    # InstructPix2Pix's CLIP thresholds (image-image 0.75, directional 0.2) as the absolute defaults;
    # depth-L1 0.12 on min-max-normalised maps. Paper-scale values belong in deploy/profiles/paper.yaml.
    rules: dict[str, dict[str, MetricRule]] = {}
    for t in EDIT_TASKS:
        rules.setdefault(t, {}).update(clip_dir=MetricRule(min=0.2), clip_img=MetricRule(min=0.75),
                                        clip_out=MetricRule(min=0.2))
    for t in STRUCTURE_TASKS:
        rules.setdefault(t, {})["depth_l1"] = MetricRule(max=0.12)
    return rules


DEFAULT_RULES = _default_rules()


class ChangeFloor(_Strict):
    min_l1: float = Field(..., ge=0, le=1, description="Mean |out − in| (0..1) over the measured pixels.")
    min_frac: float = Field(..., ge=0, le=1, description="Fraction of measured pixels whose largest channel "
                            "change exceeds min_change_delta.")


# The minimum-change floor (filters/min_change.py): a candidate passes when either value reaches the
# floor, measured in the edit region for region tasks (the object's precise mask, else the
# candidate's mask) and over the whole image otherwise. Identical pairs give 0 / 0 and ±2-level
# noise about 0.005 / 0, so every floor below rejects them. The region floors (0.02 mean or 5 % of
# the region's pixels) sit far below a real replacement / removal / insertion of the object (mean
# ≥ 0.05 in the region) but above diffusion round-off. detect draws only an outline inside its box
# (≥ 2 % of a full-image box at the thinnest line), so its fraction floor is 1 %. Whole-image tasks:
# color's mildest planned change (a small blur / 1.1× brightness) moves about 0.01 mean and touches
# well over 1 % of pixels; the translation targets (depth, normal, sketch, pose, segmentation)
# replace or overlay the image, pose's skeleton on a photo being the thinnest (~1 % of pixels).
_REGION_FLOOR = dict(min_l1=0.02, min_frac=0.05)
_IMAGE_FLOOR = dict(min_l1=0.01, min_frac=0.01)
DEFAULT_CHANGE_FLOORS: dict[str, ChangeFloor] = {
    **{t: ChangeFloor(**_REGION_FLOOR) for t in ("local", "texture", "add", "remove", "background",
                                                  "text", "segment")},
    "detect": ChangeFloor(min_l1=0.005, min_frac=0.01),
    "color": ChangeFloor(min_l1=0.008, min_frac=0.01),
    **{t: ChangeFloor(**_IMAGE_FLOOR) for t in ("global", "style", "depth", "sketch", "normal", "pose",
                                                 "segmentation")},
}


class TaskPredictorConfig(_Strict):
    enabled: bool = Field(True, description="Run the task predictor on every instruction.")
    kind: Literal["minilm-finetuned", "minilm-logreg", "flan-t5"] = Field(
        "minilm-finetuned", description="minilm-finetuned: all-MiniLM-L6-v2 with its last two layers and a "
        "classification head fine-tuned on human-style instructions (`pairforge task-predictor`); "
        "minilm-logreg: the earlier logistic regression on frozen MiniLM embeddings, trained on the "
        "pipeline's own instructions; flan-t5: zero-shot scoring of task names with a seq2seq model.")
    path: str | None = Field(None, description="Weights file of the minilm kinds (relative paths are from the "
                             "repo root); empty: the shipped one, filters/data/task_predictor_minilm_ft.safetensors "
                             "or filters/data/task_predictor_minilm.npz.")
    sha256: str | None = Field(None, description="minilm-finetuned: the sha256 the weights file must have; empty: "
                               "the one recorded beside it in FILE.sha256. A mismatch is an error, never a warning.")
    model: str = Field("tiny-random", description="flan-t5: checkpoint (e.g. google/flan-t5-large) or tiny-random.")
    min_confidence: float = Field(0.8, ge=0, le=1, description="Act only when the predicted task's probability "
                                  "is at least this and it differs from the sample's task.")
    on_mismatch: Literal["reassign", "reject", "score"] = Field("reassign", description="reassign: the sample "
                                                                "becomes the predicted task when both are in one "
                                                                "reassign group, else it is rejected; reject; "
                                                                "score: only record the probability.")
    reassign_groups: list[list[str]] = Field(
        default_factory=lambda: [["local", "texture", "remove", "add", "background", "global", "style"]],
        description="Tasks whose pairs are made the same way (prompt-to-prompt on the captions), so the "
                    "pair still matches the instruction after relabelling. Across groups a mismatch is a reject.")


class FilterConfig(_Strict):
    enabled: bool = Field(True, description="Apply the filters; off keeps every generated pair (scores still computed).")
    device: Device = Field("auto", description="CLIP, DINO, depth and OCR models of the filter stage. " + DEVICE_HELP)
    min_change_l1: float = Field(0.008, ge=0, le=1, description="color: mean |x−y|/255 below this is 'no_visible_change'.")
    min_change: dict[str, ChangeFloor | None] = Field(
        default_factory=dict, description="Per task: the minimum-change floor {min_l1, min_frac} overriding "
        "DEFAULT_CHANGE_FLOORS (a candidate below both is rejected as no_change, before any score rule), or "
        "null to switch the floor off for that task.")
    min_change_delta: int = Field(8, ge=0, le=255, description="min_change: a pixel counts as changed when "
                                  "its largest channel change exceeds this many levels.")
    max_clipped_frac: float = Field(0.35, ge=0, le=1, description="color: output fraction of clipped pixels above this is rejected.")
    rules: dict[str, dict[str, MetricRule | None]] = Field(
        default_factory=dict, description="Per task, per metric (clip_dir, clip_img, clip_out, dino, depth_l1, l1): "
        "a rule {min|max|keep_top} overriding the defaults, or null to drop a default rule.")
    select_by: str = Field("clip_dir", description="Best-of-candidates: among a sample's passing candidates keep "
                           "the best by this metric (clip_dir, clip_img, clip_out, dino: highest; depth_l1, l1: lowest — "
                           "HIGHER_IS_BETTER).")
    detector_checks: bool = Field(True, description="add: the edited object is detected in the output; remove: "
                                  "the object is gone; local: the original is gone and the edited one present.")
    ocr_checks: bool = Field(True, description="text: OCR reads the new text after replace / add and finds no "
                             "text in the mask after remove (EasyOCR, settings of the text block).")
    calibration_samples: int = Field(48, ge=4, le=100_000, description="Quantile rules: samples per task "
                                     "(the first ones of the plan) whose candidate scores set the threshold.")
    task_predictor: TaskPredictorConfig = Field(default_factory=TaskPredictorConfig,
                                                description="Reassigns or rejects samples whose instruction "
                                                "belongs to another task.")
    calibrated: dict[str, dict[str, dict[str, float]]] | None = Field(
        None, description="Set by the job itself (from OUT/calibration.json): task → metric → {min|max}. Leave empty.")

    @model_validator(mode="after")
    def _known_metrics(self):
        from tasks import TASK_NAMES
        for task, per in self.rules.items():
            if task not in TASK_NAMES:
                raise ValueError(f"rules.{task}: unknown task (known: {', '.join(TASK_NAMES)})")
            for m in per:
                if m not in HIGHER_IS_BETTER:
                    raise ValueError(f"rules.{task}.{m}: unknown metric (known: {', '.join(HIGHER_IS_BETTER)})")
        for task in self.min_change:
            if task not in TASK_NAMES:
                raise ValueError(f"min_change.{task}: unknown task (known: {', '.join(TASK_NAMES)})")
        if self.select_by not in HIGHER_IS_BETTER:
            raise ValueError(f"select_by: unknown metric {self.select_by!r} (known: {', '.join(HIGHER_IS_BETTER)})")
        return self

    def change_floor(self, task: str) -> ChangeFloor | None:
        """The minimum-change floor of ``task`` (None: not judged)."""
        if task in self.min_change:
            return self.min_change[task]
        return DEFAULT_CHANGE_FLOORS.get(task)

    def resolved_rules(self, task: str) -> dict[str, MetricRule]:
        out = dict(DEFAULT_RULES.get(task, {}))
        for m, r in self.rules.get(task, {}).items():
            if r is None:
                out.pop(m, None)
            else:
                out[m] = r
        return out

    def needs_calibration(self) -> bool:
        from tasks import TASK_NAMES
        return any(r.keep_top is not None for t in TASK_NAMES for r in self.resolved_rules(t).values())

    def threshold(self, task: str, metric: str) -> tuple[float | None, float | None] | None:
        """(min, max) that decides ``metric`` for ``task``, or None when no rule judges it.
        A quantile rule without calibration yet (the calibration pass itself) decides nothing."""
        r = self.resolved_rules(task).get(metric)
        if r is None:
            return None
        if r.keep_top is None:
            return r.min, r.max
        cal = ((self.calibrated or {}).get(task) or {}).get(metric)
        if not cal:
            return None
        return cal.get("min"), cal.get("max")
