"""Text stage: EasyOCR finds the text, OpenCV (or diffusion) inpaints it; the text task's pairs.

One ``TextEditor`` per actor (EasyOCR reader, fonts, the inpainting model when the diffusion
backend is chosen), loaded in ``setup``. Per row: decode the photo, let the task make the pair
(``pipeline.text.editor`` has the steps), store images, mask and params; a ``SampleReject``
(``no_text``, ``named_text_not_found``, ...) becomes the row's reject reason.
"""
from __future__ import annotations

import json

import numpy as np

from pipeline.schema import reject
from pipeline.sources import decode_png, encode_png
from pipeline.stages.base import Stage
from tasks import SampleReject, get_task


class TextStage(Stage):
    name = "text"
    resources_key = "text"

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        return any(get_task(t).stage == "text" for t in tasks)

    def setup(self) -> None:
        from pipeline.text.editor import TextEditor

        self.editor = TextEditor(self.cfg.text, inpaint_model=self.cfg.models.inpaint)

    def wants(self, row: dict) -> bool:
        return get_task(row["task"]).stage == "text" and row["input_png"] is not None

    def process_row(self, row: dict) -> None:
        try:
            image = decode_png(row["input_png"])
        except ValueError as e:
            reject(row, self.name, "bad_image", str(e))
            return
        rng = np.random.default_rng([row["seed"], 0x7E47])
        try:
            pair = get_task(row["task"]).make_pair(image, json.loads(row["answer"] or "{}"),
                                                   json.loads(row["plan"] or "{}"), rng, editor=self.editor)
        except SampleReject as e:
            reject(row, self.name, e.reason, e.detail)
            return
        row["input_png"] = encode_png(pair.input_image)
        row["output_png"] = encode_png(pair.output_image)
        row["mask_png"] = encode_png(pair.mask) if pair.mask is not None else None
        row["mask_variant"] = pair.mask_variant
        row["params"] = json.dumps(pair.params, sort_keys=True)
