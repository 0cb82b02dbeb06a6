"""stats, verify and the HTML report at scale, on synthetic shards (no Ray, no LLM): they read only
the columns (and, for the report, the row groups) they need, and their memory does not grow with
the number of shards."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import stats as stats_mod
from pipeline.schema import new_flow_row, reject, sample_id, sample_seed
from pipeline.shards import Manifest, ShardWriter, as_store, commit_name, parquet_bytes, sha256_bytes
from pipeline.sources import encode_png
from pipeline.stats import NumSummary, ParamSummary, compute_stats
from pipeline.verify import verify

SEED = 5
BIG_COLUMNS = ("input_image", "output_image", "mask", "masks", "provenance", "provenance.candidates")


def _rows(n, *, task_of=lambda i: "color" if i % 2 else "remove", candidates_kb=0, side=16, instruction=None):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        task = task_of(i)
        sid = sample_id(SEED, f"src:{i}", task, 0)
        r = new_flow_row(sample_index=i, id=sid, source_id=f"src:{i}", attempt=0, task=task,
                         seed=sample_seed(sid), caption=f"caption {i}")
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)     # noise: does not compress
        r.update(input_png=encode_png(img), output_png=encode_png(255 - img),
                 answer=json.dumps({"instruction": instruction or f"edit {i}", "output_caption": f"edited {i}"}),
                 params=json.dumps({"ops": [{"op": "invert", "k": i % 97, "mode": f"m{i % 5}"}]}),
                 scores=json.dumps({"l1": float(rng.random())}),
                 llm=json.dumps({"backend": "vllm-openai", "model": "m"}),
                 candidates_report=json.dumps(["x" * 1024] * candidates_kb) if candidates_kb else None)
        if i % 4 == 3:
            reject(r, "filter", "no_visible_change", "l1: too small")
        rows.append(r)
    return rows


def _make(out, n_shards, rows_per_shard, *, write_rejects=True, **kw):
    """An output folder of ``n_shards`` full shards, written the way a job writes them."""
    n = n_shards * rows_per_shard
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.resolved.yaml").write_text(f"seed: {SEED}\n")
    m = Manifest(out)
    m.init(config_hash="h", job_name="t", n_samples=n, n_shards=n_shards, rows_per_shard=rows_per_shard)
    w = ShardWriter(out, m, {k: rows_per_shard for k in range(n_shards)}, rows_per_shard, job_name="t",
                    config_hash="h", code_version="v", write_rejects=write_rejects)
    rows = _rows(n, **kw)
    for i in range(0, n, 64):
        w.add(rows[i:i + 64])
    assert Manifest(out).complete
    return out


def _rewrite(out, k, sub, table):
    """Replace shard k's file with ``table`` and make its commit record agree (sha256, rows, counts),
    so only what is semantically wrong with the rows is left for verify to find."""
    store = as_store(out)
    e = Manifest(store).entry(k)
    data = parquet_bytes(table)
    store.write_bytes(e["files"][sub]["path"], data)
    e["files"][sub].update(rows=table.num_rows, sha256=sha256_bytes(data), bytes=len(data))
    counts = {}
    for t in table.column("task").to_pylist():
        counts[t] = counts.get(t, 0) + 1
    e["tasks_accepted" if sub == "data" else "tasks_rejected"] = dict(sorted(counts.items()))
    store.write_json(commit_name(k), e)


def _peak(fn, *args):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class _SpyFile(pq.ParquetFile):
    """Records the columns (and row groups) every read asks for."""
    calls: list = []

    def iter_batches(self, *a, columns=None, **kw):
        self.calls.append(("iter_batches", columns))
        return super().iter_batches(*a, columns=columns, **kw)

    def read(self, columns=None, **kw):
        self.calls.append(("read", columns))
        return super().read(columns=columns, **kw)

    def read_row_group(self, i, columns=None, **kw):
        self.calls.append(("read_row_group", i, columns))
        return super().read_row_group(i, columns=columns, **kw)

    def read_row_groups(self, *a, **kw):
        raise AssertionError("not expected")


def _spy(monkeypatch, *, no_read_table=True) -> list:
    """From now on, record every Parquet read; a whole-table read fails the test."""
    _SpyFile.calls = []
    monkeypatch.setattr(pq, "ParquetFile", _SpyFile)
    if no_read_table:
        monkeypatch.setattr(pq, "read_table", lambda *a, **kw: pytest.fail("whole-table read"))
    return _SpyFile.calls

# ---------------------------------------------------------------------------------------- stats

def test_stats_and_verify_read_no_images_nor_big_provenance(tmp_path, monkeypatch):
    out = _make(tmp_path / "o", 3, 16, candidates_kb=4)
    spy = _spy(monkeypatch)
    s = compute_stats(out)
    assert s["samples"] == 48 and s["shards_committed"] == 3 and s["complete"]
    assert s["tasks"]["color"]["reject_reasons"] == {"filter:no_visible_change": 12}
    assert verify(out) == []
    assert spy and all(c[0] == "iter_batches" for c in spy)
    for _, cols in spy:
        assert cols is not None and not set(cols) & set(BIG_COLUMNS), cols


def test_memory_does_not_grow_with_shards(tmp_path, monkeypatch):
    # small caps, so the bounded summaries are full in both outputs: what is left to grow would be
    # state kept across shards. Each row carries 128 KiB of candidates JSON that must not be read
    # (3 MiB in each data file; the 4× output holds 64 MiB of it).
    monkeypatch.setattr(stats_mod, "RESERVOIR", 64)
    monkeypatch.setattr(stats_mod, "MAX_DISTINCT", 8)
    small = _make(tmp_path / "small", 4, 32, candidates_kb=128, side=32)
    large = _make(tmp_path / "large", 16, 32, candidates_kb=128, side=32)
    compute_stats(small), verify(small)                        # warm caches and imports
    peaks = {(f.__name__, o.name): _peak(f, o) for f in (compute_stats, verify) for o in (small, large)}
    print("peak traced memory (bytes):", peaks)
    # far below one file's candidates; verify's floor is sha256's 1 MiB read buffer
    for f, limit in (("compute_stats", 1 << 20), ("verify", 2 << 20)):
        assert peaks[(f, "large")] < 1.5 * peaks[(f, "small")], peaks
        assert peaks[(f, "large")] < limit, peaks
        # and finer than the ratio: under 32 bytes per extra row (a set of all ids costs > 80)
        assert peaks[(f, "large")] - peaks[(f, "small")] < 32 * (12 * 32), peaks


def test_reservoir_quantiles_exact_when_small_close_when_large():
    rng = np.random.default_rng(1)
    xs = rng.normal(size=500)
    s = NumSummary()
    for x in xs:
        s.add(x)
    q = np.quantile(xs, [0.1, 0.5, 0.9])
    assert s.summary() == {"n": 500, "mean": round(float(xs.mean()), 4), "min": round(float(xs.min()), 4),
                           "p10": round(float(q[0]), 4), "p50": round(float(q[1]), 4), "p90": round(float(q[2]), 4),
                           "max": round(float(xs.max()), 4)}
    xs = rng.uniform(size=200_000)
    a, b = NumSummary(), NumSummary()
    for x in xs:
        a.add(x)
        b.add(x)
    sa = a.summary()
    assert sa == b.summary()                                   # seeded: the same numbers every time
    assert len(a.sample) == stats_mod.RESERVOIR and sa["n"] == 200_000
    assert sa["min"] == round(float(xs.min()), 4) and sa["max"] == round(float(xs.max()), 4)
    assert abs(sa["mean"] - xs.mean()) < 1e-4
    for key, p in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
        assert abs(sa[key] - p) < 0.02


def test_categorical_values_are_capped(monkeypatch):
    monkeypatch.setattr(stats_mod, "MAX_DISTINCT", 3)
    p = ParamSummary()
    for v in ["a", "b", "a", "c", "d", "e", "a", 1.5]:
        p.add(v)
    assert p.summary() == {"a": 3, "(other)": 3, "b": 1, "c": 1}


# ---------------------------------------------------------------------------------------- verify

def test_verify_passes_clean_outputs_also_by_uri_and_without_rejects(tmp_path):
    out = _make(tmp_path / "o", 3, 8)
    assert verify(out) == [] and verify(f"file://{out}") == []
    assert compute_stats(f"file://{out}")["samples"] == 24
    assert verify(_make(tmp_path / "norej", 3, 8, write_rejects=False)) == []


def test_verify_catches_a_flipped_byte(tmp_path):
    out = _make(tmp_path / "o", 3, 8)
    f = out / "data" / "part-00001.parquet"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    assert any("part-00001.parquet: sha256 mismatch" in p for p in verify(out))


def test_verify_catches_a_sample_index_outside_its_shard(tmp_path):
    out = _make(tmp_path / "o", 3, 8)
    t = pq.read_table(out / "data" / "part-00001.parquet")
    idx = t.column("sample_index").to_pylist()
    idx[0] = 2                                                 # shard 0's range; shard 1 is [8, 16)
    t = t.set_column(t.schema.get_field_index("sample_index"), "sample_index", pa.array(idx, pa.int64()))
    _rewrite(out, 1, "data", t)
    problems = verify(out)
    assert len(problems) == 1 and "shard 1: 1 row(s) with a sample index outside [8, 16)" in problems[0]


def test_verify_catches_a_duplicated_row(tmp_path):
    out = _make(tmp_path / "o", 3, 8)
    t = pq.read_table(out / "data" / "part-00002.parquet")
    _rewrite(out, 2, "data", pa.concat_tables([t, t.slice(0, 1)]))
    problems = verify(out)
    assert len(problems) == 1 and "shard 2: 1 sample index(es) appear more than once" in problems[0]


def test_verify_catches_a_row_duplicated_across_data_and_rejects(tmp_path):
    out = _make(tmp_path / "o", 3, 8)
    acc = pq.read_table(out / "data" / "part-00000.parquet")
    rej = pq.read_table(out / "rejects" / "part-00000.parquet")
    status = pa.array(["rejected"], pa.string())
    copy = acc.slice(0, 1).set_column(acc.schema.get_field_index("status"), "status", status)
    _rewrite(out, 0, "rejects", pa.concat_tables([rej, copy]))
    assert any("more than once" in p for p in verify(out))


def test_verify_lists_stray_files(tmp_path):
    out = _make(tmp_path / "o", 3, 8)
    (out / "data" / "part-00099.parquet").write_bytes(b"junk")
    (out / "rejects" / ".tmp-part-00001.parquet-1a2b").write_bytes(b"half")
    problems = verify(out)
    assert problems == ["data/part-00099.parquet: not in the manifest (stray or temporary file)",
                        "rejects/.tmp-part-00001.parquet-1a2b: not in the manifest (stray or temporary file)"]


def test_verify_flags_an_incomplete_job(tmp_path):
    out = _make(tmp_path / "o", 3, 8)
    (out / "_commits" / "shard-00002.json").unlink()
    problems = verify(out)
    assert problems[0] == "job incomplete: 2/3 shards committed"
    assert "data/part-00002.parquet: not in the manifest (stray or temporary file)" in problems
    assert not compute_stats(out)["complete"] and compute_stats(out)["shards_committed"] == 2


# ---------------------------------------------------------------------------------------- report

def test_report_reads_only_the_row_groups_it_shows(tmp_path, monkeypatch):
    from pipeline import report_html

    # 600 rows a shard → row groups of 256, 256, 88. Task "add" is only at samples 400 and 401 of
    # shard 0 (data rows 300, 301: row group 1), so the report needs row groups 0 and 1 of shard 0 and nothing else.
    out = _make(tmp_path / "o", 3, 600, task_of=lambda i: "add" if i in (400, 401) else "color")
    stats = compute_stats(out)
    monkeypatch.setattr(report_html, "compute_stats", lambda *_, **__: stats)   # only the report's reads below
    calls = _spy(monkeypatch)
    page = report_html.write_html(out, tmp_path / "r.html", per_task=2, per_reason=2).read_text()
    reads = [c for c in calls if c[0] == "read"]
    groups = [c[1] for c in calls if c[0] == "read_row_group"]
    assert reads == [("read", report_html.SMALL)] * 2             # shard 0's data and rejects files only
    assert sorted(groups) == [0, 0, 1]                            # data: groups 0 and 1; rejects: group 0
    assert page.count('<img src="data:image/jpeg;base64,') == 2 * (2 + 2 + 2)   # color ±, add accepted
    assert "filter: no_visible_change" in page and "edit 401" in page


def test_report_escapes_what_it_shows(tmp_path):
    from pipeline.report_html import write_html

    out = _make(tmp_path / "o<b>", 1, 8, instruction="<script>alert(1)</script>")
    page = write_html(out, tmp_path / "r.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "o<b>" not in page and "o&lt;b&gt;" in page
    stats = json.loads(page.split("id='stats'>", 1)[1].rsplit("</script>", 1)[0])
    assert stats["samples"] == 8 and stats["output"].endswith("o<b>")
