"""A worker plans its own shard from the source index alone, and gets exactly the samples the whole
plan has at those indices: checkpoints are seeked, not read from the start, and the rows (ids,
tasks, captions, rejects) do not depend on where a shard starts."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.source_index as si
from pipeline.config import JobConfig
from pipeline.plan import build_plan, job_index, n_shards, plan_shard


def _sources(tmp_path):
    txt = tmp_path / "c.txt"
    # CRLF endings, an empty line (a row: counted as an empty caption later), no final newline
    txt.write_bytes(b"".join(f"a kite number {i}\r\n".encode() for i in range(20)) + b"\r\nlast kite")
    jl = tmp_path / "c.jsonl"
    lines = []
    for i in range(23):
        lines.append(json.dumps({"caption": f"a boat {i}", **({"task": "color"} if i % 5 == 0 else {})}))
        if i % 7 == 0:
            lines.append("")                                   # blank lines are skipped, not rows
    lines.append("{broken")
    jl.write_text("\n".join(lines) + "\n")
    pqf = tmp_path / "c.parquet"
    pq.write_table(pa.table({"caption": [f"a tree {i}" for i in range(30)],
                             "task": [("global" if i % 4 == 0 else None) for i in range(30)]}), pqf, row_group_size=7)
    return {"captions_txt": txt, "captions_jsonl": jl, "parquet": pqf}


@pytest.mark.parametrize("assignment", ["independent", "balanced"])
@pytest.mark.parametrize("which", ["captions_txt", "captions_jsonl", "parquet"])
def test_shards_planned_alone_equal_the_whole_plan(tmp_path, monkeypatch, which, assignment):
    src = _sources(tmp_path)[which]
    cfg = JobConfig.model_validate({"source": {"kind": which.split("_")[0], "path": str(src), "repeats": 2},
                                    "seed": 3, "task_assignment": assignment,
                                    "tasks": {"color": 1, "local": 1, "global": 2},
                                    "output": {"rows_per_shard": 4}})
    whole = build_plan(cfg)
    monkeypatch.setattr(si, "STRIDE", 3)                      # many checkpoints: shards start mid-stride
    index = job_index(cfg)
    assert len(index.checkpoints) > 3 or which == "parquet"
    parts = [r for k in range(n_shards(cfg, index)) for r in plan_shard(cfg, index, k)]
    assert parts == whole
    assert [r["sample_index"] for r in parts] == list(range(len(whole)))
    if which == "captions_txt":
        assert whole[-2]["caption"] == "last kite" and whole[0]["caption"] == "a kite number 0"
        assert len(whole) == 22 * 2
    if which == "captions_jsonl":
        assert len(whole) == 24 * 2 and whole[-1]["reject_reason"] == "bad_source_row"
        assert all(r["task"] == "color" for r in whole if r["caption"] in ("a boat 0", "a boat 5"))


def test_index_is_small_and_travels(tmp_path, monkeypatch):
    import pickle
    p = tmp_path / "big.txt"
    p.write_text("".join(f"caption {i}\n" for i in range(50_000)))
    cfg = JobConfig.model_validate({"source": {"kind": "captions", "path": str(p)}})
    index = job_index(cfg)
    assert index.n_rows == 50_000 and len(index.checkpoints) == -(-50_000 // si.STRIDE)
    assert len(pickle.dumps(index)) < 8_000                   # the shards read the file, not the index
    rows = list(index.rows(41_000, 41_003))
    assert [r.caption for r in rows] == ["caption 41000", "caption 41001", "caption 41002"]


def test_limit_applies_to_every_kind(tmp_path):
    for which, src in _sources(tmp_path).items():
        cfg = JobConfig.model_validate({"source": {"kind": which.split("_")[0], "path": str(src), "limit": 4}})
        assert job_index(cfg).n_rows == 4 and len(build_plan(cfg)) == 4
