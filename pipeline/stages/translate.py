"""Translation stage: annotators turn a photo into its depth / sketch / normal / pose /
segmentation map; the five translation tasks make their pairs in both directions.

The annotators (``pipeline.translate.Annotators``) are built once per actor in ``setup``, only
those the job's tasks need. Per row: decode the photo, the task's ``make_pair`` asks its annotator
for the map and orders the pair by the planned direction; a map that cannot be made (blank,
no pose) is a counted reject of this stage.
"""
from __future__ import annotations

from typing import Any

from pipeline.stages.pair import PairStage
from tasks import get_task


class TranslateStage(PairStage):
    name = "translate"
    resources_key = "translate"
    device_stage = "translate"
    seed_salt = 0x7A45

    def setup(self) -> None:
        from pipeline.translate.annotators import Annotators

        tasks = {t for t in self.cfg.tasks if get_task(t).stage == self.device_stage}
        self.annotators = Annotators(self.cfg, tasks)

    def make_pair_kwargs(self) -> dict[str, Any]:
        return {"annotators": self.annotators}

    def model_refs(self, task: str) -> dict[str, str]:
        return self.annotators.model_refs(task)
