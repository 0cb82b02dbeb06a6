"""Outputs and sources on S3: a real moto server on 127.0.0.1 stands in for the object store.

The fast tests (no Ray, no LLM) put ``Store``, the shard writer, ``verify`` and ``stats`` through an
``s3://bucket/...?endpoint_override=...&scheme=http`` URI; the slow one runs a whole job whose
source and output are both on S3 and then opens the output with HF datasets, DuckDB and polars."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.jobutil import run_cli, write_job
from tests.test_shards import _rows, _write

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "pairforge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"

    def uri(self, key: str) -> str:
        """s3://BUCKET/key with the endpoint options pyarrow reads from the query."""
        return f"s3://{BUCKET}/{key.strip('/')}?endpoint_override={self.endpoint}&scheme=http"

    def fs(self, **kw):
        import pyarrow.fs as pafs
        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", access_key="testing",
                                 secret_key="testing", region="us-east-1", **kw)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A moto S3 server subprocess on 127.0.0.1 with one bucket; AWS test credentials in the env."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("moto[server] missing in CI: pip install -e '.[test]'")
        pytest.skip("moto[server] not installed (pip install -e '.[test]')")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=lf, stderr=subprocess.STDOUT, env={**os.environ, **AWS_ENV})
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"moto server did not answer in 60 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in AWS_ENV.items():
                mp.setenv(k, v)
            srv = S3Server(port)
            srv.fs(allow_bucket_creation=True).create_dir(BUCKET)
            yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ fast: no Ray, no LLM

def test_store_round_trip(s3_server):
    from pipeline.storage import Store, open_source

    uri = s3_server.uri(_key("store"))
    st = Store(uri)
    assert not st.local and st.local_path() is None and st.list() == [] and not st.exists("a.txt")
    st.write_bytes("a.txt", b"hello")
    st.write_json("sub/deep/b.json", {"x": 1})
    st.write_text("sub/c.txt", "c")
    assert st.read_bytes("a.txt") == b"hello" and st.read_json("sub/deep/b.json") == {"x": 1}
    assert st.exists("a.txt") and st.exists("sub") and st.is_dir("sub") and not st.is_dir("a.txt")
    assert st.size("a.txt") == 5
    assert st.list() == ["a.txt"]
    assert st.list("sub") == ["c.txt"]
    assert st.list(recursive=True) == ["a.txt", "sub/c.txt", "sub/deep/b.json"]
    with st.open_input("a.txt") as f:
        assert f.read_at(3, 1) == b"ell"
    # url() round-trips through another Store (what travels to Ray workers), child() too
    assert Store(st.url("sub")).read_text("c.txt") == "c" and st.child("sub").read_text("c.txt") == "c"
    assert "endpoint_override=" in st.url("sub/c.txt")
    import pickle
    assert pickle.loads(pickle.dumps(st)).read_bytes("a.txt") == b"hello"
    s, name = open_source(st.url("sub/deep/b.json"))
    assert name == "b.json" and json.loads(s.read_bytes(name)) == {"x": 1}
    st.delete("a.txt")
    st.delete("a.txt")                                  # already gone: no error
    assert not st.exists("a.txt") and st.list() == []
    st.delete_dir("sub")
    assert st.list(recursive=True) == [] and not st.exists("sub/c.txt")
    st.delete_dir("nothing-here")


def test_shards_on_s3_verify_and_match_local_stats(s3_server, tmp_path):
    from pipeline.shards import Manifest, read_table
    from pipeline.stats import compute_stats
    from pipeline.storage import Store
    from pipeline.verify import verify

    uri = s3_server.uri(_key("shards"))
    st = Store(uri)
    m = _write(st, _rows(), 3)
    _write(Store(tmp_path / "local"), _rows(), 3)
    assert m.data["complete"] and Manifest(uri).complete
    assert verify(uri) == []
    assert sorted(st.list(recursive=True)) == sorted(
        ["manifest.json", "job.resolved.yaml"] + [f"_commits/shard-0000{k}.json" for k in range(3)]
        + [f"data/part-0000{k}.parquet" for k in range(3)] + ["rejects/part-00000.parquet", "rejects/part-00001.parquet"])
    # the same rows give the same bytes on S3 and locally
    for sub in ("data", "rejects"):
        for name in st.list(sub):
            assert st.read_bytes(f"{sub}/{name}") == (tmp_path / "local" / sub / name).read_bytes()
    s3s, loc = compute_stats(uri), compute_stats(tmp_path / "local")
    assert s3s.pop("output") != loc.pop("output")
    assert s3s == loc and s3s["samples"] == 10 and s3s["accepted"] == 8
    assert read_table(uri).num_rows == 8 and read_table(uri, "rejects").num_rows == 2
    from pipeline.report_html import write_html
    page = write_html(uri, tmp_path / "r.html").read_text()
    assert page.count('<img src="data:image/jpeg;base64,') == 2 * 10 and "invert 0" in page


def test_candidates_export_and_report_on_s3(s3_server, tmp_path):
    """keep_candidates: all on an object store: the candidates/ set commits and verifies, and
    export-preference writes its Parquet to S3 the same as locally."""
    import pyarrow.parquet as pq

    from pipeline.preference import export_preference
    from pipeline.report_html import write_html
    from pipeline.storage import Store
    from pipeline.verify import verify
    from tests.test_candidates import _rows as cand_rows, _write as cand_write

    uri = s3_server.uri(_key("cands"))
    cand_write(Store(uri), cand_rows(), 3)
    assert verify(uri) == [] and len(Store(uri).list("candidates")) == 3
    c = export_preference(uri, Store(uri).url("pref/p.parquet"))
    cand_write(tmp_path / "local", cand_rows(), 3)
    local = export_preference(tmp_path / "local", str(tmp_path / "l.parquet"))
    assert c["pairs"] == local["pairs"] == 16
    with s3_server.fs().open_input_file(f"{Store(uri).path('pref/p.parquet')}") as f:
        assert pq.read_table(f).equals(pq.read_table(tmp_path / "l.parquet"))
    assert "<svg" in write_html(uri, tmp_path / "r.html").read_text()


def test_verify_catches_a_flipped_byte_and_a_stray_on_s3(s3_server):
    from pipeline.storage import Store
    from pipeline.verify import verify

    uri = s3_server.uri(_key("flip"))
    st = Store(uri)
    _write(st, _rows(), 1)
    assert verify(uri) == []
    b = bytearray(st.read_bytes("data/part-00001.parquet"))
    b[len(b) // 2] ^= 0xFF
    st.write_bytes("data/part-00001.parquet", bytes(b))
    st.write_bytes("rejects/part-99999.parquet", b"junk")
    problems = verify(uri)
    assert any("data/part-00001.parquet: sha256 mismatch" in p for p in problems), problems
    assert any("rejects/part-99999.parquet: not in the manifest" in p for p in problems), problems
    p = run_cli("verify", uri, check=False, env=AWS_ENV)
    assert p.returncode == 1 and "sha256 mismatch" in p.stdout


def test_rerun_cleanup_on_s3(s3_server):
    """What a killed run leaves on S3 (a final file without record, part files) is cleaned."""
    from pipeline.shards import Manifest
    from pipeline.storage import Store

    st = Store(s3_server.uri(_key("clean")))
    _write(st, _rows(), 3)
    st.delete("_commits/shard-00002.json")
    st.write_bytes(".tmp/shard-00003/abc.parquet", b"part")
    m = Manifest(st)
    assert not m.complete and m.committed() == {0, 1}
    assert set(m.clean_uncommitted()) == {"data/part-00002.parquet", ".tmp/shard-00003/abc.parquet"}
    assert st.list(".tmp", recursive=True) == [] and not st.exists("data/part-00002.parquet")


def test_sources_on_s3_resolve_images_with_the_endpoint(s3_server):
    """A captions .jsonl and an image folder on S3: every row's image reference keeps the URI's
    ?endpoint options (else the load stage would ask real AWS), and folder captions still match."""
    from pipeline.config import SourceConfig
    from pipeline.source_index import build_index
    from pipeline.sources import read_image_bytes
    from pipeline.storage import Store

    st = Store(s3_server.uri(_key("src")))
    st.write_bytes("imgs/a.png", b"A")
    st.write_bytes("imgs/b.png", b"B")
    st.write_text("caps.jsonl", "".join(json.dumps({"image": f"imgs/{n}.png", "caption": f"cap {n}", "task": "color"}) + "\n"
                                        for n in "ab") + "not json\n")
    st.write_text("imgs/captions.jsonl", json.dumps({"image": "a.png", "caption": "folder cap a"}) + "\n")
    st.write_text("imgs/b.txt", "side cap b\n")

    idx = build_index(SourceConfig.model_validate({"kind": "captions", "path": st.url("caps.jsonl")}))
    rows = list(idx.rows(0, idx.n_rows))
    assert [r.caption for r in rows] == ["cap a", "cap b", None] and rows[2].error.startswith("bad_source_row")
    assert [read_image_bytes(r.image_ref) for r in rows[:2]] == [b"A", b"B"]
    assert idx.source_tasks == {"color"} and idx.task_rows_before(2) == 2

    idx = build_index(SourceConfig.model_validate({"kind": "images", "path": st.url("imgs")}))
    rows = list(idx.rows(0, idx.n_rows))
    assert [(r.source_id, r.caption) for r in rows] == [("imgs/a.png", "folder cap a"), ("imgs/b.png", "side cap b")]
    assert [read_image_bytes(r.image_ref) for r in rows] == [b"A", b"B"]


# ------------------------------------------------------------------ slow: a real job on S3

PHOTOS = {"coffee": "A cup of coffee on a saucer seen from above", "chelsea": "A tabby cat looking to the side",
          "astronaut": "An astronaut in an orange suit"}


@pytest.mark.slow
def test_job_with_source_and_output_on_s3(s3_server, vllm_url, tmp_path, request):
    import shutil

    import pyarrow.fs as pafs
    import yaml

    from pipeline.demo_data import load_demo_photo
    from pipeline.storage import Store
    from tests.conftest import png_bytes

    key = _key("job")
    src = Store(s3_server.uri(f"{key}/imgs"))
    for name in PHOTOS:
        src.write_bytes(f"{name}.png", png_bytes(load_demo_photo(name)))
    src.write_text("captions.jsonl", "".join(json.dumps({"image": f"{n}.png", "caption": c}) + "\n" for n, c in PHOTOS.items()))
    out = s3_server.uri(f"{key}/out")
    job = write_job(tmp_path / "job.yaml", vllm_url, source={"kind": "images", "path": src.url(), "repeats": 2},
                    tasks={"color": 1.0}, output__rows_per_shard=2)
    t0 = time.time()
    r = run_cli("run", str(job), "--out", out, "--no-progress", "-q", env=AWS_ENV)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    t_run = time.time() - t0
    assert summary["samples"] == 6 and summary["shards"] == 3 and summary["shards_written"] == 3, summary
    t1 = time.time()
    assert run_cli("verify", out, env=AWS_ENV).returncode == 0
    t_verify = time.time() - t1
    s = json.loads(run_cli("stats", out, "--json", env=AWS_ENV).stdout)
    assert s["complete"] and s["samples"] == 6 and s["shards_committed"] == 3
    assert s["tasks"]["color"]["samples"] == 6
    assert s["accepted"] + sum(s["tasks"]["color"]["reject_reasons"].values()) == 6
    assert s["accepted"] > 0, s
    # nothing of the job landed on this machine's working tree or beside the job file
    assert not (tmp_path / "out").exists()
    st = Store(out)
    names = st.list(recursive=True)
    assert not any(n.startswith(".tmp/") for n in names), names
    assert "job.resolved.yaml" in names and "manifest.json" in names
    # the LLM answer cache cannot live in the bucket: the runner puts it under the system temp folder
    cache = Path(yaml.safe_load(st.read_text("job.resolved.yaml"))["llm"]["cache_dir"])
    request.addfinalizer(lambda: shutil.rmtree(cache.parent, ignore_errors=True))
    assert cache.is_absolute() and cache.is_dir() and any(cache.rglob("*.json"))

    # a rerun writes nothing new
    before = {n: st.read_bytes(n) for n in names if n.endswith(".parquet") or n.startswith("_commits/") or n == "manifest.json"}
    t2 = time.time()
    r2 = run_cli("run", str(job), "--out", out, "--no-progress", "-q", env=AWS_ENV)
    t_rerun = time.time() - t2
    s2 = json.loads(r2.stdout.strip().splitlines()[-1])
    assert s2["shards_skipped"] == s2["shards"] == 3 and s2["samples_run"] == 0
    assert {n: st.read_bytes(n) for n in before} == before and sorted(st.list(recursive=True)) == sorted(names)

    # readers: polars straight from S3; HF datasets and DuckDB (no httpfs offline) from a local copy
    import datasets
    import duckdb
    import polars as pl
    from PIL import Image

    local = tmp_path / "copy"
    (local / "data").mkdir(parents=True)
    pafs.copy_files(st.path("data"), str(local / "data"), source_filesystem=st.fs,
                    destination_filesystem=pafs.LocalFileSystem())
    files = sorted(str(p) for p in (local / "data").glob("part-*.parquet"))
    assert len(files) == len(st.list("data")) and files
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == s["accepted"]
    row = ds[0]
    assert isinstance(row["input_image"], Image.Image) and isinstance(row["output_image"], Image.Image)
    assert row["input_image"].size == row["output_image"].size
    row["input_image"].load()
    row["output_image"].load()
    n = duckdb.sql(f"select count(*) from read_parquet({files!r})").fetchall()[0][0]
    assert n == s["accepted"]
    opts = {"aws_endpoint_url": f"http://{s3_server.endpoint}", "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing", "aws_region": "us-east-1", "aws_allow_http": "true"}
    df = pl.read_parquet(f"s3://{BUCKET}/{key}/out/data/*.parquet", storage_options=opts)
    assert df.height == s["accepted"]
    assert df["input_image"].struct.field("bytes")[0][:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nS3 job: run {t_run:.1f}s ({summary.get('seconds')}s in the chain), verify {t_verify:.1f}s, "
          f"rerun {t_rerun:.1f}s, readers {time.time() - t2 - t_rerun:.1f}s")
