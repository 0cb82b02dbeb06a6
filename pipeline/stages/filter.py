"""Filter stage: run every filter that applies to the row's task, store all scores, reject on the
first failing filter (its reason), keep the rest."""
from __future__ import annotations

import json

from filters import build_filters
from filters.base import Candidate
from pipeline.schema import reject
from pipeline.sources import decode_png
from pipeline.stages.base import Stage


class FilterStage(Stage):
    name = "filter"
    resources_key = "filter"

    def setup(self) -> None:
        self.filters = build_filters(self.cfg.filters)

    def wants(self, row: dict) -> bool:
        return row["output_png"] is not None

    def process_row(self, row: dict) -> None:
        answer = json.loads(row["answer"])
        c = Candidate(task=row["task"], input_image=decode_png(row["input_png"]),
                      output_image=decode_png(row["output_png"]),
                      instruction=answer.get("instruction", ""), input_caption=row["caption"],
                      output_caption=answer.get("output_caption", ""),
                      params=json.loads(row["params"] or "{}"),
                      mask=decode_png(row["mask_png"]) if row["mask_png"] else None)
        scores: dict[str, float] = {}
        failed = None
        for f in self.filters:
            if not f.applies_to(c.task):
                continue
            v = f(c)
            scores.update({k: float(x) for k, x in v.scores.items()})
            if not v.keep and failed is None:
                failed = v
        row["scores"] = json.dumps(scores, sort_keys=True)
        if failed is not None and self.cfg.filters.enabled:
            reject(row, self.name, failed.reason or "filtered")
