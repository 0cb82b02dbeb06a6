"""Text stage: EasyOCR finds the text, OpenCV (or diffusion) inpaints it; the text task's pairs."""
from __future__ import annotations

from pipeline.stages.base import Stage
from tasks import get_task


class TextStage(Stage):
    name = "text"
    resources_key = "text"

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        return any(get_task(t).stage == "text" for t in tasks)

    def wants(self, row: dict) -> bool:
        return False
