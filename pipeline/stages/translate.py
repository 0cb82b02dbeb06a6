"""Translation stage: annotators turn a photo into its depth / sketch / normal / pose /
segmentation map; the five translation tasks make their pairs in both directions.

The annotators (``pipeline.translate.Annotators``) are built once per actor in ``setup``, only
those the job's tasks need. Per row: decode the photo, the task's ``make_pair`` asks its annotator
for the map and orders the pair by the planned direction; a map that cannot be made (blank,
no pose) is a counted reject of this stage.
"""
from __future__ import annotations

import json

import numpy as np

from pipeline.schema import reject
from pipeline.sources import decode_png, encode_png
from pipeline.stages.base import Stage
from tasks import SampleReject, get_task


class TranslateStage(Stage):
    name = "translate"
    resources_key = "translate"
    device_stage = "translate"

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        return any(get_task(t).stage == cls.device_stage for t in tasks)

    def setup(self) -> None:
        from pipeline.translate.annotators import Annotators

        tasks = {t for t in self.cfg.tasks if get_task(t).stage == self.device_stage}
        self.annotators = Annotators(self.cfg, tasks)

    def wants(self, row: dict) -> bool:
        return get_task(row["task"]).stage == self.device_stage

    def process_row(self, row: dict) -> None:
        task = get_task(row["task"])
        if row["input_png"] is None:
            reject(row, self.name, "no_input_image", "translation needs the row's photo")
            return
        try:
            image = decode_png(row["input_png"])
        except ValueError as e:
            reject(row, self.name, "bad_image", str(e))
            return
        rng = np.random.default_rng([row["seed"], 0x7A45])
        try:
            pair = task.make_pair(image, json.loads(row["answer"] or "{}"), json.loads(row["plan"] or "{}"), rng,
                                  annotators=self.annotators)
        except SampleReject as e:
            reject(row, self.name, e.reason, e.detail)
            return
        row["input_png"] = encode_png(pair.input_image)
        row["output_png"] = encode_png(pair.output_image)
        row["mask_png"] = None
        row["mask_variant"] = None
        row["params"] = json.dumps(pair.params, sort_keys=True)
