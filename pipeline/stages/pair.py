"""Pair stage for the cheap CPU generators (colour filters today; drawing and annotators later).
Each task's ``make_pair`` does the work; this stage decodes, calls it, and encodes the result."""
from __future__ import annotations

import json

import numpy as np

from pipeline.schema import reject
from pipeline.sources import decode_png, encode_png
from pipeline.stages.base import Stage
from tasks import SampleReject, get_task


class CpuPairStage(Stage):
    name = "pair_cpu"
    resources_key = "cpu"
    device_stage = "cpu"

    def wants(self, row: dict) -> bool:
        return get_task(row["task"]).stage == self.device_stage

    def process_row(self, row: dict) -> None:
        task = get_task(row["task"])
        rng = np.random.default_rng([row["seed"], 0xED17])
        try:
            pair = task.make_pair(decode_png(row["input_png"]), json.loads(row["answer"]),
                                  json.loads(row["plan"]), rng)
        except SampleReject as e:
            reject(row, self.name, e.reason, e.detail)
            return
        row["input_png"] = encode_png(pair.input_image)
        row["output_png"] = encode_png(pair.output_image)
        if pair.mask is not None:
            row["mask_png"] = encode_png(pair.mask)
        row["mask_variant"] = pair.mask_variant
        row["params"] = json.dumps(pair.params, sort_keys=True)
