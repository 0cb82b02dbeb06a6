"""Filter stage: judge every candidate of every sample, keep the best passing one.

For a batch of rows:
  1. the task predictor reads the instructions: keep the task, reassign it (``final_task``) or
     reject the sample (``task_mismatch``);
  2. every candidate (``candidates`` from multi-candidate generators, else the one pair) becomes a
     ``filters.Candidate``; model filters score the whole batch at once (``prepare``);
  3. each filter that applies to the task judges each candidate; a candidate passes when all do;
  4. the best passing candidate by ``filters.select_by`` becomes the row's pair; with none passing
     the sample is rejected with the reason of the best-scoring candidate (its filter in the detail);
  5. every candidate's scores and verdict go to ``candidates_report`` (provenance.candidates), the
     kept candidate's scores to ``scores``.
With ``filters.enabled: false`` (also the calibration pass) nothing is rejected: the best candidate
by ``select_by`` is kept and all scores are still recorded. In the calibration pass (quantile rules
not calibrated yet) the candidates stay on the row, so the main pass can judge them from their
stored scores without generating them again.
"""
from __future__ import annotations

import json

from filters import build_filters
from filters.base import Candidate
from filters.config import higher_is_better
from filters.detector_checks import mask_box
from pipeline.models.provenance import add_models
from pipeline.schema import reject
from pipeline.sources import decode_png
from pipeline.stages.base import Stage


class FilterStage(Stage):
    name = "filter"
    resources_key = "filter"

    def setup(self) -> None:
        self.fc = self.cfg.filters
        self.filters = build_filters(self.cfg)
        self.task_check = None
        if self.fc.task_predictor.enabled:
            from filters.task_predictor import TaskPredictorCheck
            self.task_check = TaskPredictorCheck(self.fc.task_predictor)
        # provenance.models: each filter's models, named once per actor; a row gets those of the
        # filters that judged it (and the task predictor's when it read the row's instruction)
        self.filter_refs = [f.model_refs() for f in self.filters]
        self.task_refs = self.task_check.model_refs() if self.task_check else {}

    @property
    def calibrating(self) -> bool:
        return self.fc.needs_calibration() and self.fc.calibrated is None

    def wants(self, row: dict) -> bool:
        return row["output_png"] is not None or bool(row["candidates"])

    def process(self, rows: list[dict]) -> None:
        answers = {id(r): json.loads(r["answer"] or "{}") for r in rows}
        task_pred = self._predict_tasks(rows, answers)
        live = [r for r in rows if r["status"] == "pending"]
        cands = {id(r): self._candidates(r, answers[id(r)]) for r in live}
        batch = [c for r in live for c in cands[id(r)]]
        for f in self.filters:                                   # one model call per filter per batch
            f.prepare([c for c in batch if f.applies_to(c.task)])
        for r in live:
            self._decide(r, cands[id(r)], task_pred.get(id(r)))

    # 1. task predictor
    def _predict_tasks(self, rows: list[dict], answers: dict) -> dict:
        if self.task_check is None:
            return {}
        todo = [r for r in rows if answers[id(r)].get("instruction")]
        if not todo:
            return {}
        got = self.task_check([r["task"] for r in todo], [answers[id(r)]["instruction"] for r in todo])
        out = {}
        for r, d in zip(todo, got):
            add_models(r, self.task_refs)
            out[id(r)] = d
            if not self.fc.enabled:
                continue
            if not d["keep"]:
                reject(r, self.name, d["reason"], f"task_predictor: {d['detail']}")
            elif d["task"] != r["task"]:
                r["final_task"] = d["task"]
        return out

    # 2. candidates
    def _candidates(self, row: dict, answer: dict) -> list[Candidate]:
        task = row.get("final_task") or row["task"]
        common = dict(task=task, instruction=answer.get("instruction", ""), input_caption=row["caption"],
                      output_caption=answer.get("output_caption", ""), answer=answer)
        raw = row["candidates"] or [{"input_png": row["input_png"], "output_png": row["output_png"],
                                     "mask_png": row["mask_png"], "mask_variant": row["mask_variant"],
                                     "params": row["params"]}]
        # scores a calibration pass already computed for these very candidates are reused
        obj_mask, obj_box = self._object(row)
        known = json.loads(row["candidates_report"])["candidates"] if row["candidates_report"] else []
        if len(known) != len(raw):
            known = [{}] * len(raw)
        out = []
        for k, prior in zip(raw, known):
            c = Candidate(input_image=decode_png(k["input_png"]), output_image=decode_png(k["output_png"]),
                          params=json.loads(k["params"] or "{}"),
                          mask=decode_png(k["mask_png"]) if k["mask_png"] else None,
                          object_mask=obj_mask, object_box=obj_box, **common)
            c.raw = k
            # model scores only: verdict-producing filters still run, and task_pred is recomputed
            c.scores.update({m: v for m, v in (prior.get("scores") or {}).items()
                             if m in ("clip_dir", "clip_img", "clip_out", "dino", "l1", "depth_l1")})
            out.append(c)
        return out

    @staticmethod
    def _object(row: dict) -> tuple:
        """The grounded object's precise mask and own box, whatever mask variant a candidate used:
        the grounding stage's chosen detection box, else the box of the precise mask."""
        mask = next((decode_png(m["png"]) for m in (row.get("masks") or []) if m["variant"] == "precise"), None)
        g = json.loads(row["grounding"]) if row.get("grounding") else {}
        if g.get("chosen") is not None and g.get("detections"):
            return mask, tuple(float(v) for v in g["detections"][g["chosen"]]["box"])
        return mask, mask_box(mask)

    # 3.–5. judge, select, record
    def _decide(self, row: dict, cands: list[Candidate], tp: dict | None) -> None:
        task = row.get("final_task") or row["task"]
        for f, refs in zip(self.filters, self.filter_refs):
            if f.applies_to(task):
                add_models(row, refs)
        report = []
        for c in cands:
            verdicts = []
            for f in self.filters:
                if f.applies_to(c.task):
                    v = f(c)
                    c.scores.update({k: float(x) for k, x in v.scores.items()})
                    verdicts.append((f.name, v))
            if tp is not None:
                c.scores["task_pred"] = tp["task_pred"]
            failed = next(((n, v) for n, v in verdicts if not v.keep), None)
            c.failed = failed
            report.append({"mask_variant": c.raw["mask_variant"], "params": c.params,
                           "scores": {k: round(v, 6) for k, v in sorted(c.scores.items())},
                           "keep": failed is None,
                           "reason": None if failed is None else failed[1].reason})
        sel = self.fc.select_by
        sign = 1.0 if higher_is_better(sel) else -1.0

        def key(i: int) -> float:
            v = cands[i].scores.get(sel)
            return float("-inf") if v is None else sign * v      # first best wins ties: stable

        order = sorted(range(len(cands)), key=key, reverse=True)
        passing = [i for i in order if cands[i].failed is None]
        best = passing[0] if passing else order[0]
        chosen = cands[best]
        summary = {"selected": best, "select_by": sel, "candidates": report}
        if tp is not None:
            summary["task_predictor"] = {k: tp[k] for k in ("predicted", "confidence", "task_pred", "detail")}
        row["candidates_report"] = json.dumps(summary, sort_keys=True)
        row["scores"] = json.dumps(chosen.scores, sort_keys=True)
        if row["candidates"]:
            k = chosen.raw
            row["input_png"], row["output_png"], row["mask_png"] = k["input_png"], k["output_png"], k["mask_png"]
            row["mask_variant"], row["params"] = k["mask_variant"], k["params"]
            if not self.calibrating and self.cfg.output.keep_candidates == "best":
                row["candidates"] = None             # images of the others are not kept
            # keep_candidates: all → they travel on to the writer, which stores the others in candidates/
        if not passing and self.fc.enabled:
            name, v = chosen.failed
            n = len(cands)
            more = f" (best of {n} candidates)" if n > 1 else ""
            reject(row, self.name, v.reason or "filtered", f"{name}: {v.detail or v.reason}{more}")
