"""Load stage: read the source image of each row, decode it completely, resize, store PNG bytes.

Runs first so a broken or non-image file is rejected before any LLM time is spent on it. Rows
without an image pass on (their tasks generate a base image later); a task that needs a real
input image and has none is rejected here as ``no_input_image``.
"""
from __future__ import annotations

import json

from pipeline.schema import reject
from pipeline.sources import ImageLoadError, decode_image, encode_png, read_image_bytes
from pipeline.stages.base import Stage
from tasks import get_task


class LoadStage(Stage):
    name = "load"
    resources_key = "load"

    def process_row(self, row: dict) -> None:
        task = get_task(row["task"])
        if not row["image_ref"]:
            if task.needs_input_image:
                reject(row, self.name, "no_input_image", "source row has no image and this task has no base-image generator")
            return
        ref = json.loads(row["image_ref"])
        try:
            arr = decode_image(read_image_bytes(ref), self.cfg.output.max_side)
        except (ImageLoadError, OSError) as e:
            reject(row, self.name, "bad_image", f"{ref.get('path') or ref.get('name')}: {e}")
            return
        row["input_png"] = encode_png(arr)
