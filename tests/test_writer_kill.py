"""A writer killed mid-shard (after its part file is on disk, before the driver hears of it) costs
nothing: Ray retries the write, the shard is committed once with the same rows as an undisturbed
run, and a reader polling the output the whole time never sees a partial shard."""
from __future__ import annotations

import json
import threading
import time

import pyarrow.parquet as pq
import pytest

from tests.jobutil import run_cli
from tests.test_resume import _rows

pytestmark = pytest.mark.slow


class Reader(threading.Thread):
    """Reads every final shard file it can see, as a consumer of a live output would, and records
    any file that is not a whole Parquet file with its commit record's row count."""

    def __init__(self, out):
        super().__init__(daemon=True)
        self.out, self.stop, self.seen, self.bad = out, threading.Event(), set(), []

    def run(self):
        while not self.stop.is_set():
            for sub in ("data", "rejects"):
                d = self.out / sub
                for p in sorted(d.glob("part-*.parquet")) if d.exists() else []:
                    try:
                        n = pq.ParquetFile(p).metadata.num_rows
                        pq.read_table(p)
                    except FileNotFoundError:
                        continue                     # deleted as garbage of an earlier run
                    except Exception as e:           # half a file: what must never happen
                        self.bad.append(f"{p.name}: {type(e).__name__}: {e}")
                        continue
                    rec = self.out / "_commits" / f"shard-{p.name[5:10]}.json"
                    if rec.exists():
                        want = json.loads(rec.read_text())["files"][sub]["rows"]
                        if want != n:
                            self.bad.append(f"{p.name}: {n} rows, its commit says {want}")
                    self.seen.add(p.name)
            time.sleep(0.02)


def test_writer_killed_mid_shard_loses_nothing_and_no_partial_shard_is_visible(color_reference, tmp_path):
    job = color_reference["job"]
    out = tmp_path / "killed"
    marker = tmp_path / "writer-killed"
    reader = Reader(out)
    reader.start()
    try:
        run_cli("run", str(job), "--out", str(out), "--no-progress", "-q",
                env={"PAIRFORGE_TEST_KILL_WRITER_ONCE": str(marker)})
    finally:
        reader.stop.set()
        reader.join()
    assert marker.exists(), "the fault hook never fired: no writer was killed"
    assert reader.bad == [] and reader.seen, reader.bad
    assert run_cli("verify", str(out)).returncode == 0
    assert not (out / ".tmp").exists()                        # parts of the killed writer cleaned up
    a, b = _rows(out), color_reference["rows"]
    assert len({r["id"] for r in a}) == len(a) == 18
    assert a == b
