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
