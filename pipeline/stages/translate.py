"""Translation stage: annotators turn a photo into its depth / sketch / normal / pose /
segmentation map; the five translation tasks make their pairs in both directions."""
from __future__ import annotations

from pipeline.stages.base import Stage
from tasks import get_task


class TranslateStage(Stage):
    name = "translate"
    resources_key = "translate"

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        return any(get_task(t).stage == "translate" for t in tasks)

    def wants(self, row: dict) -> bool:
        return False
