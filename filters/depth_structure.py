"""Structure-preserving filter (Emu Edit §3.2): L1 between the depth maps of input and output.

Monocular depth is relative (unknown scale and shift per image), so both maps are min-max
normalised to [0, 1] first; ``depth_l1`` is their mean absolute difference. Only tasks with a
``depth_l1`` rule are scored (texture, global, style, color by default): a depth model per
candidate is the most expensive check here, and tasks that move objects are expected to change depth.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np

from filters.base import Candidate, Filter, Verdict, judge
from pipeline.models.depth import normalise

DepthFn = Callable[[list[np.ndarray]], list[np.ndarray]]


def depth_l1(d_in: np.ndarray, d_out: np.ndarray) -> float:
    return float(np.abs(normalise(d_in) - normalise(d_out)).mean())


class DepthL1Filter(Filter):
    name: ClassVar[str] = "depth_structure"

    def __init__(self, cfg, depth: str = "tiny-random", predict: DepthFn | None = None, device: str = "cpu"):
        self.cfg = cfg
        self.estimator = None
        if predict is None:
            from pipeline.models.depth import DepthEstimator
            self.estimator = DepthEstimator(depth, device)
            predict = self.estimator.predict
        self.predict = predict

    def model_refs(self) -> dict[str, str]:
        if self.estimator is None:              # a depth function handed in (tests): not ours to name
            return {}
        from pipeline.models.provenance import model_ref
        return {"depth": model_ref(self.estimator.spec, self.estimator)}

    def applies_to(self, task: str) -> bool:
        return self.cfg.resolved_rules(task).get("depth_l1") is not None

    def prepare(self, candidates: list[Candidate]) -> None:
        todo = [c for c in candidates if self.applies_to(c.task) and "depth_l1" not in c.scores]
        if not todo:
            return
        imgs, index = [], {}
        for c in todo:          # candidates of one sample share the input: estimate its depth once
            for im in (c.input_image, c.output_image):
                key = (im.shape, hash(im.tobytes()))
                if key not in index:
                    index[key] = len(imgs)
                    imgs.append(im)
        maps = self.predict(imgs)
        for c in todo:
            a = maps[index[(c.input_image.shape, hash(c.input_image.tobytes()))]]
            b = maps[index[(c.output_image.shape, hash(c.output_image.tobytes()))]]
            c.scores["depth_l1"] = depth_l1(a, b)

    def __call__(self, c: Candidate) -> Verdict:
        if "depth_l1" not in c.scores:
            self.prepare([c])
        s = {"depth_l1": c.scores["depth_l1"]}
        reason, detail = judge(self.cfg, c.task, s, ("depth_l1",))
        return Verdict(reason is None, reason, s, detail)
