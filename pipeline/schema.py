"""The record: one Arrow schema for every shard row, defined once here.

Images use the Hugging Face ``datasets`` Image layout (``struct<bytes, path>``) and the schema carries
the ``datasets`` feature metadata, so ``datasets.load_dataset("parquet", ...)`` decodes images to PIL
while DuckDB, polars, pandas and Ray Data read the same files as plain structs.

Two schemas live here:
  * ``RECORD_SCHEMA`` — what lands in the shards;
  * ``FLOW_SCHEMA``   — the flat in-flight row passed between Ray stages (images as PNG bytes,
    nested values as JSON strings) so every batch has one fixed Arrow type, whatever it holds.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
from datasets import Features, Image, List, Value

# Score columns; a filter may only emit these keys (tests check it), so the schema stays fixed.
SCORE_FIELDS = ("l1", "clipped_frac", "contrast_ratio", "clip_dir", "clip_img", "clip_out", "dino", "depth_l1", "detector", "task_pred",
                "change_l1", "change_frac",   # change_*: the minimum-change floor, measured in the edit region
                # the VLM judge (pipeline/judge/): weighted score and each rubric criterion, all 0..1
                "judge", "judge_following", "judge_preservation", "judge_realism", "judge_technical")

FEATURES = Features({
    "id": Value("string"),
    "sample_index": Value("int64"),
    "source_id": Value("string"),
    "attempt": Value("int32"),
    "task": Value("string"),
    "task_id": Value("int8"),
    "instruction": Value("string"),     # the one the trainer reads: the agent's, or the judge's rewrite (judge.rewrite.train_on)
    "instruction_agent": Value("string"),     # the instruction agent's, always
    "instruction_rewrite": Value("string"),   # the judge's, written from the pair itself (null: not asked / unusable)
    "input_caption": Value("string"),
    "output_caption": Value("string"),
    "original_object": Value("string"),
    "edited_object": Value("string"),
    "original_object_plain": Value("string"),   # without possession, when the phrase had one
    "edited_object_plain": Value("string"),
    "input_image": Image(),
    "output_image": Image(),
    "mask": Image(),
    "mask_variant": Value("string"),
    # every mask the grounding stage made for the sample, each with its variant name
    # (precise / dilated_blurred / bbox / background); `mask` above is the one the kept pair used
    "masks": List({"variant": Value("string"), "mask": Image()}),
    "params": Value("string"),          # JSON: every sampled generation parameter
    "scores": {k: Value("float64") for k in SCORE_FIELDS},
    "status": Value("string"),          # accepted | rejected
    # cost accounting: per stage the row reached, in chain order, its share of the batch's wall time
    # and the CPU/GPU seconds that share held (stage's declared num_cpus/num_gpus × wall); also
    # "llm_server" for the row's share of a vLLM server (pipeline/cost.py says how it is attributed)
    "stage_times": List({"stage": Value("string"), "wall_s": Value("float64"), "cpu_s": Value("float64"),
                         "gpu_s": Value("float64")}),
    "reject_reason": Value("string"),
    "reject_stage": Value("string"),
    "reject_detail": Value("string"),
    "provenance": {
        "job_name": Value("string"),
        "config_hash": Value("string"),
        "code_version": Value("string"),
        "seed": Value("int64"),
        "llm_backend": Value("string"),
        "llm_model": Value("string"),
        "prompt_hash": Value("string"),
        "prompt_file_hash": Value("string"),
        "exemplar_ids": List(Value("string")),
        "intro_verb": Value("string"),
        "verb_swaps": Value("string"),  # JSON: exemplar id -> [[old, new], ...]
        "llm_seed": Value("int64"),
        "llm_tries": Value("int32"),
        "llm_completion_tokens": Value("int32"),
        "image_source": Value("string"),
        "models": Value("string"),      # JSON: role -> model reference (id or spec @ checksum of the
                                        # weights), every model that made or judged the pair
        "depossess": Value("string"),   # JSON: object key -> "llm" | "rule" (who removed the possession)
        "grounding": Value("string"),   # JSON: phrase used, boxes, scores, detector/segmenter ids
        "candidates": Value("string"),  # JSON: every candidate's params, scores and verdict; which was kept
        "planned_task": Value("string"),  # the task the sample was planned as (the id hashes it);
                                          # differs from `task` when the task predictor reassigned it
        "judge": Value("string"),       # JSON: judge model, prompt version and hash, seed, weights,
                                        # threshold, criteria, weighted score, rewrite (null: not judged)
    },
})
RECORD_SCHEMA: pa.Schema = FEATURES.arrow_schema
IMAGE_COLUMNS = ("input_image", "output_image", "mask")

# candidates/ (``output.keep_candidates: all``): one row per candidate that was NOT kept, of every
# sample whose generator made several. The kept one is the sample's row in data/ or rejects/
# (``candidate`` numbers match provenance.candidates' list and its ``selected``).
CANDIDATE_FEATURES = Features({
    "id": Value("string"),              # the sample's id
    "sample_index": Value("int64"),
    "task": Value("string"),
    "candidate": Value("int32"),        # position in provenance.candidates["candidates"]
    "selected": Value("int32"),         # the position that was kept (the same for all of a sample)
    "passed": Value("bool"),            # passed every filter (was a candidate for keeping)
    "reason": Value("string"),          # the first failing filter's reason, else null
    # null when it equals the kept candidate's input (the usual case: one base image, several
    # edits), so a sample's input is stored once
    "input_image": Image(),
    "output_image": Image(),
    "mask": Image(),
    "mask_variant": Value("string"),
    "params": Value("string"),          # JSON
    "scores": {k: Value("float64") for k in SCORE_FIELDS},
})
CANDIDATE_SCHEMA: pa.Schema = CANDIDATE_FEATURES.arrow_schema

FLOW_SCHEMA = pa.schema([
    ("sample_index", pa.int64()),
    ("id", pa.string()),
    ("source_id", pa.string()),
    ("attempt", pa.int32()),
    ("task", pa.string()),
    ("seed", pa.int64()),
    ("caption", pa.string()),
    ("image_ref", pa.string()),        # JSON {"kind": file|skimage|parquet, ...} or null
    ("status", pa.string()),           # pending | rejected (accepted is decided at the end)
    ("reject_reason", pa.string()),
    ("reject_stage", pa.string()),
    ("reject_detail", pa.string()),
    ("plan", pa.string()),             # JSON
    ("answer", pa.string()),           # JSON
    ("llm", pa.string()),              # JSON provenance of the instruction
    ("input_png", pa.binary()),
    ("output_png", pa.binary()),
    ("mask_png", pa.binary()),
    ("mask_variant", pa.string()),
    ("params", pa.string()),           # JSON
    ("scores", pa.string()),           # JSON
    # grounding stage output: every mask variant, and what was detected (JSON)
    ("masks", pa.list_(pa.struct([("variant", pa.string()), ("png", pa.binary())]))),
    ("grounding", pa.string()),
    # generators that make several candidates per sample put them here (output_png stays null);
    # the filter stage scores them all, keeps the best passing one in input/output/mask_png and
    # records every candidate's scores in ``candidates_report`` (JSON)
    ("candidates", pa.list_(pa.struct([("input_png", pa.binary()), ("output_png", pa.binary()),
                                       ("mask_png", pa.binary()), ("mask_variant", pa.string()),
                                       ("params", pa.string())]))),
    ("candidates_report", pa.string()),
    ("final_task", pa.string()),       # set by the filter stage when the task predictor reassigns
    ("models", pa.string()),           # JSON role -> model reference, merged by every stage that made
                                       # or judged the row (pipeline/models/provenance.py)
    ("stage_times", pa.string()),      # JSON stage -> [wall_s, cpu_s, gpu_s] (add_stage_time)
    ("judge", pa.string()),            # JSON: the VLM judge's verdict and rewrite (pipeline/stages/judge.py)
])


def sample_id(job_seed: int, source_id: str, task: str, attempt: int) -> str:
    """Content-addressed id: stable across reruns and machines."""
    h = hashlib.sha256(f"{job_seed}\x1f{source_id}\x1f{task}\x1f{attempt}".encode())
    return h.hexdigest()[:32]


def sample_seed(sample_id_: str) -> int:
    """Per-sample seed (63 bits) derived from the id, so every random draw is reproducible."""
    return int(sample_id_[:15], 16)


def new_flow_row(**kw: Any) -> dict:
    row = {f.name: None for f in FLOW_SCHEMA}
    row["status"] = "pending"
    row.update(kw)
    return row


def reject(row: dict, stage: str, reason: str, detail: str = "") -> dict:
    """Mark a flow row rejected (first reason wins: later stages pass it through)."""
    if row["status"] != "rejected":
        row["status"] = "rejected"
        row["reject_stage"] = stage
        row["reject_reason"] = reason
        row["reject_detail"] = (detail or "")[:500] or None
    return row


def add_stage_time(row: dict, stage: str, wall_s: float, cpu_s: float, gpu_s: float) -> None:
    """Add a stage's time to a flow row (summed when a row passes a stage twice, as calibration
    samples do the filter: both passes used it)."""
    t = json.loads(row.get("stage_times") or "{}")
    w, c, g = t.get(stage, (0.0, 0.0, 0.0))
    t[stage] = [w + wall_s, c + cpu_s, g + gpu_s]
    row["stage_times"] = json.dumps(t)


def stage_times_record(row: dict) -> list[dict]:
    t = json.loads(row.get("stage_times") or "{}")
    return [{"stage": k, "wall_s": v[0], "cpu_s": v[1], "gpu_s": v[2]} for k, v in t.items()]


def flow_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=FLOW_SCHEMA)


def _img(b: bytes | None, name: str) -> dict | None:
    return None if b is None else {"bytes": b, "path": name}


def to_record(row: dict, *, job_name: str, config_hash: str, code_version: str) -> dict:
    """Flow row → shard record (the one place that knows both layouts)."""
    from tasks import TASK_IDS

    answer = json.loads(row["answer"]) if row["answer"] else {}
    llm = json.loads(row["llm"]) if row["llm"] else {}
    scores = json.loads(row["scores"]) if row["scores"] else {}
    unknown = set(scores) - set(SCORE_FIELDS)
    if unknown:
        raise ValueError(f"scores {sorted(unknown)} are not columns of the record schema")
    sid = row["id"]
    accepted = row["status"] != "rejected"
    judge = json.loads(row["judge"]) if row.get("judge") else {}
    rewrite = (judge.get("rewrite") or {}).get("instruction")
    agent_instruction = answer.get("instruction")
    return {
        "id": sid,
        "sample_index": row["sample_index"],
        "source_id": row["source_id"],
        "attempt": row["attempt"],
        "task": row.get("final_task") or row["task"],
        "task_id": TASK_IDS.get(row.get("final_task") or row["task"], -1),
        "instruction": rewrite if rewrite and judge.get("train_on") == "rewrite" else agent_instruction,
        "instruction_agent": agent_instruction,
        "instruction_rewrite": rewrite,
        "input_caption": row["caption"],
        "output_caption": answer.get("output_caption"),
        "original_object": answer.get("original_object"),
        "edited_object": answer.get("edited_object"),
        "original_object_plain": answer.get("original_object_plain"),
        "edited_object_plain": answer.get("edited_object_plain"),
        "input_image": _img(row["input_png"], f"{sid}_input.png"),
        "output_image": _img(row["output_png"], f"{sid}_output.png"),
        "mask": _img(row["mask_png"], f"{sid}_mask.png"),
        "mask_variant": row["mask_variant"],
        "masks": [{"variant": m["variant"], "mask": _img(m["png"], f"{sid}_mask_{m['variant']}.png")}
                  for m in (row.get("masks") or [])],
        "params": row["params"],
        "scores": {k: scores.get(k) for k in SCORE_FIELDS},
        "status": "accepted" if accepted else "rejected",
        "stage_times": stage_times_record(row),
        "reject_reason": None if accepted else row["reject_reason"],
        "reject_stage": None if accepted else row["reject_stage"],
        "reject_detail": None if accepted else row["reject_detail"],
        "provenance": {
            "job_name": job_name,
            "config_hash": config_hash,
            "code_version": code_version,
            "seed": row["seed"],
            "llm_backend": llm.get("backend"),
            "llm_model": llm.get("model"),
            "prompt_hash": llm.get("prompt_hash"),
            "prompt_file_hash": llm.get("prompt_file_hash"),
            "exemplar_ids": llm.get("exemplar_ids"),
            "intro_verb": llm.get("intro_verb"),
            "verb_swaps": json.dumps(llm["verb_swaps"], sort_keys=True) if llm.get("verb_swaps") is not None else None,
            "llm_seed": llm.get("seed"),
            "llm_tries": llm.get("tries"),
            "llm_completion_tokens": llm.get("completion_tokens"),
            "image_source": row["image_ref"],
            "models": row.get("models") or "{}",
            "depossess": json.dumps(llm["depossess"], sort_keys=True) if llm.get("depossess") else None,
            "grounding": row.get("grounding"),
            "candidates": row.get("candidates_report"),
            "planned_task": row["task"],
            "judge": row.get("judge"),
        },
    }


def to_candidate_records(row: dict) -> list[dict]:
    """Flow row → its not-kept candidates as candidates/ records ([] for a one-candidate sample or
    one that never reached the filter stage). Scores come from the filter's report, so a stored
    candidate carries what decided against it."""
    cands = row.get("candidates") or []
    if len(cands) < 2 or not row.get("candidates_report"):
        return []
    rep = json.loads(row["candidates_report"])
    sel, judged = int(rep["selected"]), rep["candidates"]
    if len(judged) != len(cands):
        raise ValueError(f"sample {row['id']}: {len(cands)} candidates, {len(judged)} in the filter's report")
    sid, task = row["id"], row.get("final_task") or row["task"]
    kept_input = cands[sel]["input_png"]
    out = []
    for i, (c, j) in enumerate(zip(cands, judged)):
        if i == sel:
            continue
        scores = j.get("scores") or {}
        out.append({
            "id": sid, "sample_index": row["sample_index"], "task": task, "candidate": i, "selected": sel,
            "passed": bool(j.get("keep")), "reason": j.get("reason"),
            "input_image": None if c["input_png"] == kept_input else _img(c["input_png"], f"{sid}_c{i}_input.png"),
            "output_image": _img(c["output_png"], f"{sid}_c{i}_output.png"),
            "mask": _img(c["mask_png"], f"{sid}_c{i}_mask.png"),
            "mask_variant": c["mask_variant"], "params": c["params"],
            "scores": {k: scores.get(k) for k in SCORE_FIELDS},
        })
    return out


def candidate_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=CANDIDATE_SCHEMA)


def record_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
