"""Text stage: EasyOCR finds the text, OpenCV (or diffusion) inpaints it; the text task's pairs.

One ``TextEditor`` per actor (EasyOCR reader, fonts, the inpainting model when the diffusion
backend is chosen), loaded in ``setup``. Per row: decode the photo, let the task make the pair
(``pipeline.text.editor`` has the steps), store images, mask and params; a ``SampleReject``
(``no_text``, ``named_text_not_found``, ...) becomes the row's reject reason.
"""
from __future__ import annotations

from typing import Any

from pipeline.stages.pair import PairStage


class TextStage(PairStage):
    name = "text"
    resources_key = "text"
    device_stage = "text"
    seed_salt = 0x7E47

    def setup(self) -> None:
        from pipeline.text.editor import TextEditor

        self.editor = TextEditor(self.cfg.text, inpaint_model=self.cfg.models.inpaint)
        self.refs = self.editor.model_refs()

    def make_pair_kwargs(self) -> dict[str, Any]:
        return {"editor": self.editor}

    def model_refs(self, task: str) -> dict[str, str]:
        return self.refs
