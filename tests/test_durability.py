"""Durability of shard commits: the commit record is written temp → fsync → rename → fsync of its
folder (one PUT on an object store), and a record cut off by a power cut (truncated, empty, whole
JSON but missing fields, or naming files that are not what it says) is detected: the shard counts
as not committed, the next run deletes the record and the shard's files and makes it again."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.shards import Manifest, ShardWriter, commit_name
from pipeline.verify import verify
from tests.test_shards import _rows, _write

REC = "_commits/shard-00001.json"


def _snapshot(out: Path) -> dict[str, bytes]:
    return {f"{sub}/{p.name}": p.read_bytes() for sub in ("data", "rejects", "_commits")
            for p in sorted((out / sub).glob("*")) if not p.name.startswith(".tmp-")}


def _cut_half(out: Path) -> None:
    p = out / REC
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _empty(out: Path) -> None:
    (out / REC).write_bytes(b"")


def _edit(fn):
    def cut(out: Path) -> None:
        p = out / REC
        e = json.loads(p.read_text())
        fn(e)
        p.write_text(json.dumps(e))
    return cut


def _data_file(fn):
    def cut(out: Path) -> None:
        p = out / "data" / "part-00001.parquet"
        p.write_bytes(fn(p.read_bytes()))
    return cut


def _stale_data(b: bytes) -> bytes:          # same size, other bytes (an older file's blocks)
    x = bytearray(b)
    x[len(x) // 2] ^= 0xFF
    return bytes(x)


# every way a power cut (or a filesystem that reorders) can leave shard 1's record or files
CUTS = {
    "truncated_json": _cut_half,
    "zero_length": _empty,
    "not_an_object": lambda out: (out / REC).write_text("[]"),
    "missing_files": _edit(lambda e: e.pop("files")),
    "missing_tasks_accepted": _edit(lambda e: e.pop("tasks_accepted")),
    "missing_sha256": _edit(lambda e: e["files"]["data"].pop("sha256")),
    "rows_not_a_count": _edit(lambda e: e["files"]["data"].update(rows="4")),
    "files_not_a_map": _edit(lambda e: e.update(files=["data/part-00001.parquet"])),
    "wrong_data_sha256": _edit(lambda e: e["files"]["data"].update(sha256="0" * 64)),
    "wrong_rejects_sha256": _edit(lambda e: e["files"]["rejects"].update(sha256="f" * 64)),
    "data_file_stale": _data_file(_stale_data),
    "data_file_truncated": _data_file(lambda b: b[: len(b) // 2]),
    "data_file_zero_length": _data_file(lambda b: b""),
    "data_file_missing": lambda out: (out / "data" / "part-00001.parquet").unlink(),
}
# cuts in the record itself: no reader counts the shard, before any file is opened
RECORD_CUTS = {"truncated_json", "zero_length", "not_an_object", "missing_files", "missing_tasks_accepted",
               "missing_sha256", "rows_not_a_count", "files_not_a_map"}


def _remake_shard_1(out: Path) -> None:
    """What the next run does after its cleanup: shard 1 made again from its rows."""
    m = Manifest(out)
    w = ShardWriter(out, m, {1: 4}, 4, job_name="t", config_hash="h", code_version="v", write_rejects=True)
    w.add([r for r in _rows() if r["sample_index"] // 4 == 1])
    assert w.committed_now == [1]


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_cut_commit_is_detected_and_remade(tmp_path, cut):
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    before = _snapshot(out)
    assert verify(out) == []
    CUTS[cut](out)

    m = Manifest(out)
    if cut in RECORD_CUTS:                       # readers leave the shard out (and change nothing)
        assert m.committed() == {0, 2} and not m.complete
        assert [k for k, _ in m.iter_entries()] == [0, 2] and m.entry(1) is None
        assert (out / REC).exists()
    problems = verify(out)                       # `pairforge verify` fails, naming the shard's files
    assert problems and any("00001" in p for p in problems), problems

    if cut in ("data_file_stale", "wrong_data_sha256", "wrong_rejects_sha256"):
        # the sizes agree, only the hashes do not: a resume does not read the output (the file was fsynced before its
        # record was written, so a power cut cannot cause this; a failing disk can): verify finds it
        # above, and a cleanup asked to hash the files (check_hashes) repairs it
        assert m.clean_uncommitted() == []
        removed = set(m.clean_uncommitted(check_hashes=True))
    else:
        removed = set(m.clean_uncommitted())     # the next run's cleanup
    assert REC in removed
    assert not (out / REC).exists()
    for sub in ("data", "rejects"):              # the shard's stale files are gone, the others kept
        assert not (out / sub / "part-00001.parquet").exists()
    for rel, b in before.items():
        if "00001" not in rel:
            assert (out / rel).read_bytes() == b, rel
    assert Manifest(out).committed() == {0, 2}
    assert any("not committed" in p or "incomplete" in p for p in verify(out))

    _remake_shard_1(out)                          # the rerun makes it again, byte for byte
    assert _snapshot(out) == before
    assert verify(out) == []
    assert Manifest(out).complete and Manifest(out).committed() == {0, 1, 2}


def test_whole_outputs_lose_nothing_to_the_checks(tmp_path):
    """The checks do not throw away good shards: a whole output's cleanup removes nothing, and a
    shard without accepted rows (no data file) or without written rejects is still whole."""
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    assert Manifest(out).clean_uncommitted() == []
    rows = _rows()
    for r in rows:
        r.update(status="rejected", reject_stage="filter", reject_reason="no_visible_change")
    out2 = tmp_path / "all_rejected"
    m = _write(out2, rows, 1)
    assert "data" not in m.entry(0)["files"] and m.clean_uncommitted() == [] and verify(out2) == []


def test_cleanup_also_removes_cut_off_temp_files_of_the_header(tmp_path):
    out = tmp_path / "o"
    _write(out, _rows(), 3)
    (out / ".tmp-manifest.json-1a2b3c4d").write_bytes(b'{"conf')
    (out / "_commits" / ".tmp-shard-00001.json-1a2b3c4d").write_bytes(b'{"sam')
    assert set(Manifest(out).clean_uncommitted()) == {".tmp-manifest.json-1a2b3c4d",
                                                       "_commits/.tmp-shard-00001.json-1a2b3c4d"}
    assert Manifest(out).committed() == {0, 1, 2}


def test_commit_record_is_fsynced_then_renamed_then_its_folder_fsynced(tmp_path, monkeypatch):
    """On a local path: the record's temp file is fsynced before the rename, and after it the folder
    that holds the record (and, the first time, the output folder that gained _commits/)."""
    import pipeline.storage as storage

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("rename", str(a), str(b)))
        return real_replace(a, b)

    out = tmp_path / "o"
    m = Manifest(out)
    m.init(config_hash="h", job_name="t", n_samples=4, n_shards=1, rows_per_shard=4)
    monkeypatch.setattr(storage.os, "fsync", fsync)
    monkeypatch.setattr(storage.os, "replace", replace)
    m.commit(0, {"samples": 0})
    rec, d = str(out / "_commits" / "shard-00000.json"), str(out / "_commits")
    i_rename = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == rec)
    tmp = events[i_rename][1]
    assert os.path.dirname(tmp) == d and os.path.basename(tmp).startswith(".tmp-")
    assert ("fsync", tmp) in events[:i_rename], events          # data on disk before the name points at it
    after = events[i_rename + 1:]
    assert ("fsync", d) in after, events                         # the rename itself on disk
    assert ("fsync", str(out)) in after, events                  # _commits/ was new: its entry too
    assert json.loads(Path(rec).read_text()) == {"samples": 0}
    assert [p.name for p in (out / "_commits").iterdir()] == ["shard-00000.json"]

    events.clear()                                               # a second record: its folder again
    m.commit(1, {"samples": 1})
    i = next(i for i, e in enumerate(events) if e[0] == "rename")
    assert ("fsync", d) in events[i + 1:] and ("fsync", str(out)) not in events


def test_commit_record_on_an_object_store_is_one_put(monkeypatch):
    """Not local: one output stream to the final key (all-or-nothing), no temp object, no rename."""
    fsspec = pytest.importorskip("fsspec")
    import pyarrow.fs as pafs

    from pipeline.storage import Store

    calls = []

    class Counting(pafs.FSSpecHandler):
        def open_output_stream(self, path, metadata):
            calls.append(("put", path))
            return super().open_output_stream(path, metadata)

        def move(self, src, dest):
            calls.append(("move", src, dest))
            return super().move(src, dest)

    mem = fsspec.filesystem("memory")
    fs = pafs.PyFileSystem(Counting(mem))
    st = Store("mem://bucket/out", _fs=fs, _root="/bucket/out")
    assert not st.local
    Manifest(st).commit(3, {"samples": 3})
    assert calls == [("put", "/bucket/out/_commits/shard-00003.json")]
    assert st.read_json(commit_name(3)) == {"samples": 3} and st.list("_commits") == ["shard-00003.json"]


# -------------------------------------------------------------------- a real job, one record cut

@pytest.mark.slow
def test_job_rerun_remakes_exactly_the_cut_shard(vllm_url, tmp_path):
    from tests.jobutil import run_cli, write_job
    from tests.test_resume import committed, row_diff

    job = write_job(tmp_path / "job.yaml", vllm_url, source__limit=6, output__rows_per_shard=2)
    out = tmp_path / "out"
    args = ("run", str(job), "--out", str(out), "--no-progress", "-q")
    first = json.loads(run_cli(*args).stdout.strip().splitlines()[-1])
    recs = committed(out)
    n = first["shards"]
    assert n >= 3 and len(recs) == n and run_cli("verify", str(out)).returncode == 0
    undisturbed = _job_rows(out)
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
             for sub in ("data", "rejects") for p in (out / sub).glob("part-*.parquet")}

    cut = recs[1]                                      # shard 1's record, half its bytes
    k = int(cut.name[6:-5])
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    p = run_cli("verify", str(out), check=False)
    assert p.returncode != 0 and commit_name(k) in p.stdout

    second = json.loads(run_cli(*args).stdout.strip().splitlines()[-1])
    assert second["shards_skipped"] == n - 1 and second["shards_written"] == 1     # exactly that shard
    # the remade record names the same files and counts; their sha256 and size differ only by the
    # rows' stage times, which are measured again (pipeline/cost.py), never the same twice
    assert _sans_hashes(json.loads(cut.read_text())) == _sans_hashes(json.loads(whole))
    for f, (ino, mtime, data) in files.items():
        if f.name == f"part-{k:05d}.parquet":          # remade: a new file with the same rows
            assert _untimed(pq.read_table(f)) == _untimed(pq.read_table(pa.BufferReader(data)))
        else:                                          # the other shards were not touched
            assert (f.stat().st_ino, f.stat().st_mtime_ns) == (ino, mtime), f
    rows = _job_rows(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == first["samples"]
    assert rows == undisturbed, row_diff(rows, undisturbed)
    assert run_cli("verify", str(out)).returncode == 0


def _untimed(t) -> list[dict]:
    rows = t.to_pylist()
    for r in rows:
        r["stage_times"] = [e["stage"] for e in r.get("stage_times") or []]
    return rows


def _sans_hashes(rec: dict) -> dict:
    rec = json.loads(json.dumps(rec))
    for f in rec.get("files", {}).values():
        f.pop("sha256", None)
        f.pop("bytes", None)
    return rec


def _job_rows(out: Path) -> list[dict]:
    t = pa.concat_tables([pq.read_table(p) for sub in ("data", "rejects")
                          for p in sorted((out / sub).glob("part-*.parquet"))])
    return sorted(_untimed(t), key=lambda r: r["sample_index"])
