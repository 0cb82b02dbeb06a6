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
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.storage import is_uri, open_source

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass
class SourceRow:
    source_id: str
    caption: str | None
    image_ref: dict | None = None
    task: str | None = None
    error: str | None = None          # reason code when the row itself is unusable


def jsonl_row(text: str, sid: str, caption_col: str, task_col: str, base: str) -> SourceRow:
    """One .jsonl line → a SourceRow; a line that is not a JSON object is a row with an error.
    ``base``: folder (path or URI) that relative image paths are resolved against."""
    try:
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("row is not an object")
    except ValueError as e:
        return SourceRow(sid, None, error=f"bad_source_row: {e}")
    ref = None
    if obj.get("image"):
        img = str(obj["image"])
        if is_uri(img) or is_uri(base):
            folder, _, q = base.partition("?")          # the folder's ?options (endpoint…) go on the file
            full = img if is_uri(img) else posixpath.join(folder, img) + (f"?{q}" if q else "")
        else:
            p = Path(img)
            full = str(p if p.is_absolute() else Path(base) / p)
        ref = {"kind": "file", "path": full}
    cap = obj.get(caption_col)
    return SourceRow(sid, cap if isinstance(cap, str) else None, ref, obj.get(task_col))


def demo_rows(tasks, n_signs: int) -> Iterator[SourceRow]:
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
    """Rows of the job's source, in a stable order (through the same index the workers read by).
    ``tasks``: the job's task names (the demo adds its sign photos only for a job with the text
    task; None: always)."""
    from pipeline.source_index import build_index
    idx = build_index(cfg, tasks)
    yield from idx.rows(0, idx.n_rows)


# ---------------------------------------------------------------- image loading (load stage)

class ImageLoadError(Exception):
    pass


def read_image_bytes(ref: dict) -> bytes | np.ndarray:
    kind = ref.get("kind")
    if kind == "file":
        p = ref["path"]
        if is_uri(p):
            store, name = open_source(p)
            return store.read_bytes(name)
        return Path(p).read_bytes()
    if kind == "skimage":
        from pipeline.demo_data import load_demo_photo
        return load_demo_photo(ref["name"])
    if kind == "demo_sign":
        from pipeline.demo_data import load_demo_sign
        return load_demo_sign(ref["index"])
    if kind == "parquet":
        v = _parquet_cell(ref)
        if isinstance(v, dict):
            if v.get("bytes"):
                return v["bytes"]
            if v.get("path"):
                return read_image_bytes({"kind": "file", "path": v["path"]})
            raise ImageLoadError("image struct has neither bytes nor path")
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        raise ImageLoadError(f"unsupported image cell type {type(v).__name__}")
    raise ImageLoadError(f"unknown image reference kind {kind!r}")


_PQ_CACHE: dict = {}


def _parquet_cell(ref: dict):
    """One image cell of a Parquet source. Only its row group's image column is read (and kept
    for the next rows, which come from the same group): never the whole file's images."""
    import pyarrow.parquet as pq
    if "row_group" not in ref:                       # a reference made before row groups were indexed
        ref = {**ref, **_locate_row(ref["path"], ref["row"])}
    key = (ref["path"], ref["column"], ref["row_group"])
    if key not in _PQ_CACHE:
        _PQ_CACHE.clear()
        store, name = open_source(ref["path"])
        with store.open_input(name) as fh:
            _PQ_CACHE[key] = pq.ParquetFile(fh).read_row_group(ref["row_group"], columns=[ref["column"]])
    return _PQ_CACHE[key].column(0)[ref["group_row"]].as_py()


def _locate_row(path: str, row: int) -> dict:
    import pyarrow.parquet as pq
    store, name = open_source(path)
    with store.open_input(name) as fh:
        md = pq.ParquetFile(fh).metadata
    first = 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if row < first + n:
            return {"row_group": g, "group_row": row - first}
        first += n
    raise ImageLoadError(f"row {row} is past the end of {path}")


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
