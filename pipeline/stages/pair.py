"""Pair stages: a task's ``make_pair`` does the work; the stage decodes the row's photo, calls it
with whatever the stage loaded (``make_pair_kwargs``), and stores the pair.

``PairStage`` is that shared step; ``CpuPairStage`` runs the cheap CPU generators (colour filters)
with nothing loaded. The text and translate stages subclass it with their models.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from pipeline.models.provenance import add_models
from pipeline.schema import reject
from pipeline.sources import decode_png, encode_png
from pipeline.stages.base import Stage
from tasks import SampleReject, get_task


class PairStage(Stage):
    device_stage: ClassVar[str]     # the ``Task.stage`` this stage serves
    seed_salt: ClassVar[int]        # mixed into the row's seed: each stage draws its own numbers

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        return any(get_task(t).stage == cls.device_stage for t in tasks)

    def wants(self, row: dict) -> bool:
        return get_task(row["task"]).stage == self.device_stage

    def make_pair_kwargs(self) -> dict[str, Any]:
        """Extra keywords for the task's ``make_pair`` (the models this stage loaded in setup)."""
        return {}

    def model_refs(self, task: str) -> dict[str, str]:
        """provenance.models entries of the models that make this task's pairs (none for OpenCV)."""
        return {}

    def process_row(self, row: dict) -> None:
        if row["input_png"] is None:
            reject(row, self.name, "no_input_image", f"task {row['task']} needs the row's photo")
            return
        try:
            image = decode_png(row["input_png"])
        except ValueError as e:
            reject(row, self.name, "bad_image", str(e))
            return
        rng = np.random.default_rng([row["seed"], self.seed_salt])
        add_models(row, self.model_refs(row["task"]))
        try:
            pair = get_task(row["task"]).make_pair(image, json.loads(row["answer"] or "{}"),
                                                   json.loads(row["plan"] or "{}"), rng, **self.make_pair_kwargs())
        except SampleReject as e:
            reject(row, self.name, e.reason, e.detail)
            return
        row["input_png"] = encode_png(pair.input_image)
        row["output_png"] = encode_png(pair.output_image)
        row["mask_png"] = encode_png(pair.mask) if pair.mask is not None else None
        row["mask_variant"] = pair.mask_variant
        row["params"] = json.dumps(pair.params, sort_keys=True)


class CpuPairStage(PairStage):
    name = "pair_cpu"
    resources_key = "cpu"
    device_stage = "cpu"
    seed_salt = 0xED17
