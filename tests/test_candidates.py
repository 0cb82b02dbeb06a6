"""output.keep_candidates: all — the candidates/ shard set (written, committed, cleaned and verified
like data/ and rejects/) and `pairforge export-preference` on it. Synthetic rows through the real
shard writer; no LLM, no Ray (the slow diffusion job test runs the same path in a real job)."""
from __future__ import annotations

import io
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.schema import new_flow_row, reject, sample_id, sample_seed
from pipeline.shards import Manifest, ShardWriter
from pipeline.sources import encode_png
from pipeline.verify import verify

N_CAND = 3


def _rows(n=10):
    """local-task rows with three candidates each: the kept one (the best passing by clip_dir) is
    candidate 0 of even rows and 2 of odd ones; candidate 1 of every row failed the filters; rows 3
    and 7 were rejected (no candidate passed)."""
    rows = []
    for i in range(n):
        sid = sample_id(5, f"src:{i}", "local", 0)
        r = new_flow_row(sample_index=i, id=sid, source_id=f"src:{i}", attempt=0, task="local",
                         seed=sample_seed(sid), caption=f"a cat {i}")
        base = np.full((16, 16, 3), i * 10, np.uint8)
        cands, report = [], []
        for c in range(N_CAND):
            out = base.copy()
            out[4:12, 4:12] = (40 * c + 30, 200 - i, 7 * c)
            cands.append({"input_png": encode_png(base), "output_png": encode_png(out),
                          "mask_png": encode_png(np.where(np.arange(16)[:, None] > 8, 255, 0).astype(np.uint8).repeat(16, 1)),
                          "mask_variant": ["precise", "dilated_blurred", "bbox"][c], "params": json.dumps({"c": c})})
            keep = c != 1 and i not in (3, 7)
            report.append({"mask_variant": cands[-1]["mask_variant"], "params": {"c": c}, "keep": keep,
                           "reason": None if keep else "clip_dir_low",
                           "scores": {"clip_dir": round(0.1 * c + 0.01 * i + (0.5 if c == 2 * (i % 2) else 0), 6),
                                      "l1": 0.2}})
        sel = 2 * (i % 2)
        k = cands[sel]
        r.update(input_png=k["input_png"], output_png=k["output_png"], mask_png=k["mask_png"],
                 mask_variant=k["mask_variant"], params=k["params"], candidates=cands,
                 candidates_report=json.dumps({"selected": sel, "select_by": "clip_dir", "candidates": report}),
                 scores=json.dumps(report[sel]["scores"]),
                 answer=json.dumps({"instruction": f"turn the cat {i} into a dog", "output_caption": f"a dog {i}"}),
                 llm=json.dumps({"backend": "vllm-openai", "model": "m"}))
        if i in (3, 7):
            reject(r, "filter", "clip_dir_low", "clip: clip_dir 0.1 < 0.2 (best of 3 candidates)")
        rows.append(r)
    return rows


def _write(out, rows, order_seed, keep=True):
    from pipeline.shards import as_store
    out = as_store(out)
    out.write_text("job.resolved.yaml", "seed: 5\n")
    m = Manifest(out)
    m.init(config_hash="h", job_name="t", n_samples=len(rows), n_shards=3, rows_per_shard=4)
    w = ShardWriter(out, m, {0: 4, 1: 4, 2: 2}, 4, job_name="t", config_hash="h", code_version="v",
                    write_rejects=True, keep_candidates=keep)
    shuffled = rows[:]
    random.Random(order_seed).shuffle(shuffled)
    for i in range(0, len(shuffled), 3):
        w.add(shuffled[i:i + 3])
    return m


def test_candidates_are_a_committed_shard_set_with_identical_bytes_on_rewrite(tmp_path):
    m = _write(tmp_path / "a", _rows(), 1)
    _write(tmp_path / "b", _rows(), 2)
    names = sorted(p.name for p in (tmp_path / "a" / "candidates").iterdir())
    assert names == [f"part-0000{k}.parquet" for k in range(3)]
    for p in (tmp_path / "a" / "candidates").iterdir():       # arrival order does not change a byte
        assert p.read_bytes() == (tmp_path / "b" / "candidates" / p.name).read_bytes()
    e = m.entry(0)
    assert e["files"]["candidates"]["rows"] == 4 * (N_CAND - 1)
    t = pq.read_table(tmp_path / "a" / "candidates" / "part-00000.parquet").to_pylist()
    assert [(r["sample_index"], r["candidate"]) for r in t] == [(0, 1), (0, 2), (1, 0), (1, 1), (2, 1), (2, 2),
                                                                (3, 0), (3, 1)]
    assert all(r["candidate"] != r["selected"] for r in t)
    assert all(r["input_image"] is None for r in t)        # the kept input, stored once in data/
    r = next(r for r in t if r["sample_index"] == 2 and r["candidate"] == 1)
    assert r["passed"] is False and r["reason"] == "clip_dir_low" and r["scores"]["clip_dir"] == pytest.approx(0.12)
    assert verify(tmp_path / "a") == []


def test_best_writes_no_candidates(tmp_path):
    m = _write(tmp_path / "o", _rows(), 1, keep=False)
    assert not (tmp_path / "o" / "candidates").exists()
    assert all("candidates" not in e["files"] for _, e in m.iter_entries())
    assert verify(tmp_path / "o") == []


def test_uncommitted_candidates_are_cleaned_and_made_again_byte_for_byte(tmp_path):
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    before = (out / "candidates" / "part-00001.parquet").read_bytes()
    (out / "_commits" / "shard-00001.json").unlink()                   # killed between compaction and commit
    (out / ".tmp" / "shard-00004").mkdir(parents=True)
    (out / ".tmp" / "shard-00004" / "x.candidates.parquet").write_bytes(b"part")
    m = Manifest(out)
    removed = set(m.clean_uncommitted())
    assert {"candidates/part-00001.parquet", "data/part-00001.parquet"} <= removed
    assert not (out / "candidates" / "part-00001.parquet").exists()
    # the rerun makes shard 1 again: same bytes
    rows = [r for r in _rows() if 4 <= r["sample_index"] < 8]
    w = ShardWriter(out, m, {1: 4}, 4, job_name="t", config_hash="h", code_version="v", write_rejects=True,
                    keep_candidates=True)
    w.add(rows[::-1])
    assert (out / "candidates" / "part-00001.parquet").read_bytes() == before
    assert verify(out) == []


def test_a_record_naming_a_missing_or_resized_candidates_file_is_not_a_commit(tmp_path):
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    p = out / "candidates" / "part-00002.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    m = Manifest(out)
    assert "_commits/shard-00002.json" in m.clean_uncommitted()
    assert m.committed() == {0, 1}


def test_verify_checks_candidates(tmp_path):
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    p = out / "candidates" / "part-00000.parquet"
    b = bytearray(p.read_bytes())
    b[100] ^= 0xFF
    p.write_bytes(bytes(b))
    (out / "candidates" / "part-00009.parquet").write_bytes(b"stray")
    problems = verify(out)
    assert any("candidates/part-00000.parquet: sha256 mismatch" in x for x in problems), problems
    assert any("candidates/part-00009.parquet: not in the manifest" in x for x in problems), problems


def test_verify_flags_a_candidate_of_another_shard(tmp_path):
    import pyarrow as pa
    from pipeline.shards import parquet_bytes, sha256_bytes
    out = tmp_path / "o"
    m = _write(out, _rows(), 3)
    p = out / "candidates" / "part-00000.parquet"
    t = pq.read_table(p)
    t = t.set_column(t.schema.get_field_index("sample_index"), t.schema.field("sample_index"),
                     pa.array([9] + t.column("sample_index").to_pylist()[1:], pa.int64()))
    data = parquet_bytes(t, 32)
    p.write_bytes(data)
    e = m.entry(0)
    e["files"]["candidates"].update(sha256=sha256_bytes(data), bytes=len(data))
    m.commit(0, e)
    assert any("sample 9 is not a sample of shard 0" in x for x in verify(out))


# ------------------------------------------------------------------------------ export-preference

def test_export_preference_opens_in_datasets_and_every_image_decodes(tmp_path):
    import datasets

    from pipeline.preference import export_preference
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    c = export_preference(out, str(tmp_path / "pref" / "p.parquet"), row_group=4)
    # 8 accepted samples × 2 other candidates, each ranked below the kept one
    assert c["accepted_samples"] == 8 and c["pairs"] == 16 and c["source:filter:clip_dir"] == 16
    assert pq.ParquetFile(tmp_path / "pref" / "p.parquet").metadata.num_row_groups == 4
    ds = datasets.Dataset.from_parquet(str(tmp_path / "pref" / "p.parquet"))
    assert len(ds) == 16 and {"input_image", "chosen_image", "rejected_image", "margin"} <= set(ds.column_names)
    for r in ds:
        for k in ("input_image", "chosen_image", "rejected_image"):
            r[k].load()
            assert r[k].size == (16, 16)
        assert r["chosen_kept"] and r["chosen_candidate"] != r["rejected_candidate"]
        assert r["margin"] > 0 or (r["chosen_passed"] and not r["rejected_passed"])
        assert np.asarray(r["chosen_image"]).tolist() != np.asarray(r["rejected_image"]).tolist()
    # the chosen image is the one data/ holds for the sample
    data = {r["id"]: r for r in pq.read_table(out / "data").to_pylist()}
    from PIL import Image
    for r in (ds[0], ds[5]):
        kept = Image.open(io.BytesIO(data[r["id"]]["output_image"]["bytes"])).convert("RGB")
        assert np.array_equal(np.asarray(r["chosen_image"].convert("RGB")), np.asarray(kept))


def test_export_worst_and_margin_and_a_judge_score_decides(tmp_path):
    from pipeline.preference import export_preference, iter_preference_rows
    out = tmp_path / "o"
    rows = _rows()
    # a judge that prefers the highest candidate number, whatever the filter said
    for r in rows:
        rep = json.loads(r["candidates_report"])
        for i, c in enumerate(rep["candidates"]):
            c["scores"]["judge"] = float(i)
        r["candidates_report"] = json.dumps(rep)
    _write(out, rows, 3)
    got = list(iter_preference_rows(out, pairs="worst"))
    assert len(got) == 8 and all(g["score_source"] == "judge" for g in got)
    assert all(g["chosen_candidate"] == 2 and g["rejected_candidate"] == 0 and g["margin"] == 2.0 for g in got)
    # forcing the filter's score back
    got = list(iter_preference_rows(out, score="clip_dir", pairs="worst"))
    assert all(g["score_source"] == "filter:clip_dir" and g["chosen_kept"] for g in got)
    # min-margin drops the judge pairs 1 apart (2 vs 1, 1 vs 0): only 2 vs 0 remains
    assert len(list(iter_preference_rows(out, min_margin=1.5))) == 8
    with pytest.raises(ValueError, match="--score"):
        export_preference(out, str(tmp_path / "x.parquet"), score="nope")


def test_export_on_an_output_without_candidates_writes_nothing_and_says_why(tmp_path):
    from tests.jobutil import run_cli
    out = tmp_path / "o"
    _write(out, _rows(), 3, keep=False)
    p = run_cli("export-preference", str(out), str(tmp_path / "p.parquet"), check=False)
    assert p.returncode == 1 and "keep_candidates: all" in p.stderr
    assert json.loads(p.stdout)["samples_without_stored_candidates"] == 8
    assert not (tmp_path / "p.parquet").exists() and list(tmp_path.iterdir()) == [out]
