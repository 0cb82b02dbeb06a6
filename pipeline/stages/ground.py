"""Grounding stage: Grounding DINO finds each sample's object, SAM cuts it out, the mask variants
are stored; the detect and segment tasks make their pairs here.

Which phrase a task grounds, and which masks it gets, is ``pipeline.grounding.targets``. Per batch:

    1. every row's image and phrase; rows of other tasks, and rows with no image yet (the add
       flow's generated base image arrives from the diffusion stage), pass through untouched
    2. one detector call for all images of the batch
    3. rows with no detection whose phrase was possessive: a second detector call, all of them
       together, with the de-possessed phrase (``<key>_plain`` from the instruction stage)
    4. still nothing above threshold → reject ``no_object``
    5. one segmenter call: the image encoder runs on all images needing a mask at once, then all
       boxes of an image in one prompt pass (detect needs only the box and skips it)
    6. masks: region tasks get precise / dilated_blurred / bbox, background its background mask;
       each stored with its variant name in ``masks``; what was found goes to ``grounding`` (JSON)
    7. detect / segment: the task draws the box / paints the mask (``make_pair``)

The best-scoring detection of the phrase is the object (one object per instruction).
"""
from __future__ import annotations

import json

import numpy as np

from pipeline.grounding import masks as M
from pipeline.grounding.targets import BACKGROUND_TASK, PAIR_TASKS, Grounded, Target, grounds, target_for
from pipeline.schema import reject
from pipeline.sources import decode_png, encode_png
from pipeline.stages.base import Stage
from tasks import SampleReject, get_task


class GroundStage(Stage):
    name = "ground"
    resources_key = "ground"

    def setup(self) -> None:
        from pipeline.grounding.detector import build_detector
        from pipeline.grounding.segmenter import build_segmenter

        self.g = self.cfg.grounding
        self.detector = build_detector(self.cfg.models.detector, self.g)
        self.segmenter = build_segmenter(self.cfg.models.segmenter, self.g)

    def wants(self, row: dict) -> bool:
        return grounds(row["task"]) and row["input_png"] is not None

    # ---------------------------------------------------------------- steps
    def _prepare(self, row: dict) -> dict | None:
        answer = json.loads(row["answer"]) if row["answer"] else {}
        target = target_for(row["task"], answer, row["caption"] or "")
        if target is None:
            reject(row, self.name, "no_phrase", f"nothing to ground for task {row['task']}")
            return None
        try:
            image = decode_png(row["input_png"])
        except ValueError as e:
            reject(row, self.name, "bad_image", str(e))
            return None
        return {"row": row, "answer": answer, "target": target, "image": image, "tried": [target.phrase],
                "phrase": target.phrase, "dets": []}

    def _detect(self, items: list[dict], phrase_of) -> None:
        if not items:
            return
        found = self.detector.detect([it["image"] for it in items], [[phrase_of(it)] for it in items])
        for it, dets in zip(items, found):
            it["dets"], it["phrase"] = dets, phrase_of(it)

    def _grounding_json(self, it: dict, chosen: int | None) -> str:
        t: Target = it["target"]
        d = {"phrase": it["phrase"], "phrase_source": t.source, "tried": it["tried"],
             "used_plain": it["phrase"] != t.phrase,
             "detections": [{"box": list(x.box), "score": round(x.score, 4), "phrase": x.phrase} for x in it["dets"]],
             "chosen": chosen, "detector": self.detector.model_id,
             "segmenter": self.segmenter.model_id if it.get("segmented") else None,
             "box_threshold": self.g.box_threshold, "text_threshold": self.g.text_threshold}
        return json.dumps(d, sort_keys=True)

    def process(self, rows: list[dict]) -> None:
        # 1. images and phrases
        items = [it for it in (self._prepare(r) for r in rows) if it is not None]
        # 2. one detector call for the batch
        self._detect(items, lambda it: it["target"].phrase)
        # 3. second try with the de-possessed phrase, again batched
        retry = [it for it in items if not it["dets"] and it["target"].plain]
        for it in retry:
            it["tried"].append(it["target"].plain)
        self._detect(retry, lambda it: it["target"].plain)
        # 4. nothing found
        live = []
        for it in items:
            if not it["dets"]:
                it["row"]["grounding"] = self._grounding_json(it, None)
                reject(it["row"], self.name, "no_object",
                       f"no box above box_threshold={self.g.box_threshold} for {' / '.join(map(repr, it['tried']))}")
            else:
                live.append(it)
        # 5. one segmenter call for every row that needs a mask
        seg = [it for it in live if it["row"]["task"] != "detect"]
        if seg:
            sam = self.segmenter.segment([it["image"] for it in seg],
                                         [np.array([it["dets"][0].box], np.float32) for it in seg])
            for it, m in zip(seg, sam):
                it["sam"], it["segmented"] = m[0], True
        # 6. masks and 7. pairs
        for it in live:
            self._finish(it)

    def _finish(self, it: dict) -> None:
        row, best, image = it["row"], it["dets"][0], it["image"]
        row["grounding"] = self._grounding_json(it, 0)
        task = row["task"]
        variants: dict[str, np.ndarray] = {}
        if "sam" in it:
            fg = M.precise_mask(it["sam"], best.box)
            if not fg.any():
                reject(row, self.name, "empty_mask", f"the segmenter found no pixels of {it['phrase']!r} in its box")
                return
            if task == BACKGROUND_TASK:
                variants[M.BACKGROUND] = M.background_mask(fg, self.g.background_widen_frac, self.g.background_blur_frac)
            else:
                variants = M.region_variants(it["sam"], best.box, self.g)
        row["masks"] = [{"variant": k, "png": encode_png(v)} for k, v in variants.items()]
        if task not in PAIR_TASKS:
            return
        grounded = Grounded(box=best.box, score=best.score, phrase=it["phrase"], mask=variants.get(M.PRECISE))
        rng = np.random.default_rng([row["seed"], 0x6D0])
        try:
            pair = get_task(task).make_pair(image, it["answer"], json.loads(row["plan"] or "{}"), rng,
                                            grounding=grounded)
        except SampleReject as e:
            reject(row, self.name, e.reason, e.detail)
            return
        row["output_png"] = encode_png(pair.output_image)
        row["mask_png"] = encode_png(pair.mask) if pair.mask is not None else None
        row["mask_variant"] = pair.mask_variant
        row["params"] = json.dumps(pair.params, sort_keys=True)
