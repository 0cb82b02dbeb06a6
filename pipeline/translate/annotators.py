"""The set of annotators one translation stage actor holds: built once (the stage's ``setup`` builds
those of the job's task mix; a task that arrives from a source's task column without being in the
mix gets its annotator on first use, once), one call per (task, photo). A sketch-only job loads no
model at all; depth and normal share one depth model."""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.translate.maps import MapResult

TASK_MAPS = ("depth", "sketch", "normal", "pose", "segmentation")


class Annotators:
    def __init__(self, cfg, tasks: set[str] | None = None):
        """``cfg``: the JobConfig (translation block, model specs, grounding for the person detector);
        ``tasks``: which maps to build now (None: all five)."""
        from pipeline.models.device import resolve_device

        self.cfg, self.device = cfg, resolve_device(cfg.translation.device)
        self._by_task: dict[str, Callable[[np.ndarray, np.random.Generator], MapResult]] = {}
        self._refs: dict[str, dict[str, str]] = {}
        self._depth = None
        for task in (TASK_MAPS if tasks is None else sorted(set(tasks) & set(TASK_MAPS))):
            self._build(task)

    def _depth_annotator(self):
        if self._depth is None:
            from pipeline.translate.depth import DepthAnnotator
            t = self.cfg.translation
            self._depth = DepthAnnotator(self.cfg.models.depth, t.depth, t.min_map_std, self.device)
        return self._depth

    def _build(self, task: str) -> None:
        t, m = self.cfg.translation, self.cfg.models
        if task == "depth":
            ann = self._depth_annotator()
        elif task == "normal":
            from pipeline.translate.normal import NormalAnnotator
            ann = NormalAnnotator(self._depth_annotator(), t.normal, t.min_map_std)
        elif task == "sketch":
            from pipeline.translate.sketch import SketchAnnotator
            ann = SketchAnnotator(t.sketch)
        elif task == "pose":
            from pipeline.translate.pose import PoseAnnotator
            detector = None
            if t.pose.person_boxes == "detector":
                from pipeline.grounding.detector import build_detector
                detector = build_detector(m.detector, self.cfg.grounding)
            ann = PoseAnnotator(m.pose, t.pose, detector, self.device)
        elif task == "segmentation":
            from pipeline.translate.segmentation import SegmentationAnnotator
            ann = SegmentationAnnotator(m.segmentation, t.segmentation, self.device)
        else:
            raise KeyError(f"no annotator for task {task!r} (translation tasks: {', '.join(TASK_MAPS)})")
        self._by_task[task] = ann

    def model_refs(self, task: str) -> dict[str, str]:
        """provenance.models entries of the models behind the task's map (sketch: none, OpenCV);
        computed on first use and kept."""
        if task not in self._refs:
            from pipeline.models.provenance import model_ref

            if task not in self._by_task:
                self._build(task)
            m, ann, refs = self.cfg.models, self._by_task[task], {}
            if task in ("depth", "normal"):
                refs["depth"] = model_ref(m.depth, self._depth_annotator().estimator)
            elif task == "pose":
                refs["pose"] = model_ref(m.pose, ann)
                if ann.detector is not None:
                    from pipeline.grounding.detector import detector_refs
                    refs.update(detector_refs(ann.detector))
            elif task == "segmentation":
                refs["segmentation"] = model_ref(m.segmentation, ann)
            self._refs[task] = refs
        return self._refs[task]

    def built(self) -> list[str]:
        return sorted(self._by_task)

    def __contains__(self, task: str) -> bool:
        return task in TASK_MAPS

    def make_map(self, task: str, image: np.ndarray, rng: np.random.Generator) -> MapResult:
        """The task's map of ``image`` (HxWx3 uint8, the photo's size); raises SampleReject
        (``empty_map``, ``no_pose``) for a map that cannot be made."""
        if task not in self._by_task:
            self._build(task)
        return self._by_task[task](image, rng)
