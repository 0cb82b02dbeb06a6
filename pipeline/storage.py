"""Storage through ``pyarrow.fs``: a local folder and ``s3://bucket/prefix`` are one code path.

A ``Store`` is a folder on some filesystem. Every reader and writer of sources and outputs goes
through it, so what works on a laptop works on S3, GCS, HDFS or MinIO (whatever
``pyarrow.fs.FileSystem.from_uri`` understands). S3 options ride on the URI the way pyarrow reads
them, e.g. ``s3://bucket/out?endpoint_override=127.0.0.1:9000&scheme=http``; credentials come from
the usual AWS variables.

Writes are atomic: a reader sees the whole object or nothing. Locally that is write-to-temp, fsync,
rename, fsync the folder (so the rename survives a power cut); on an object store a single PUT (or a
multipart upload completed at close) is already all-or-nothing.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import pyarrow.fs as pafs


def is_uri(s: str | os.PathLike) -> bool:
    return "://" in str(s)


def _split_query(uri: str) -> tuple[str, str]:
    base, _, query = uri.partition("?")
    return base, (f"?{query}" if query else "")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Store:
    """A folder on a pyarrow filesystem. Relative paths use '/' whatever the filesystem."""

    def __init__(self, uri: str | os.PathLike, _fs: pafs.FileSystem | None = None, _root: str | None = None):
        self.uri = str(uri)
        if _fs is not None:
            self.fs, self.root = _fs, _root
        elif is_uri(uri):
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).resolve())
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def __reduce__(self):                       # travels to Ray workers as its URI
        return (Store, (self.uri,))

    # ------------------------------------------------------------------ paths
    def path(self, rel: str = "") -> str:
        """Path of ``rel`` inside the filesystem (what pyarrow calls it)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def url(self, rel: str = "") -> str:
        """A string a user (or another Store) can open: local path or URI with its query. In a URI
        ``rel`` is percent-encoded (pyarrow decodes URI paths), so a name holding a space, '?', '#',
        '%' or non-ASCII letters names that same object again."""
        if self.local:
            return self.path(rel)
        base, q = _split_query(self.uri)
        return (posixpath.join(base.rstrip("/"), quote(rel, safe="/")) if rel else base) + q

    def child(self, rel: str) -> "Store":
        s = Store.__new__(Store)
        s.uri, s.fs, s.root, s.local = self.url(rel), self.fs, self.path(rel), self.local
        return s

    def local_path(self, rel: str = "") -> Path | None:
        return Path(self.path(rel)) if self.local else None

    # ------------------------------------------------------------------ reading
    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_dir(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory

    def size(self, rel: str) -> int:
        return self.fs.get_file_info(self.path(rel)).size

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def open_input(self, rel: str):
        """Random-access file (seek, read_at): what pyarrow.parquet and the source index read."""
        return self.fs.open_input_file(self.path(rel))

    def list(self, rel: str = "", *, recursive: bool = False) -> list[str]:
        """Names of the files under ``rel`` (relative to it), sorted; [] when it does not exist."""
        base = self.path(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=recursive))
            n = len(base.rstrip("/")) + 1
            return sorted(i.path[n:] for i in infos if i.type == pafs.FileType.File)
        except FileNotFoundError:
            return []
        except UnicodeDecodeError:
            if not self.local:
                raise
            return _os_list(base, recursive)       # a local name that is not UTF-8: pyarrow cannot list it

    def sizes(self, rel: str = "") -> dict[str, int]:
        """Name → size in bytes of the files directly under ``rel``: one listing (one request on an
        object store), not one per file."""
        base = self.path(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except FileNotFoundError:
            return {}
        n = len(base.rstrip("/")) + 1
        return {i.path[n:]: i.size for i in infos if i.type == pafs.FileType.File}

    # ------------------------------------------------------------------ writing
    def write_bytes(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        """All of ``data`` at ``rel`` or nothing (see the module doc)."""
        dest = self.path(rel)
        if self.local:
            d = os.path.dirname(dest)
            created = []                        # folders this write makes: their entries need an fsync too
            p = d
            while not os.path.isdir(p) and os.path.dirname(p) != p:
                created.append(p)
                p = os.path.dirname(p)
            os.makedirs(d, exist_ok=True)
            tmp = os.path.join(d, f".tmp-{os.path.basename(dest)}-{uuid.uuid4().hex[:8]}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    if durable:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, dest)
            except BaseException:
                with _suppress():
                    os.unlink(tmp)
                raise
            if durable:
                _fsync_dir(d)                   # the rename: the record's own folder
                for c in created:               # and the entries of folders made for it
                    _fsync_dir(os.path.dirname(c))
            return
        parent = posixpath.dirname(dest)
        with _suppress():
            self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(dest) as f:
            f.write(data)

    def write_text(self, rel: str, text: str, *, durable: bool = True) -> None:
        self.write_bytes(rel, text.encode("utf-8"), durable=durable)

    def write_json(self, rel: str, obj, *, durable: bool = True) -> None:
        self.write_text(rel, json.dumps(obj, indent=1, sort_keys=True), durable=durable)

    def delete(self, rel: str) -> None:
        with _suppress():
            self.fs.delete_file(self.path(rel))

    def delete_dir(self, rel: str) -> None:
        with _suppress():
            self.fs.delete_dir(self.path(rel))

    def mkdirs(self, rel: str = "") -> None:
        with _suppress():
            self.fs.create_dir(self.path(rel), recursive=True)


def _os_list(base: str, recursive: bool) -> list[str]:
    """Local file names under ``base`` through ``os`` (a name that is not UTF-8 comes back with
    surrogate escapes, as Python spells it), sorted like ``Store.list``."""
    out = []
    for d, _, files in os.walk(base):
        rel = os.path.relpath(d, base)
        out += [f if rel == "." else posixpath.join(rel.replace(os.sep, "/"), f) for f in files]
        if not recursive:
            break
    return sorted(out)


class _suppress:
    """Ignore 'not there' and similar on cleanup paths (pyarrow raises OSError subclasses)."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, (OSError, FileNotFoundError))


def open_source(path: str) -> tuple[Store, str]:
    """(store of the parent folder, file name) for a source file given as a path or URI."""
    if is_uri(path):
        base, q = _split_query(path)
        parent, name = base.rstrip("/").rsplit("/", 1)
        return Store(parent + q), unquote(name)        # the URI's name is percent-encoded (Store.url)
    p = Path(path).resolve()
    return Store(p.parent), p.name


def _location(p: str | os.PathLike) -> tuple:
    """Where ``p`` lives, as comparable parts: local paths absolute with symlinks resolved and
    '..' and trailing slashes gone; URIs as (scheme, endpoint, bucket, key parts), query dropped."""
    from urllib.parse import parse_qs, urlsplit

    s = str(getattr(p, "uri", p))             # a Store: its URI or path
    if is_uri(s) and not s.lower().startswith("file://"):
        u = urlsplit(s)
        endpoint = (parse_qs(u.query).get("endpoint_override") or [""])[0].lower()
        key = [c for c in posixpath.normpath("/" + unquote(u.path)).split("/") if c]
        return (u.scheme.lower(), endpoint, u.netloc.lower(), *key)
    if s.lower().startswith("file://"):
        s = unquote(urlsplit(s).path)
    real = os.path.realpath(os.path.abspath(os.path.expanduser(s)))
    return ("file", "", "", *[c for c in real.split(os.sep) if c])


def _contains(outer: tuple, inner: tuple) -> bool:
    if outer[:2] != inner[:2] and outer[1] and inner[1]:      # two endpoints named: two stores
        return False
    o, i = (outer[0], *outer[2:]), (inner[0], *inner[2:])
    return len(i) >= len(o) and i[:len(o)] == o


def check_apart(source: str | os.PathLike | None, output, *, source_field: str = "source.path",
                output_field: str = "output.path (or --out)") -> None:
    """Refuse (JobError) an output folder inside the source, a source inside the output, or the
    two the same: the job would read its own output as source rows. Paths are compared resolved
    (symlinks, '..', trailing slashes), URIs by scheme, bucket and key; ``/data/imgs2`` is not
    inside ``/data/imgs``. A source without a path (the demo) passes."""
    if source is None or str(source) == "":
        return
    from pipeline.config import JobError

    src, out = _location(source), _location(output)
    out_s = str(getattr(output, "uri", output))
    if _contains(src, out) and _contains(out, src):
        raise JobError(f"{output_field} {out_s!r} and {source_field} {str(source)!r} are the same "
                       "folder: the job would read its own output as source; use another output folder")
    if _contains(src, out):
        raise JobError(f"{output_field} {out_s!r} is inside {source_field} {str(source)!r}: the job would "
                       "read its own output as source; use an output folder outside the source")
    if _contains(out, src):
        raise JobError(f"{source_field} {str(source)!r} is inside {output_field} {out_s!r}: the output "
                       "folder would hold (and clean up) the source; use an output folder apart from it")
