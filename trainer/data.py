"""Training pairs streamed from the shards.

Rows come from ``data/part-*.parquet`` of job output folders (the files the commit records list as
committed; a half-written shard never counts) and are read a record batch at a time with pyarrow,
reading only the columns the trainer needs. A row is held out for ``pairforge eval`` when a hash
of its id falls under ``holdout_fraction``: the split is stable across runs, machines and shard
orders. Order is a seeded shuffle (files per epoch, then a shuffle buffer), so step k always sees
the same batch — a resumed run continues exactly where it stopped. With several workers, worker r
takes every r-th row of that order.

Rows that cannot be used (an undecodable image, no instruction) are skipped and counted by reason.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from tasks import SampleReject

COLUMNS = ["id", "task", "task_id", "instruction", "input_caption", "output_caption", "input_image", "output_image"]


def shard_files(sources: list[str]) -> list[Path]:
    """Parquet files of the given job folders (committed shards only) or files, sorted."""
    files: list[Path] = []
    for s in sources:
        p = Path(s).expanduser()
        if p.is_file():
            files.append(p)
        elif (p / "manifest.json").exists():
            # the commit records decide (format-1 folders, commits inside manifest.json, read too)
            from pipeline.shards import committed_files
            files.extend(p / f["path"] for _, f in committed_files(p, "data"))
        elif (p / "data").is_dir():
            files.extend(sorted((p / "data").glob("part-*.parquet")))
        else:
            raise FileNotFoundError(f"data.shards: {s} is neither a parquet file nor a job output folder")
    if not files:
        raise FileNotFoundError(f"data.shards: no accepted rows in {', '.join(sources)}")
    return files


def is_heldout(row_id: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    h = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16)
    return h / 0x100000000 < fraction


def to_tensor(img: np.ndarray, resolution: int) -> torch.Tensor:
    """HxWx3 uint8 → 3xRxR float in [-1, 1], centre-cropped to a square then resized."""
    import cv2

    from pipeline.diffusion.sampler import pixels_to_unit

    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    img = cv2.resize(img[y:y + s, x:x + s], (resolution, resolution),
                     interpolation=cv2.INTER_AREA if s > resolution else cv2.INTER_CUBIC)
    return pixels_to_unit(img)


def decode_row_images(row: dict) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.sources import ImageLoadError, decode_image

    out = []
    for col in ("input_image", "output_image"):
        cell = row.get(col) or {}
        if not cell.get("bytes"):
            raise SampleReject("missing_image", col)
        try:
            out.append(decode_image(cell["bytes"], max_side=1 << 14))
        except ImageLoadError as e:
            raise SampleReject("bad_image", f"{col}: {e}") from None
    return out[0], out[1]


@dataclass
class PairStream:
    """Rows of the shards for one split, filtered by task, in a seeded order."""
    sources: list[str]
    split: str = "train"                  # train | heldout
    tasks: list[str] | None = None
    holdout_fraction: float = 0.05
    max_examples: int | None = None
    shuffle_buffer: int = 256
    seed: int = 0
    skipped: Counter = field(default_factory=Counter)
    # the column whose text becomes the sample's instruction (data.instruction_column): the job's
    # choice (`instruction`), the agent's or the judge's rewrite
    instruction_column: str = "instruction"

    def __post_init__(self):
        self.files = shard_files(self.sources)
        if self.tasks is not None and not self.tasks:
            raise ValueError("data.tasks: an empty list selects nothing; use null for all tasks")

    def _keep(self, row: dict) -> bool:
        if self.tasks is not None and row["task"] not in self.tasks:
            return False
        return is_heldout(row["id"], self.holdout_fraction) == (self.split == "heldout")

    def rows(self, files: list[Path] | None = None) -> Iterator[dict]:
        """Matching rows in file order, images still encoded (cheap to skip)."""
        n = 0
        for f in files or self.files:
            pf = pq.ParquetFile(f)
            cols = [c for c in COLUMNS if c in pf.schema_arrow.names]
            ins = self.instruction_column
            if ins != "instruction":
                if ins not in pf.schema_arrow.names:
                    raise ValueError(f"data.instruction_column: {f} has no column {ins!r} (shards written "
                                     "before the judge have only `instruction`)")
                cols.append(ins)
            for batch in pf.iter_batches(batch_size=64, columns=cols):
                for row in batch.to_pylist():
                    if not self._keep(row):
                        continue
                    if ins != "instruction":
                        row["instruction"] = row.pop(ins)
                    if self.max_examples is not None and n >= self.max_examples:
                        return
                    n += 1
                    yield row

    def count(self) -> int:
        return sum(1 for _ in self.rows())

    def task_counts(self) -> Counter:
        """Rows per task over all shard files and both splits (reads the task column only)."""
        c: Counter = Counter()
        for f in self.files:
            c.update(pq.read_table(f, columns=["task"]).column("task").to_pylist())
        return c

    def split_counts(self) -> dict[str, Counter]:
        """Rows per task in each split under this stream's task filter (``max_examples`` caps the
        stream's own split, as ``rows`` does). Reads the id and task columns only; the result grows
        with the number of tasks, not of rows."""
        counts = {"train": Counter(), "heldout": Counter()}
        taken = 0
        for f in self.files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096, columns=["id", "task"]):
                for rid, task in zip(batch.column("id").to_pylist(), batch.column("task").to_pylist()):
                    if self.tasks is not None and task not in self.tasks:
                        continue
                    split = "heldout" if is_heldout(rid, self.holdout_fraction) else "train"
                    if split == self.split:
                        if self.max_examples is not None and taken >= self.max_examples:
                            continue
                        taken += 1
                    counts[split][task] += 1
        return counts

    def shuffled(self, epoch: int) -> Iterator[dict]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        files = list(self.files)
        if self.max_examples is None:          # with a cap, the first N rows must stay the same N
            rng.shuffle(files)
        buf: list[dict] = []
        for row in self.rows(files):
            buf.append(row)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def samples(self, resolution: int, rank: int = 0, world: int = 1, start: int = 0) -> Iterator[dict]:
        """Endless decoded samples for one worker. ``self.position`` counts this worker's rows read
        so far (skipped ones too); a resumed run passes it back as ``start`` and the rows before it
        are passed over without decoding."""
        epoch, k, seen = 0, 0, 0
        self.position = start
        while True:
            got_any = False
            for row in self.shuffled(epoch):
                got_any = True
                k += 1
                if (k - 1) % world != rank:
                    continue
                if seen < start:
                    seen += 1
                    continue
                seen += 1
                self.position = seen
                try:
                    sample = to_sample(row, resolution)
                except SampleReject as e:
                    self.skipped[e.reason] += 1
                    continue
                yield sample
            if not got_any:
                raise ValueError(f"data: no {self.split} rows match tasks={self.tasks} in {len(self.files)} shard file(s)")
            epoch += 1


def to_sample(row: dict, resolution: int) -> dict:
    if not (row.get("instruction") or "").strip():
        raise SampleReject("no_instruction")
    x, y = decode_row_images(row)
    return {"input": to_tensor(x, resolution), "output": to_tensor(y, resolution),
            "instruction": row["instruction"], "task": row["task"], "id": row["id"]}


def batches(samples: Iterator[dict], batch_size: int) -> Iterator[dict]:
    while True:
        chunk = [next(samples) for _ in range(batch_size)]
        yield {"input": torch.stack([s["input"] for s in chunk]), "output": torch.stack([s["output"] for s in chunk]),
               "instruction": [s["instruction"] for s in chunk], "task": [s["task"] for s in chunk],
               "id": [s["id"] for s in chunk]}
