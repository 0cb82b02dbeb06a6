"""Shard writer, manifest, verify and stats on synthetic rows (no LLM, no Ray): out-of-order
arrival, byte-identical rewrites, cleanup of what a killed run left, corruption detection."""
from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq

from pipeline.schema import RECORD_SCHEMA, new_flow_row, reject, sample_id, sample_seed
from pipeline.shards import Manifest, ShardWriter
from pipeline.sources import encode_png
from pipeline.stats import compute_stats
from pipeline.verify import verify


def _rows(n=10, seed=5):
    rows = []
    for i in range(n):
        sid = sample_id(seed, f"src:{i}", "color", 0)
        r = new_flow_row(sample_index=i, id=sid, source_id=f"src:{i}", attempt=0, task="color",
                         seed=sample_seed(sid), caption=f"caption {i}")
        img = np.full((16, 16, 3), i * 10, np.uint8)
        r.update(input_png=encode_png(img), output_png=encode_png(255 - img),
                 answer=json.dumps({"instruction": f"invert {i}", "output_caption": f"inverted {i}"}),
                 params=json.dumps({"ops": [{"op": "invert", "k": i}]}), scores=json.dumps({"l1": 0.5}),
                 llm=json.dumps({"backend": "vllm-openai", "model": "m", "exemplar_ids": ["a"]}))
        if i % 4 == 3:
            reject(r, "filter", "no_visible_change")
        rows.append(r)
    return rows


def _write(out, rows, order_seed):
    """Rows through the shard writer in a shuffled order; ``out`` a folder or a Store (S3 too)."""
    from pipeline.shards import as_store
    out = as_store(out)
    out.write_text("job.resolved.yaml", "seed: 5\n")
    m = Manifest(out)
    m.init(config_hash="h", job_name="t", n_samples=len(rows), n_shards=3, rows_per_shard=4)
    w = ShardWriter(out, m, {0: 4, 1: 4, 2: 2}, 4, job_name="t", config_hash="h", code_version="v", write_rejects=True)
    shuffled = rows[:]
    random.Random(order_seed).shuffle(shuffled)
    for i in range(0, len(shuffled), 3):
        w.add(shuffled[i:i + 3])
    return m


def test_out_of_order_rows_give_identical_bytes(tmp_path):
    _write(tmp_path / "a", _rows(), 1)
    _write(tmp_path / "b", _rows(), 2)
    for sub in ("data", "rejects"):
        for p in (tmp_path / "a" / sub).iterdir():
            assert p.read_bytes() == (tmp_path / "b" / sub / p.name).read_bytes()
    t = pq.read_table(tmp_path / "a" / "data" / "part-00000.parquet")
    assert t.schema.metadata == RECORD_SCHEMA.metadata and t.schema.names == RECORD_SCHEMA.names
    assert t.column("sample_index").to_pylist() == [0, 1, 2]


def test_verify_and_stats(tmp_path):
    out = tmp_path / "o"
    m = _write(out, _rows(), 3)
    assert m.data["complete"] and verify(out) == []
    s = compute_stats(out)
    assert s["samples"] == 10 and s["accepted"] == 8
    assert s["tasks"]["color"]["reject_reasons"] == {"filter:no_visible_change": 2}
    assert s["tasks"]["color"]["params"]["ops[invert].k"]["n"] == 8


def test_killed_run_leftovers_are_cleaned(tmp_path):
    # what a run killed between compaction and commit leaves: shard 2's final file without its
    # record, a half-written temp file, and writers' part files
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    (out / "_commits" / "shard-00002.json").unlink()
    (out / "data" / ".tmp-part-00003.parquet-1a2b").write_bytes(b"half")
    (out / ".tmp" / "shard-00003").mkdir(parents=True)
    (out / ".tmp" / "shard-00003" / "abc.parquet").write_bytes(b"part")
    m = Manifest(out)
    assert not m.complete
    removed = set(m.clean_uncommitted())
    assert removed == {"data/part-00002.parquet", "data/.tmp-part-00003.parquet-1a2b", ".tmp/shard-00003/abc.parquet"}
    assert m.committed() == {0, 1} and not (out / ".tmp").exists()


def test_cut_off_commit_record_is_not_a_commit(tmp_path):
    # a record cut off mid-write (a power cut on a filesystem that lost the rename's order): the
    # shard counts as not made, its record is removed, and the next run makes it again
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    rec = out / "_commits" / "shard-00001.json"
    rec.write_text(rec.read_text()[:20])
    m = Manifest(out)
    assert [k for k, _ in m.iter_entries()] == [0, 2] and not m.complete
    assert rec.exists()                                   # reading changes nothing
    assert "_commits/shard-00001.json" in m.clean_uncommitted()     # the next run's cleanup does
    assert not rec.exists() and not (out / "data" / "part-00001.parquet").exists()


def test_format_1_output_is_read_and_converted_on_resume(tmp_path):
    out = tmp_path / "o"
    m = _write(out, _rows(), 3)
    entries = m.shards
    legacy = {**m.data, "format_version": 1, "complete": True, "shards": entries}
    legacy.pop("totals")
    import shutil
    shutil.rmtree(out / "_commits")
    (out / "manifest.json").write_text(json.dumps(legacy))
    assert verify(out) == [] and Manifest(out).committed() == {0, 1, 2}
    m = Manifest(out)
    m.init(config_hash="h", job_name="t", n_samples=10, n_shards=3, rows_per_shard=4)
    assert sorted(p.name for p in (out / "_commits").iterdir()) == [f"shard-0000{k}.json" for k in range(3)]
    assert "shards" not in json.loads((out / "manifest.json").read_text())
    assert Manifest(out).shards == entries


def test_verify_flags_id_tampering(tmp_path):
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    (out / "job.resolved.yaml").write_text("seed: 6\n")      # ids no longer recompute
    problems = verify(out)
    assert any("does not match" in p for p in problems)


def test_html_report_shows_pairs_and_reasons(tmp_path):
    from pipeline.report_html import write_html
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    page = write_html(out, tmp_path / "r.html").read_text()
    assert page.count('<img src="data:image/jpeg;base64,') == 2 * 10      # input + output of every row
    assert "filter: no_visible_change" in page and "invert 0" in page


def test_html_report_draws_the_jobs_calibrated_threshold_and_links_every_reason(tmp_path):
    import re

    from pipeline.report_html import thresholds, write_html
    from pipeline.shards import as_store
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    # a quantile rule on l1, calibrated by the job to 0.42 (what runner.calibrate records)
    (out / "job.resolved.yaml").write_text("seed: 5\nfilters:\n  rules:\n    color:\n      l1: {keep_top: 0.5}\n")
    (out / "calibration.json").write_text(json.dumps({"thresholds": {"color": {"l1": {"max": 0.42}}}}))
    thr, on = thresholds(as_store(out))
    assert on and thr["color"]["l1"] == [("max", 0.42)] and thr["color"]["clipped_frac"] == [("max", 0.35)]
    page = write_html(out, tmp_path / "r.html").read_text()
    l1 = re.search(r"<title>l1</title>.*?</svg>", page, re.S).group(0)
    assert 'class="thr"' in l1 and "max 0.42" in l1
    links = re.findall(r'<a href="#(r-[^"]+)">', page)
    assert len(links) == 1 and f'id="{links[0]}"' in page          # filter:no_visible_change → its examples


# -------------------------------------------------------------------- duplicate instructions


def _same_instruction_rows(source_of, captions_of=lambda s: "a red kite"):
    """Accepted color rows ``i = 0 .. len(source_of)-1`` of the given source rows, all with one
    instruction."""
    rows = []
    for i, src in enumerate(source_of):
        sid = sample_id(5, src, "color", i)
        r = new_flow_row(sample_index=i, id=sid, source_id=src, attempt=i, task="color", seed=sample_seed(sid),
                         caption=captions_of(src))
        img = np.full((8, 8, 3), 40, np.uint8)
        r.update(input_png=encode_png(img), output_png=encode_png(255 - img), params="{}", scores="{}", llm="{}",
                 answer=json.dumps({"instruction": "Make the photo darker.", "output_caption": "a dark kite"}))
        rows.append(r)
    return rows


def _compacted(rows):
    from pipeline.schema import record_table, to_record
    from pipeline.shards import reject_duplicate_instructions
    t = reject_duplicate_instructions(record_table(
        [to_record(r, job_name="t", config_hash="h", code_version="v") for r in rows]))
    return list(zip(t.column("status").to_pylist(), t.column("reject_reason").to_pylist()))


def test_duplicate_instruction_is_per_source_row_and_keeps_the_first_accepted():
    # one source row, three samples, one instruction: the later two are duplicates
    assert _compacted(_same_instruction_rows(["s:0"] * 3)) == \
        [("accepted", None), ("rejected", "duplicate_instruction"), ("rejected", "duplicate_instruction")]
    # the same caption text on two source rows (two images): two different pairs, both kept
    assert _compacted(_same_instruction_rows(["s:0", "s:1"])) == [("accepted", None), ("accepted", None)]
    # a rejected first sample does not make the accepted second one a duplicate
    rows = _same_instruction_rows(["s:0"] * 2)
    reject(rows[0], "filter", "clip_dir_low")
    assert _compacted(rows) == [("rejected", "clip_dir_low"), ("accepted", None)]


def test_a_source_row_never_straddles_shards(tmp_path):
    """Compaction checks duplicates shard by shard. With rows_per_shard a multiple of repeats (the
    config insists) every source row's samples share a shard; the config the validator now refuses
    (3 rows per shard, 2 repeats) split row 1 over shards 0 and 1 and its duplicate went unseen."""
    from pipeline.config import JobConfig
    from pipeline.plan import job_index, n_shards, plan_shard

    src = tmp_path / "c.txt"
    src.write_text("".join(f"a kite number {i}\n" for i in range(5)))

    def shards_of_rows(cfg):
        index, where = job_index(cfg), {}
        for k in range(n_shards(cfg, index)):
            for r in plan_shard(cfg, index, k):
                where.setdefault(r["source_id"], set()).add(k)
        return where

    base = {"tasks": {"color": 1.0}, "source": {"kind": "captions", "path": str(src), "repeats": 2}}
    for n in (2, 4, 6):
        cfg = JobConfig.model_validate({**base, "output": {"rows_per_shard": n}})
        assert all(len(ks) == 1 for ks in shards_of_rows(cfg).values()), n
    old = JobConfig.model_validate({**base, "output": {"rows_per_shard": 4}})
    old.output.rows_per_shard = 3                          # what the validator refuses in a job file
    split = {s: ks for s, ks in shards_of_rows(old).items() if len(ks) > 1}
    assert len(split) == 2                                 # rows 1 and 4 of 0..4 straddle a boundary
    # the old per-shard check on such a row: each shard holds one of its two samples, both kept
    rows = _same_instruction_rows([next(iter(split))] * 2)
    assert _compacted(rows[:1]) + _compacted(rows[1:]) == [("accepted", None), ("accepted", None)]
    assert _compacted(rows) == [("accepted", None), ("rejected", "duplicate_instruction")]
