"""Sources: where captions (and optionally images) come from.

A source yields ``SourceRow``s with a stable ``source_id`` (file name + row number) and, for image
sources, a small JSON-able *reference* to the image rather than its bytes, so the driver stays light
and the load stage reads the image on whichever node it runs (paths must be visible there).

Problems with one row (bad JSON line, missing caption file) become a row with ``error`` set: the
pipeline rejects it with the reason and counts it; the job goes on.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass
class SourceRow:
    source_id: str
    caption: str | None
    image_ref: dict | None = None
    task: str | None = None
    error: str | None = None          # reason code when the row itself is unusable


def _jsonl(path: Path, caption_col: str, task_col: str, base: Path) -> Iterator[SourceRow]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            sid = f"{path.name}:{i}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("row is not an object")
            except ValueError as e:
                yield SourceRow(sid, None, error=f"bad_source_row: {e}")
                continue
            ref = None
            if obj.get("image"):
                p = Path(obj["image"])
                ref = {"kind": "file", "path": str(p if p.is_absolute() else base / p)}
            cap = obj.get(caption_col)
            yield SourceRow(sid, cap if isinstance(cap, str) else None, ref, obj.get(task_col))


def _captions(path: Path, cfg) -> Iterator[SourceRow]:
    if path.suffix == ".jsonl":
        yield from _jsonl(path, cfg.caption_column, cfg.task_column, path.parent)
    elif path.suffix == ".parquet":
        yield from _parquet(path, cfg)
    else:
        with path.open(encoding="utf-8", errors="replace") as f:
            # every line is a row: an empty line becomes a counted 'empty_caption' reject, not a skip
            for i, line in enumerate(f):
                yield SourceRow(f"{path.name}:{i}", line.rstrip("\n"))


def _images(folder: Path, cfg) -> Iterator[SourceRow]:
    captions: dict[str, SourceRow] = {}
    cj = folder / "captions.jsonl"
    if cj.exists():
        for r in _jsonl(cj, cfg.caption_column, cfg.task_column, folder):
            if r.image_ref:
                captions[Path(r.image_ref["path"]).name] = r
    for p in sorted(folder.iterdir()):
        if p.is_dir() or p.name == "captions.jsonl" or p.suffix == ".txt" or p.name.startswith("."):
            continue
        side = p.with_suffix(".txt")
        known = captions.get(p.name)
        cap = known.caption if known else (side.read_text(errors="replace").strip() if side.exists() else None)
        # non-image files are kept on purpose: the load stage rejects them with a reason
        yield SourceRow(f"{folder.name}/{p.name}", cap, {"kind": "file", "path": str(p.resolve())},
                        known.task if known else None)


def _parquet(path: Path, cfg) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    cols = [c for c in (cfg.caption_column, cfg.image_column, cfg.task_column) if c in pf.schema_arrow.names]
    if cfg.caption_column not in cols:
        raise ValueError(f"{path}: no caption column {cfg.caption_column!r} (columns: {pf.schema_arrow.names})")
    has_img = cfg.image_column in cols
    i = 0
    for batch in pf.iter_batches(columns=[cfg.caption_column] + ([cfg.task_column] if cfg.task_column in cols else [])):
        for r in batch.to_pylist():
            ref = {"kind": "parquet", "path": str(path.resolve()), "row": i, "column": cfg.image_column} if has_img else None
            yield SourceRow(f"{path.name}:{i}", r[cfg.caption_column], ref, r.get(cfg.task_column))
            i += 1


def _demo(tasks, n_signs: int) -> Iterator[SourceRow]:
    """The bundled photos (task from the job's mix), then — when the job runs the text task — the
    photos with a composed sign, routed to it (a plain photo has no text to edit)."""
    from pipeline.demo_data import DEMO_PHOTOS, DEMO_SIGNS

    for name, caps in DEMO_PHOTOS.items():
        for k, cap in enumerate(caps):
            yield SourceRow(f"demo:{name}:{k}", cap, {"kind": "skimage", "name": name})
    if tasks is None or "text" in tasks:
        from pipeline.text.signs import sign_spec
        for i in range(min(n_signs, DEMO_SIGNS)):
            spec = sign_spec(i)
            yield SourceRow(f"demo-sign:{i}", spec.caption, {"kind": "demo_sign", "index": i}, "text")


def iter_source(cfg, tasks=None) -> Iterator[SourceRow]:
    """Rows of the job's source, in a stable order. ``tasks``: the job's task names (the demo adds
    its sign photos only for a job with the text task; None: always)."""
    n = 0
    if cfg.kind == "demo":
        it = _demo(tasks, cfg.demo_signs)
    else:
        path = Path(cfg.path)
        if not path.exists():
            raise FileNotFoundError(f"source.path {str(path)!r} does not exist")
        if cfg.kind == "images":
            if not path.is_dir():
                raise ValueError(f"source.path {str(path)!r} must be a folder for kind 'images'")
            it = _images(path, cfg)
        elif cfg.kind == "parquet":
            it = _parquet(path, cfg)
        else:
            it = _captions(path, cfg)
    for row in it:
        if cfg.limit is not None and n >= cfg.limit:
            return
        n += 1
        yield row


# ---------------------------------------------------------------- image loading (load stage)

class ImageLoadError(Exception):
    pass


def read_image_bytes(ref: dict) -> bytes | np.ndarray:
    kind = ref.get("kind")
    if kind == "file":
        return Path(ref["path"]).read_bytes()
    if kind == "skimage":
        from pipeline.demo_data import load_demo_photo
        return load_demo_photo(ref["name"])
    if kind == "demo_sign":
        from pipeline.demo_data import load_demo_sign
        return load_demo_sign(ref["index"])
    if kind == "parquet":
        import pyarrow.parquet as pq
        t = _parquet_table(ref["path"], ref["column"])
        v = t.column(0)[ref["row"]].as_py()
        if isinstance(v, dict):
            if v.get("bytes"):
                return v["bytes"]
            if v.get("path"):
                return Path(v["path"]).read_bytes()
            raise ImageLoadError("image struct has neither bytes nor path")
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        raise ImageLoadError(f"unsupported image cell type {type(v).__name__}")
    raise ImageLoadError(f"unknown image reference kind {kind!r}")


_PQ_CACHE: dict = {}


def _parquet_table(path: str, column: str):
    """Keep the last Parquet image column read in memory: rows of one file arrive together."""
    import pyarrow.parquet as pq
    key = (path, column)
    if key not in _PQ_CACHE:
        _PQ_CACHE.clear()
        _PQ_CACHE[key] = pq.read_table(path, columns=[column])
    return _PQ_CACHE[key]


def decode_image(data: bytes | np.ndarray, max_side: int) -> np.ndarray:
    """Bytes → HxWx3 uint8 RGB, fully decoded (a truncated file fails here, not later)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, np.ndarray):
        arr = data
    else:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageLoadError(f"{type(e).__name__}: {e}") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageLoadError(f"unexpected image shape {arr.shape}")
    arr = np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False)
    h, w = arr.shape[:2]
    if min(h, w) < 16:
        raise ImageLoadError(f"image too small ({w}x{h})")
    if max(h, w) > max_side:
        import cv2
        s = max_side / max(h, w)
        arr = cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return arr


def encode_png(arr: np.ndarray) -> bytes:
    """Deterministic PNG bytes (same pixels → same bytes) for RGB or single-channel arrays."""
    import cv2
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(b: bytes) -> np.ndarray:
    import cv2
    arr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("PNG decoding failed")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr
