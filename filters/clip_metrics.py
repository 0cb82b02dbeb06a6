"""CLIP_dir, CLIP_img, CLIP_out, DINO and L1 for every candidate (filters/metrics.py), judged by the
task's rules (filters/config.py): InstructPix2Pix-style absolute thresholds or calibrated quantiles.

Scores are computed for every task, judged only where a rule exists, so the statistics show the
distributions of tasks the metrics do not gate (colour, vision tasks) too."""
from __future__ import annotations

from typing import ClassVar

from filters.base import Candidate, Filter, Verdict, judge
from filters.metrics import MetricModels

METRICS = ("clip_dir", "clip_img", "clip_out", "dino", "l1")


class ClipMetricsFilter(Filter):
    name: ClassVar[str] = "clip_metrics"

    def __init__(self, cfg, clip: str = "tiny-random", dino: str | None = "tiny-random",
                 models: MetricModels | None = None, device: str = "cpu"):
        self.cfg = cfg
        self.models = models or MetricModels(clip=clip, dino=dino, device=device)

    def model_refs(self) -> dict[str, str]:
        from pipeline.models.provenance import model_ref
        refs = {"clip": model_ref(self.models.clip.spec, self.models.clip)}
        if self.models.dino is not None:
            refs["dino"] = model_ref(self.models.dino.spec, self.models.dino)
        return refs

    def prepare(self, candidates: list[Candidate]) -> None:
        todo = [c for c in candidates if "clip_dir" not in c.scores]
        got = self.models.compute([c.input_image for c in todo], [c.output_image for c in todo],
                                  [c.input_caption for c in todo], [c.output_caption or c.input_caption for c in todo])
        for c, s in zip(todo, got):
            c.scores.update(s)

    def __call__(self, c: Candidate) -> Verdict:
        if "clip_dir" not in c.scores:
            self.prepare([c])
        scores = {k: c.scores[k] for k in METRICS if k in c.scores}
        reason, detail = judge(self.cfg, c.task, scores, METRICS)
        return Verdict(reason is None, reason, scores, detail)
