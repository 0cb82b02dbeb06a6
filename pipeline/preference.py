"""`pairforge export-preference OUT DEST`: DPO-ready preference pairs from a job's candidates.

A sample of a multi-candidate task (the diffusion tasks) had several candidate outputs for one
(input image, instruction); the filter stage scored them all and kept one. With
``output.keep_candidates: all`` the others are stored in OUT/candidates/, so each accepted sample
gives pairs (chosen output, rejected output) for the same input and instruction.

Which candidate is better (the *score source*):
  * ``judge`` — a ``judge`` score of each candidate (higher is better), found in the candidate's
    scores (provenance.candidates, or the ``scores`` struct when the record schema has a ``judge``
    field) or, for the kept candidate, in a top-level ``judge`` column of data/ (a number or a
    struct with ``score``). It decides a pair when both of its candidates have one.
  * otherwise the filter's own score: ``select_by`` of the job (recorded in provenance.candidates),
    in its direction (filters.config.HIGHER_IS_BETTER). A candidate that passed every filter ranks
    above one that did not, whatever their scores, as in the filter stage's selection.
``--score NAME`` forces one metric (``judge`` or a filter score) instead of this choice.

The chosen output is the best-ranked candidate of the sample; each other candidate ranked below it
gives one row (``--pairs all``), or only the lowest-ranked one does (``--pairs worst``). Pairs whose
candidates tie, or whose margin is not above ``--min-margin`` while both passed the filters (or the
judge decides), are left out and counted. Only accepted samples are exported: a rejected sample had
no candidate good enough to be "chosen". A candidate stored with its own input image (not the kept
one's) is not paired: DPO needs one prompt per pair.

Memory is bounded whatever the job: shard by shard, data/ and candidates/ (both sorted by sample
index) are read a few rows at a time and merged, and rows go out in row groups of ``row_group``
rows. OUT and DEST may be local paths or object-store URIs (pipeline/storage.py); DEST is written
under a temporary name and moved into place at the end; with no pairs nothing is written.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image, Value

from filters.config import HIGHER_IS_BETTER
from pipeline.schema import SCORE_FIELDS
from pipeline.shards import Manifest, as_store
from pipeline.storage import open_source

log = logging.getLogger("pairforge")

JUDGE = "judge"
PREF_SCORE_FIELDS = SCORE_FIELDS + ((JUDGE,) if JUDGE not in SCORE_FIELDS else ())
PREF_FEATURES = Features({
    "id": Value("string"),                   # the sample's id (rows of one sample share it)
    "task": Value("string"),
    "instruction": Value("string"),
    "input_image": Image(),
    "chosen_image": Image(),
    "rejected_image": Image(),
    "chosen_candidate": Value("int32"),      # positions in the sample's provenance.candidates
    "rejected_candidate": Value("int32"),
    "chosen_kept": Value("bool"),            # the chosen one is the pair the job kept in data/
    "chosen_passed": Value("bool"),          # passed every filter
    "rejected_passed": Value("bool"),
    "score_source": Value("string"),         # "judge" or "filter:<metric>"
    "chosen_score": Value("float64"),
    "rejected_score": Value("float64"),
    "margin": Value("float64"),              # chosen − rejected in the good direction (≥ 0 unless a
                                             # failing candidate scored higher than a passing one)
    "chosen_scores": {k: Value("float64") for k in PREF_SCORE_FIELDS},
    "rejected_scores": {k: Value("float64") for k in PREF_SCORE_FIELDS},
})
PREF_SCHEMA: pa.Schema = PREF_FEATURES.arrow_schema

DATA_COLUMNS = ["id", "sample_index", "task", "instruction", "input_image", "output_image", "scores",
                "provenance.candidates"]
CAND_COLUMNS = ["sample_index", "candidate", "passed", "input_image", "output_image", "scores"]
BATCH = 8           # rows per read: a few images in memory per file


def _rows(store, path: str, columns: list[str]) -> Iterator[dict]:
    with store.open_input(path) as fh:
        pf = pq.ParquetFile(fh)
        cols = [c for c in columns if c.split(".")[0] in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=BATCH, columns=cols):
            yield from batch.to_pylist()


def _grouped(rows: Iterator[dict]) -> Iterator[tuple[int, list[dict]]]:
    """(sample index, its rows) from rows sorted by sample index."""
    cur, group = None, []
    for r in rows:
        if r["sample_index"] != cur and group:
            yield cur, group
            group = []
        cur = r["sample_index"]
        group.append(r)
    if group:
        yield cur, group


def _judge_of(v) -> float | None:
    if isinstance(v, dict):
        v = v.get("score")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class _Cand:
    __slots__ = ("index", "kept", "passed", "input", "output", "scores")

    def __init__(self, index, kept, passed, input_, output, scores):
        self.index, self.kept, self.passed, self.input, self.output = index, kept, passed, input_, output
        self.scores = {k: float(v) for k, v in scores.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}


def sample_candidates(row: dict, stored: list[dict]) -> tuple[list[_Cand], str]:
    """The accepted sample ``row`` (data/) and its stored candidates → every candidate (the kept one
    first) with its images and scores, and the job's select_by metric."""
    rep = json.loads((row.get("provenance") or {}).get("candidates") or "{}")
    judged = rep.get("candidates") or []
    sel = rep.get("selected", 0)
    kept_scores = {**(judged[sel].get("scores") or {} if sel < len(judged) else {}),
                   **{k: v for k, v in (row.get("scores") or {}).items() if v is not None}}
    if _judge_of(row.get(JUDGE)) is not None:
        kept_scores[JUDGE] = _judge_of(row[JUDGE])
    out = [_Cand(sel, True, True, row["input_image"], row["output_image"], kept_scores)]
    for c in stored:
        i = c["candidate"]
        scores = {**(judged[i].get("scores") or {} if i < len(judged) else {}),
                  **{k: v for k, v in (c.get("scores") or {}).items() if v is not None}}
        out.append(_Cand(i, False, bool(c["passed"]), c["input_image"] or row["input_image"], c["output_image"], scores))
    return out, rep.get("select_by") or "clip_dir"


def pairs_of(cands: list[_Cand], select_by: str, score: str, mode: str, min_margin: float,
             skipped: Counter) -> list[tuple[_Cand, _Cand, str, float]]:
    """(chosen, rejected, score source, margin) of one sample."""
    if score == "auto":
        metric = JUDGE if all(JUDGE in c.scores for c in cands) else select_by
    else:
        metric = score
    with_score = [c for c in cands if metric in c.scores]
    skipped["candidate_without_score"] += len(cands) - len(with_score)
    if len(with_score) < 2:
        return []
    sign = 1.0 if metric == JUDGE or HIGHER_IS_BETTER.get(metric, True) else -1.0
    judge_decides = metric == JUDGE

    def key(c: _Cand):
        s = sign * c.scores[metric]
        # the filter's score: passing beats failing (what the filter stage selects by); the kept one
        # first among equals, so a tie keeps the job's own choice
        return (s, c.kept) if judge_decides else (c.passed, s, c.kept)

    ranked = sorted(with_score, key=key, reverse=True)
    best, source = ranked[0], JUDGE if judge_decides else f"filter:{metric}"
    others = ranked[1:] if mode == "all" else ranked[-1:]
    out = []
    for c in others:
        margin = sign * (best.scores[metric] - c.scores[metric])
        if (c.input or {}).get("bytes") != (best.input or {}).get("bytes"):
            skipped["different_input"] += 1
        elif (judge_decides or c.passed == best.passed) and margin <= min_margin:
            skipped["margin_at_or_below_min"] += 1
        else:
            out.append((best, c, source, margin))
    return out


def _row(sample: dict, chosen: _Cand, rejected: _Cand, source: str, margin: float) -> dict:
    metric = JUDGE if source == JUDGE else source.split(":", 1)[1]
    return {"id": sample["id"], "task": sample["task"], "instruction": sample["instruction"],
            "input_image": chosen.input, "chosen_image": chosen.output, "rejected_image": rejected.output,
            "chosen_candidate": chosen.index, "rejected_candidate": rejected.index, "chosen_kept": chosen.kept,
            "chosen_passed": chosen.passed, "rejected_passed": rejected.passed, "score_source": source,
            "chosen_score": chosen.scores[metric], "rejected_score": rejected.scores[metric], "margin": margin,
            "chosen_scores": {k: chosen.scores.get(k) for k in PREF_SCORE_FIELDS},
            "rejected_scores": {k: rejected.scores.get(k) for k in PREF_SCORE_FIELDS}}


def iter_preference_rows(out, *, score: str = "auto", pairs: str = "all", min_margin: float = 0.0,
                         counts: Counter | None = None) -> Iterator[dict]:
    """Preference rows of a job's output, shard by shard (bounded memory); ``counts`` gets what was
    read, written and left out."""
    store = as_store(out)
    m = Manifest(store)
    if m.data is None:
        raise FileNotFoundError(f"{m.out}: no manifest.json — not a pairforge output folder")
    counts = Counter() if counts is None else counts
    for _, e in m.iter_entries():
        counts["shards"] += 1
        data, cand = e["files"].get("data"), e["files"].get("candidates")
        if not data:
            continue
        if not cand:
            counts["samples_without_stored_candidates"] += data["rows"]
            continue
        groups = _grouped(_rows(store, cand["path"], CAND_COLUMNS))
        pending = next(groups, None)
        for row in _rows(store, data["path"], DATA_COLUMNS + [JUDGE]):
            counts["accepted_samples"] += 1
            while pending is not None and pending[0] < row["sample_index"]:   # candidates of rejected samples
                pending = next(groups, None)
            if pending is None or pending[0] != row["sample_index"]:
                counts["samples_without_stored_candidates"] += 1
                continue
            stored, pending = pending[1], next(groups, None)
            cands, select_by = sample_candidates(row, stored)
            for chosen, rejected, source, margin in pairs_of(cands, select_by, score, pairs, min_margin, counts):
                counts["pairs"] += 1
                counts[f"source:{source}"] += 1
                yield _row(row, chosen, rejected, source, margin)


def export_preference(out, dest: str, *, score: str = "auto", pairs: str = "all", min_margin: float = 0.0,
                      row_group: int = 64) -> dict:
    """Write the preference rows of ``out`` to the Parquet file ``dest``; returns the counts."""
    if score != "auto" and score != JUDGE and score not in HIGHER_IS_BETTER:
        raise ValueError(f"--score: unknown score {score!r} (auto, {JUDGE}, or one of {', '.join(HIGHER_IS_BETTER)})")
    if pairs not in ("all", "worst"):
        raise ValueError(f"--pairs: {pairs!r} is not 'all' or 'worst'")
    store, name = open_source(dest)
    store.mkdirs()
    tmp = f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    counts: Counter = Counter()
    buf: list[dict] = []
    try:
        with store.fs.open_output_stream(store.path(tmp)) as fh, \
                pq.ParquetWriter(fh, PREF_SCHEMA, compression="zstd") as w:
            for r in iter_preference_rows(out, score=score, pairs=pairs, min_margin=min_margin, counts=counts):
                buf.append(r)
                if len(buf) >= row_group:
                    w.write_table(pa.Table.from_pylist(buf, schema=PREF_SCHEMA))
                    buf = []
            if buf:
                w.write_table(pa.Table.from_pylist(buf, schema=PREF_SCHEMA))
        if counts["pairs"]:
            store.delete(name)
            store.fs.move(store.path(tmp), store.path(name))
    finally:
        store.delete(tmp)
    counts["pairs"] += 0                         # always reported, also when nothing was paired
    # no pairs, no file (an empty Parquet file is not a dataset `datasets` can load)
    return {"dest": store.url(name) if counts["pairs"] else None, **dict(sorted(counts.items()))}
