"""Pose maps: a keypoint model finds the 17 COCO keypoints of each person box; the skeleton is drawn
with OpenCV on black, one colour per limb (the OpenPose look).

Keypoint backends, by ``models.pose``: ViTPose (transformers; a checkpoint in production,
``tiny-random`` for code-path tests) or ``mediapipe-pose-full`` (BlazePose with the real weights the
mediapipe wheel ships: the embedded default, pipeline/translate/pose_mediapipe.py). Person boxes
come from the whole image (one box) or from the grounding detector. ViTPose is a top-down model: it
only says where the joints of *the person in the box* are, and its heatmap peak says how sure it is;
BlazePose also finds the person itself and says how visible each landmark is. Too few confident
keypoints inside the image → reject ``no_pose``.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from pipeline.models.device import to_cpu
from pipeline.models.tiny import check_local_path, is_tiny, seeded
from pipeline.translate.config import PoseConfig
from pipeline.translate.maps import MapResult
from tasks.base import SampleReject

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                  "left_knee", "right_knee", "left_ankle", "right_ankle")
# COCO's limb list: legs, hips, torso, arms, head
SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
            (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
# evenly spaced hues: neighbouring limbs stay distinguishable, left and right differ
LIMB_COLOURS = tuple(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / len(SKELETON), 1.0, 1.0))
                     for i in range(len(SKELETON)))
TINY_SIZE = (64, 48)          # height, width: ViTPose's 4:3 portrait input at toy scale
SEED_TINY_POSE = 0x9053


def tiny_vitpose():
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    backbone = VitPoseBackboneConfig(image_size=list(TINY_SIZE), patch_size=[8, 8], hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, mlp_ratio=2, out_indices=[2])
    # 0.2 instead of 0.02: the default init gives flat heatmaps whose peaks sit near zero; a wider
    # init gives peaks that move with the image, so the thresholds and drawing see real variation
    cfg = VitPoseConfig(backbone_config=backbone, num_labels=len(COCO_KEYPOINTS), initializer_range=0.2)
    with seeded(SEED_TINY_POSE):
        return VitPoseForPoseEstimation(cfg).eval()


def draw_skeleton(shape: tuple[int, ...], people: list[np.ndarray], visible: list[np.ndarray],
                  line_width: int) -> np.ndarray:
    """Black HxWx3 canvas; for each person the limbs whose both ends are visible, then the joints."""
    h, w = shape[:2]
    canvas = np.zeros((h, w, 3), np.uint8)
    radius = max(2, line_width)
    for kp, vis in zip(people, visible):
        for (a, b), colour in zip(SKELETON, LIMB_COLOURS):
            if vis[a] and vis[b]:
                cv2.line(canvas, tuple(int(round(v)) for v in kp[a]), tuple(int(round(v)) for v in kp[b]), colour,
                         line_width, lineType=cv2.LINE_AA)
        for i in np.flatnonzero(vis):
            cv2.circle(canvas, tuple(int(round(v)) for v in kp[i]), radius, (255, 255, 255), -1, lineType=cv2.LINE_AA)
    return canvas


class VitPoseKeypoints:
    """ViTPose by spec: ``tiny-random`` or a checkpoint. ``keypoints(image, boxes)`` → per box
    (17x2 pixel coordinates, 17 heatmap scores)."""

    def __init__(self, spec: str, device: str = "cpu"):
        import torch
        from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

        if is_tiny(spec):
            self.model = tiny_vitpose()
            self.processor = VitPoseImageProcessor(size={"height": TINY_SIZE[0], "width": TINY_SIZE[1]})
            self.model_id = "tiny-random-vitpose"
        else:
            check_local_path(spec, "pose")
            self.model = VitPoseForPoseEstimation.from_pretrained(spec).eval()
            self.processor = VitPoseImageProcessor.from_pretrained(spec)
            self.model_id = spec
        # ViTPose+ checkpoints are mixtures of experts, one per training set: 0 is COCO
        self.experts = getattr(self.model.config.backbone_config, "num_experts", 1)
        self.model.to(device)
        self._torch, self.device = torch, device

    def keypoints(self, image: np.ndarray, boxes: list[list[float]]) -> list[tuple[np.ndarray, np.ndarray]]:
        torch = self._torch
        inputs = self.processor(images=[image], boxes=[boxes], return_tensors="pt")
        kw = {}
        if self.experts > 1:
            kw["dataset_index"] = torch.zeros(len(boxes), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = to_cpu(self.model(pixel_values=inputs["pixel_values"].to(self.device), **kw))
        res = self.processor.post_process_pose_estimation(out, boxes=[boxes])[0]
        return [(r["keypoints"].float().numpy(), r["scores"].float().numpy()) for r in res]


class PoseAnnotator:
    def __init__(self, spec: str, cfg: PoseConfig, detector=None, device: str = "cpu"):
        from pipeline.translate.pose_mediapipe import MediaPipePose, is_mediapipe

        if detector is None and cfg.person_boxes == "detector":
            raise ValueError("translation.pose.person_boxes: 'detector' needs a detector (models.detector)")
        if is_mediapipe(spec):
            self.backend, self.annotator = MediaPipePose(cfg.min_person_score), "mediapipe_pose"
        else:
            self.backend, self.annotator = VitPoseKeypoints(spec, device), "vitpose"
        self.model_id = self.backend.model_id
        self.cfg, self.detector = cfg, detector

    @property
    def model(self):
        """The torch module (ViTPose), for device checks; None for MediaPipe (TFLite on the CPU)."""
        return getattr(self.backend, "model", None)

    def model_ref(self) -> dict[str, str]:
        """Which keypoint model ran: {"id", "sha256" (of the weight file, where one is known)}."""
        ref = getattr(self.backend, "model_ref", None)
        return ref() if ref else {"id": self.model_id}

    def person_boxes(self, image: np.ndarray) -> list[list[float]]:
        """COCO boxes (x, y, w, h) of the people to pose."""
        h, w = image.shape[:2]
        if self.cfg.person_boxes == "whole_image":
            return [[0.0, 0.0, float(w), float(h)]]
        dets = self.detector.detect([image], [[self.cfg.person_phrase]])[0][: self.cfg.max_people]
        if not dets:
            raise SampleReject("no_pose", f"the detector found no {self.cfg.person_phrase!r}")
        return [[d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]] for d in dets]

    def keypoints(self, image: np.ndarray, boxes: list[list[float]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per box: (17x2 pixel coordinates, 17 scores), COCO order."""
        return self.backend.keypoints(image, boxes)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MapResult:
        c = self.cfg
        h, w = image.shape[:2]
        boxes = self.person_boxes(image)
        people, visible, counts = [], [], []
        for kp, score in self.keypoints(image, boxes):
            inside = (kp[:, 0] >= 0) & (kp[:, 0] < w) & (kp[:, 1] >= 0) & (kp[:, 1] < h)
            vis = inside & (score >= c.min_keypoint_score)
            people.append(kp)
            visible.append(vis)
            counts.append(int(vis.sum()))
        if max(counts) < c.min_keypoints:
            raise SampleReject("no_pose", f"best person has {max(counts)} keypoints with score >= "
                               f"{c.min_keypoint_score} inside the image (< translation.pose.min_keypoints={c.min_keypoints})")
        # people with too few joints are left out of the drawing rather than drawn as stray dots
        keep = [i for i, n in enumerate(counts) if n >= c.min_keypoints]
        lw = c.line_width or max(2, round(0.01 * max(h, w)))
        out = draw_skeleton(image.shape, [people[i] for i in keep], [visible[i] for i in keep], lw)
        ref = self.model_ref()
        return MapResult(out, {"annotator": self.annotator, "model": self.model_id,
                               **({"model_sha256": ref["sha256"]} if "sha256" in ref else {}),
                               "person_boxes": c.person_boxes,
                               "boxes": [[round(v, 1) for v in boxes[i]] for i in keep],
                               "keypoints_visible": [counts[i] for i in keep],
                               "min_keypoint_score": c.min_keypoint_score, "line_width": lw,
                               **({"min_person_score": c.min_person_score} if self.annotator == "mediapipe_pose" else {})})
