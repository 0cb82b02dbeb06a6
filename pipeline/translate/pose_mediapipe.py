"""MediaPipe Pose (BlazePose GHUM, the "full" landmark model) as a keypoint backend for the pose map:
real weights that ship inside the mediapipe 0.10.14 wheel, so the embedded default draws real
skeletons on a CPU machine with no model hub. ``models.pose: mediapipe-pose-full`` selects it.

BlazePose finds the most prominent person itself (its own person detector, score threshold 0.5 as
in mediapipe's graph) and returns 33 landmarks with a visibility in [0, 1]. We keep the 17 that
COCO defines and draw COCO's skeleton, so a pose map looks the same whichever backend made it
(production ViTPose predicts COCO-17): a model trained on the pairs never sees two skeleton styles.
Visibility plays the part of ViTPose's heatmap score (``translation.pose.min_keypoint_score``).
The person detector's score must also reach ``translation.pose.min_person_score`` (0.7): the graph's
own cut, 0.5, lets through things that are not people (the demo's motorcycle scores 0.57), and a
skeleton on a motorcycle is a worse pair than none.
"""
from __future__ import annotations

import numpy as np

from pipeline.models.mediapipe_graph import MEDIAPIPE_VERSION, BundledGraph, file_sha256
from tasks.base import SampleReject

SPEC = "mediapipe-pose-full"
GRAPH = "modules/pose_landmark/pose_landmark_cpu.binarypb"
LANDMARK_MODEL = "modules/pose_landmark/pose_landmark_full.tflite"     # the only landmark model the wheel ships
DETECTOR_MODEL = "modules/pose_detection/pose_detection.tflite"
# BlazePose landmark index of each COCO keypoint, in COCO order (nose, eyes, ears, shoulders,
# elbows, wrists, hips, knees, ankles; left before right)
BLAZEPOSE_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
# a person box from the detector is widened by this fraction per side before cropping: BlazePose
# wants the whole body in view, and detector boxes are tight
BOX_MARGIN = 0.1


def is_mediapipe(spec: str | None) -> bool:
    return spec == SPEC


class MediaPipePose:
    """``keypoints(image, boxes)`` → per box (17x2 pixel coordinates, 17 visibilities), COCO order."""

    def __init__(self, min_person_score: float = 0.7):
        self.min_person_score = min_person_score
        self.graph = BundledGraph(GRAPH, outputs=("pose_landmarks", "pose_detection"), side_packets={
            "model_complexity": 1,            # 1 = the "full" model, the one bundled
            "smooth_landmarks": False,        # images are unrelated photos, not video frames
            "enable_segmentation": False,
            "smooth_segmentation": False,
            "use_prev_landmarks": False,
        })
        # after BundledGraph: it registers the bare ``mediapipe`` package this import needs
        from mediapipe.framework.formats import detection_pb2, landmark_pb2
        self._landmarks, self._detection = landmark_pb2.NormalizedLandmarkList, detection_pb2.Detection
        self.model_id = SPEC

    @staticmethod
    def model_ref() -> dict[str, str]:
        """Which weights ran: the landmark model's id and sha256 (and the person detector's)."""
        return {"id": f"{SPEC} (mediapipe {MEDIAPIPE_VERSION} {LANDMARK_MODEL.rsplit('/', 1)[-1]})",
                "sha256": file_sha256(LANDMARK_MODEL), "detector_sha256": file_sha256(DETECTOR_MODEL)}

    def _one(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray] | float | None:
        """(keypoints, visibilities); the person score when it is below min_person_score; None when
        the detector found no one."""
        out = self.graph.run(crop)
        if out["pose_landmarks"] is None:
            return None
        det = out["pose_detection"]
        score = max(self.graph.proto(det, self._detection).score, default=0.0) if det is not None else 0.0
        if score < self.min_person_score:
            return float(score)
        lm = self.graph.proto(out["pose_landmarks"], self._landmarks).landmark
        h, w = crop.shape[:2]
        kp = np.array([[lm[i].x * w, lm[i].y * h] for i in BLAZEPOSE_TO_COCO], np.float32)
        vis = np.array([lm[i].visibility for i in BLAZEPOSE_TO_COCO], np.float32)
        return kp, vis

    def keypoints(self, image: np.ndarray, boxes: list[list[float]]) -> list[tuple[np.ndarray, np.ndarray]]:
        h, w = image.shape[:2]
        out, found, weak = [], 0, []
        for x, y, bw, bh in boxes:
            x0, y0 = max(0, int(x - BOX_MARGIN * bw)), max(0, int(y - BOX_MARGIN * bh))
            x1, y1 = min(w, int(np.ceil(x + bw * (1 + BOX_MARGIN)))), min(h, int(np.ceil(y + bh * (1 + BOX_MARGIN))))
            res = self._one(image[y0:y1, x0:x1]) if x1 - x0 >= 8 and y1 - y0 >= 8 else None
            if isinstance(res, float):
                weak.append(res)
                res = None
            if res is None:
                out.append((np.zeros((17, 2), np.float32), np.zeros(17, np.float32)))
                continue
            found += 1
            kp, vis = res
            out.append((kp + np.array([x0, y0], np.float32), vis))
        if not found:
            where = "the image" if len(boxes) == 1 and boxes[0] == [0.0, 0.0, float(w), float(h)] else \
                f"any of the {len(boxes)} person boxes"
            if weak:
                raise SampleReject("no_pose", f"MediaPipe Pose's person score {max(weak):.2f} in {where} is below "
                                   f"translation.pose.min_person_score={self.min_person_score}")
            raise SampleReject("no_pose", f"MediaPipe Pose's person detector found no person in {where}")
        return out
