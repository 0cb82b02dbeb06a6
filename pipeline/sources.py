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
import threading
from dataclasses import dataclass
from urllib.parse import quote
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
            full = img if is_uri(img) else posixpath.join(folder, quote(img, safe="/")) + (f"?{q}" if q else "")
        else:
            p = Path(img)
            full = str(p if p.is_absolute() else Path(base) / p)
        ref = {"kind": "file", "path": full}
    cap = obj.get(caption_col)
    return SourceRow(sid, cap if isinstance(cap, str) else None, ref, obj.get(task_col))


def demo_rows(tasks, n_signs: int, n_people: int = 1) -> Iterator[SourceRow]:
    """The bundled photos (task from the job's mix), then — when the job runs the text task — the
    photos with a composed sign, routed to it (a plain photo has no text to edit), then — when it
    runs the pose task — the photos of a person, routed to it (the others have nobody to pose, and
    the real pose model rejects them as ``no_pose``). Rows routed to a task come last and take no
    part in the balanced dealing, so adding them leaves every other sample's draw as it was."""
    from pipeline.demo_data import DEMO_PEOPLE, DEMO_PHOTOS, DEMO_SIGNS

    for name, caps in DEMO_PHOTOS.items():
        for k, cap in enumerate(caps):
            yield SourceRow(f"demo:{name}:{k}", cap, {"kind": "skimage", "name": name})
    if tasks is None or "text" in tasks:
        from pipeline.text.signs import sign_spec
        for i in range(min(n_signs, DEMO_SIGNS)):
            spec = sign_spec(i)
            yield SourceRow(f"demo-sign:{i}", spec.caption, {"kind": "demo_sign", "index": i}, "text")
    if tasks is None or "pose" in tasks:
        for name in DEMO_PEOPLE[:n_people]:
            yield SourceRow(f"demo-person:{name}", DEMO_PHOTOS[name][0], {"kind": "skimage", "name": name}, "pose")


def iter_source(cfg, tasks=None) -> Iterator[SourceRow]:
    """Rows of the job's source, in a stable order (through the same index the workers read by).
    ``tasks``: the job's task names (the demo adds its sign photos only for a job with the text
    task; None: always)."""
    from pipeline.source_index import build_index
    idx = build_index(cfg, tasks)
    yield from idx.rows(0, idx.n_rows)


# ---------------------------------------------------------------- image loading (load stage)

class ImageLoadError(Exception):
    """An image that cannot be used; ``reason`` is the reject reason code the load stage records
    (empty_file, not_an_image, truncated_image, corrupt_image, image_too_small, image_too_large,
    unsupported_image_mode; bad_image for anything else)."""

    def __init__(self, msg: str, reason: str = "bad_image"):
        super().__init__(msg)
        self.reason = reason


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
            raise ImageLoadError("image struct has neither bytes nor path", "missing_image")
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


# Images larger than this many pixels are rejected from their header, before any pixel is decoded
# (``output.max_source_pixels`` sets it per job). 8192×8192 = 67.1 MP: every ordinary camera photo
# (61 MP full frame, 50 MP phones) loads, decoding one takes ≈ 0.2–0.5 GB, and it is below PIL's own
# decompression-bomb warning (89.5 MP) so the two agree; the job keeps ``output.max_side`` ≤ 4096 anyway.
MAX_SOURCE_PIXELS = 8192 * 8192
# Formats the load stage opens (PIL also knows EPS, which runs Ghostscript, and a dozen rarities);
# JPEG includes multi-picture (MPO) phone photos.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "TGA", "JPEG2000", "AVIF")
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP")
# EXIF orientation → the transpose that makes the picture upright (as PIL.ImageOps.exif_transpose)
_ORIENT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
           7: "TRANSVERSE", 8: "ROTATE_90"}
_OPEN_LOCK = threading.Lock()


def decode_image(data: bytes | np.ndarray, max_side: int, max_pixels: int = MAX_SOURCE_PIXELS) -> np.ndarray:
    """Bytes → HxWx3 uint8 RGB, fully decoded (a truncated file fails here, not later), or
    ``ImageLoadError`` with a reason code. Real photo collections hold more than 8-bit RGB:
      * the EXIF orientation is applied, so a phone photo stored sideways comes out upright;
      * 16-bit images (greyscale I;16, 48/64-bit RGB(A) PNG and TIFF) are scaled v·255/65535,
        rounded; 32-bit integer images whose values fit 16 bits likewise; float images in [0, 1]
        ×255; other ranges are ``unsupported_image_mode``;
      * CMYK → RGB; alpha (RGBA, LA, a palette with a transparent colour) is composited on white;
      * animated GIF / WebP / APNG: the first frame;
      * the size is checked from the header before decoding (``image_too_large`` above
        ``max_pixels``, ``image_too_small`` below 16 px a side), and PIL's decompression-bomb
        warning is an error while our file is opened."""
    if isinstance(data, np.ndarray):
        arr = data
    else:
        arr = _decode_bytes(bytes(data), max_pixels)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageLoadError(f"unexpected image shape {arr.shape}", "unsupported_image_mode")
    arr = np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False)
    h, w = arr.shape[:2]
    if min(h, w) < 16:
        raise ImageLoadError(f"image too small ({w}x{h})", "image_too_small")
    if max(h, w) > max_side:
        import cv2
        s = max_side / max(h, w)
        arr = cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return arr


def _decode_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageLoadError("empty file (0 bytes)", "empty_file")
    known = (data.startswith(_MAGIC) or data[4:12] in (b"ftypavif", b"ftypavis")
             or (data[:2] == b"BM" and data[6:10] == b"\0\0\0\0"))        # BMP: its reserved bytes are 0
    try:
        # PIL warns (then fails at 2×) past Image.MAX_IMAGE_PIXELS; make the warning an error while
        # our header is read (Python < 3.14 keeps warning filters per process: hence the lock and
        # the short window; the filters are restored at once)
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error" if max_pixels <= Image.MAX_IMAGE_PIXELS else "ignore",
                                  Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"decompression bomb: {e}", "image_too_large") from None
    except UnidentifiedImageError:
        if known:
            raise ImageLoadError(f"unreadable {_kind(data)} header ({len(data)} bytes)", _broken(data)) from None
        raise ImageLoadError(f"not an image ({len(data)} bytes starting {data[:16]!r})", "not_an_image") from None
    except MemoryError:
        raise                            # the world's problem, not the file's: retried by the stage
    except Exception as e:               # noqa: BLE001 — any parser error is this file's problem
        raise ImageLoadError(f"{type(e).__name__}: {e}", _broken(data, e) if known else "not_an_image") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageLoadError(f"{w}x{h} = {w * h / 1e6:.1f} MP > output.max_source_pixels = "
                                 f"{max_pixels / 1e6:.1f} MP", "image_too_large")
        if min(w, h) < 16:
            raise ImageLoadError(f"image too small ({w}x{h})", "image_too_small")
        rawmode = im.tile[0].args[0] if im.tile and isinstance(im.tile[0].args, tuple) else (
            im.tile[0].args if im.tile else None)
        try:
            im.load()                    # the first frame of an animation: the one a viewer shows first
            orientation = _orientation(im)
            arr = _to_rgb8(im, data, rawmode)
        except (ImageLoadError, MemoryError):
            raise
        except Exception as e:           # noqa: BLE001
            raise ImageLoadError(f"{type(e).__name__}: {e}", _broken(data, e)) from None
    if orientation in _ORIENT:
        arr = np.asarray(Image.fromarray(arr).transpose(getattr(Image.Transpose, _ORIENT[orientation])))
    return arr


def _formats() -> tuple[str, ...]:
    from PIL import Image
    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)      # AVIF, JPEG2000: where PIL has them


def _kind(data: bytes) -> str:
    return {b"\x89P": "PNG", b"\xff\xd8": "JPEG", b"GI": "GIF", b"RI": "WebP", b"BM": "BMP"}.get(data[:2], "image")


def _broken(data: bytes, e: Exception | None = None) -> str:
    """truncated_image when the file ends early (PIL says so, or a RIFF/WebP is shorter than its
    header says), corrupt_image for any other broken image data."""
    if e is not None and "truncated" in str(e).lower():
        return "truncated_image"
    if data.startswith(b"RIFF") and len(data) >= 8 and len(data) < int.from_bytes(data[4:8], "little") + 8:
        return "truncated_image"
    if data.startswith(b"\x89PNG") and b"IEND" not in data[-16:]:
        return "truncated_image"
    return "corrupt_image"


def _orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:                    # noqa: BLE001 — a broken EXIF block: the pixels are still fine
        return 1


def _u16_to_u8(a: np.ndarray) -> np.ndarray:
    """16-bit values → 8-bit, round(v·255/65535), through a 64 Ki lookup table (no wide copy)."""
    lut = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return lut[a]


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 → RGB composited on white (the alpha is coverage, not to be dropped)."""
    a = rgba[..., 3:4].astype(np.uint16)
    out = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _to_rgb8(im, data: bytes, rawmode) -> np.ndarray:
    mode = im.mode
    if mode in ("RGB", "RGBA", "LA") and isinstance(rawmode, str) and ";16" in rawmode:
        # 16 bits a channel: PIL keeps only the high byte; OpenCV reads all 16 (BGR order)
        import cv2
        a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
        if a is not None and a.dtype == np.uint16 and a.ndim == 3 and a.shape[:2] == (im.height, im.width):
            a = _u16_to_u8(a)
            a = cv2.cvtColor(a, cv2.COLOR_BGRA2RGBA if a.shape[2] == 4 else cv2.COLOR_BGR2RGB)
            return _on_white(a) if a.shape[2] == 4 else a
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _u16_to_u8(np.asarray(im).astype(np.uint16, copy=False))
    if mode == "I":
        a = np.asarray(im)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise ImageLoadError(f"32-bit integer image with values {lo}…{hi} (outside 16 bits)", "unsupported_image_mode")
        return _u16_to_u8(a.astype(np.uint16))
    if mode == "F":
        a = np.asarray(im)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ImageLoadError("float image with values outside [0, 1]", "unsupported_image_mode")
        return np.rint(a * 255).astype(np.uint8)
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info) \
            or (mode in ("L", "RGB") and "transparency" in im.info):
        return _on_white(np.asarray(im.convert("RGBA")))
    if mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", "RGBX"):
        return np.asarray(im.convert("RGB"))
    raise ImageLoadError(f"image mode {mode} is not supported", "unsupported_image_mode")


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
