"""Grounding stage: Grounding DINO finds each sample's object, SAM cuts it out, the mask variants
are stored; the detect and segment tasks make their pairs here.

Which phrase a task grounds, and which masks it gets, is ``pipeline.grounding.targets``; the
background task's subject is the agent's ``subject`` when it is a noun phrase of the caption, else
the detector's best among the caption's noun phrases (all of them in one caption). Per batch:

    1. every row's image and phrase; rows of other tasks, and rows with no image yet (the add
       flow's generated base image arrives from the diffusion stage), pass through untouched
    2. one detector call for all images of the batch
    3. rows with no detection whose phrase was possessive: a second detector call, all of them
       together, with the de-possessed phrase (``<key>_plain`` from the instruction stage)
       background rows whose agent subject found nothing: one call with the caption's noun phrases
    4. still nothing above threshold → reject ``no_object`` (background: ``no_subject``, also when
       the row has neither a valid agent subject nor a noun phrase to try)
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
from pipeline.models.provenance import add_models
from pipeline.schema import reject
from pipeline.sources import decode_png, encode_png
from pipeline.stages.base import Stage
from tasks import SampleReject, get_task


class GroundStage(Stage):
    name = "ground"
    resources_key = "ground"

    def setup(self) -> None:
        from pipeline.grounding.detector import build_detector, detector_refs
        from pipeline.grounding.segmenter import build_segmenter
        from pipeline.models.provenance import model_ref

        self.g = self.cfg.grounding
        self.detector = build_detector(self.cfg.models.detector, self.g)
        self.segmenter = build_segmenter(self.cfg.models.segmenter, self.g)
        self.detector_refs = detector_refs(self.detector)
        self.segmenter_refs = {"segmenter": model_ref(self.segmenter.spec, self.segmenter)}

    @classmethod
    def needed(cls, tasks: set[str]) -> bool:
        return any(grounds(t) for t in tasks)

    def wants(self, row: dict) -> bool:
        return grounds(row["task"]) and row["input_png"] is not None

    # ---------------------------------------------------------------- steps
    def _prepare(self, row: dict) -> dict | None:
        answer = json.loads(row["answer"]) if row["answer"] else {}
        target = target_for(row["task"], answer, row["caption"] or "")
        if target is None:
            reject(row, self.name, "no_phrase", f"nothing to ground for task {row['task']}")
            return None
        if target.source == "none":
            row["grounding"] = json.dumps({"subject_source": None, "subject_issue": target.issue,
                                           "subject_candidates": []}, sort_keys=True)
            reject(row, self.name, "no_subject", f"no subject: the agent's is unusable ({target.issue}) "
                   "and the caption has no other noun phrase to detect")
            return None
        try:
            image = decode_png(row["input_png"])
        except ValueError as e:
            reject(row, self.name, "bad_image", str(e))
            return None
        first = [target.phrase] if target.phrase else list(target.candidates)
        return {"row": row, "answer": answer, "target": target, "image": image, "tried": list(first),
                "first": first, "phrase": target.phrase, "dets": [],
                "subject_source": target.source if row["task"] == BACKGROUND_TASK else None}

    def _detect(self, items: list[dict], phrases_of) -> None:
        """One detector call; ``phrases_of(item)`` is the list of phrases for its image. The phrase
        grounded is the best detection's (with one phrase, that phrase)."""
        if not items:
            return
        found = self.detector.detect([it["image"] for it in items], [phrases_of(it) for it in items])
        for it, dets in zip(items, found):
            add_models(it["row"], self.detector_refs)
            it["dets"] = dets
            it["phrase"] = dets[0].phrase if dets else phrases_of(it)[0]

    def _grounding_json(self, it: dict, chosen: int | None) -> str:
        t: Target = it["target"]
        d = {"phrase": it["phrase"], "phrase_source": t.source, "tried": it["tried"],
             "used_plain": t.plain is not None and it["phrase"] == t.plain,
             "detections": [{"box": list(x.box), "score": round(x.score, 4), "phrase": x.phrase} for x in it["dets"]],
             "chosen": chosen, "detector": self.detector.model_id,
             "segmenter": self.segmenter.model_id if it.get("segmented") else None,
             "box_threshold": self.g.box_threshold, "text_threshold": self.g.text_threshold}
        if it["row"]["task"] == BACKGROUND_TASK:
            d.update(phrase_source="subject", subject_source=it["subject_source"] if chosen is not None else None,
                     subject_issue=t.issue, subject_candidates=list(t.candidates))
        return json.dumps(d, sort_keys=True)

    def process(self, rows: list[dict]) -> None:
        # 1. images and phrases
        items = [it for it in (self._prepare(r) for r in rows) if it is not None]
        # 2. one detector call for the batch
        self._detect(items, lambda it: it["first"])
        # 3. second try with the de-possessed phrase, again batched
        retry = [it for it in items if not it["dets"] and it["target"].plain]
        for it in retry:
            it["tried"].append(it["target"].plain)
        self._detect(retry, lambda it: [it["target"].plain])
        # 3b. background: the agent's subject not found → the detector picks among the caption's
        #     noun phrases
        retry = [it for it in items if not it["dets"] and it["subject_source"] == "llm" and it["target"].candidates]
        for it in retry:
            it["tried"].extend(it["target"].candidates)
            it["subject_source"] = "detector"
        self._detect(retry, lambda it: list(it["target"].candidates))
        # 4. nothing found
        live = []
        for it in items:
            if not it["dets"]:
                it["row"]["grounding"] = self._grounding_json(it, None)
                reason = "no_subject" if it["row"]["task"] == BACKGROUND_TASK else "no_object"
                reject(it["row"], self.name, reason,
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
                add_models(it["row"], self.segmenter_refs)
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
