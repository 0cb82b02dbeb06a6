"""A cheap index of the job's source, so that any worker can read the rows of any shard by itself.

The driver builds it once, in one streaming pass that keeps only O(rows / STRIDE) numbers:
  * .txt / .jsonl captions: the byte offset of every STRIDE-th row;
  * Parquet: the row count of every row group (from the footer, plus the task column when the
    file has one);
  * an image folder: its sorted listing (names only), and the offsets of captions.jsonl;
  * the demo: its few bundled rows.
``rows(start, stop)`` then yields exactly the ``SourceRow``s that ``iter_source`` would yield at
those positions, reading only that part of the source. The index is small and travels to the
workers with the plan stage.

It also counts, per checkpoint, the rows that name their own task, which the ``balanced`` task
assignment needs to know where a shard's samples fall in the dealt order without reading the rows
before it.
"""
from __future__ import annotations

import json
import logging
import re
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Iterator
from urllib.parse import unquote

from pipeline.storage import Store, is_uri, open_source

log = logging.getLogger("pairforge.source")

STRIDE = 4096          # rows between two checkpoints: a worker reads at most this many rows it skips
_CHUNK = 1 << 20


@dataclass
class SourceIndex:
    kind: str                        # demo | lines | parquet | images
    n_rows: int
    url: str | None = None           # source file (lines, parquet) or folder (images)
    fmt: str | None = None           # lines: txt | jsonl
    # checkpoints[i] = (row number, byte offset, line number, rows before it that name a task)
    checkpoints: list[tuple[int, int, int, int]] = field(default_factory=list)
    row_groups: list[int] = field(default_factory=list)       # parquet: rows per row group
    group_named: list[int] = field(default_factory=list)      # parquet: rows naming a task, per group
    names: list[str] = field(default_factory=list)            # images: sorted file names
    demo: list = field(default_factory=list)                  # demo: SourceRows
    source_tasks: set[str] = field(default_factory=set)       # tasks that source rows name themselves
    n_named: int = 0                                          # rows that name their own task
    cfg: dict = field(default_factory=dict)                   # the SourceConfig, as JSON
    # images: what was wrong with captions.jsonl (counts per kind + at most 5 examples), {} if nothing
    caption_issues: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    def rows(self, start: int, stop: int) -> Iterator:
        """SourceRows start … stop−1 (clipped to the source), captions cleaned and checked
        (``pipeline.captions``: a caption that tries to steer the LLM makes an error row)."""
        for r in self._raw_rows(start, stop):
            yield _checked(r)

    def _raw_rows(self, start: int, stop: int) -> Iterator:
        from pipeline.config import SourceConfig
        stop = min(stop, self.n_rows)
        if start >= stop:
            return
        cfg = SourceConfig.model_validate(self.cfg)
        if self.kind == "demo":
            yield from self.demo[start:stop]
        elif self.kind == "lines":
            yield from self._lines(cfg, start, stop)
        elif self.kind == "parquet":
            yield from self._parquet(cfg, start, stop)
        elif self.kind == "images":
            yield from self._images(cfg, start, stop)

    def task_rows_before(self, row: int) -> int:
        """How many source rows before ``row`` name their own task."""
        if self.kind == "demo":
            return sum(1 for r in self.demo[:row] if r.task)
        if self.kind == "parquet":
            # whole groups from the index; the rest of the row's own group from its task column
            n, first = 0, 0
            for g, size in enumerate(self.row_groups):
                if first + size > row:
                    if self.group_named[g] and row > first:
                        n += sum(bool(r.task) for r in self.rows(first, row))
                    return n
                n += self.group_named[g] if self.group_named else 0
                first += size
            return n
        cp = self._checkpoint(row)
        n = cp[3]
        for r in self.rows(cp[0], row):
            n += bool(r.task)
        return n

    def _checkpoint(self, row: int) -> tuple[int, int, int, int]:
        i = bisect_right([c[0] for c in self.checkpoints], row) - 1
        return self.checkpoints[max(i, 0)]

    def _lines(self, cfg, start: int, stop: int):
        from pipeline.sources import jsonl_row
        store, name = open_source(self.url)
        row, offset, line_no, _ = self._checkpoint(start)
        base = store.url()              # the file's folder: a path, or a URI that keeps its ?options
        with store.open_input(name) as f:
            f.seek(offset)
            for line in _iter_lines(f):
                if row >= stop:
                    return
                text = line.decode("utf-8", errors="replace")
                i = line_no
                line_no += 1
                if self.fmt == "jsonl":
                    if not text.strip():
                        continue
                    r = jsonl_row(text, f"{name}:{i}", cfg.caption_column, cfg.task_column, base)
                else:
                    from pipeline.sources import SourceRow
                    r = SourceRow(f"{name}:{i}", text)
                if row >= start:
                    yield r
                row += 1

    def _parquet(self, cfg, start: int, stop: int):
        import pyarrow.parquet as pq

        from pipeline.sources import SourceRow
        store, name = open_source(self.url)
        with store.open_input(name) as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            cols = [cfg.caption_column] + ([cfg.task_column] if cfg.task_column in names else [])
            has_img = cfg.image_column in names
            first = 0
            for g, n in enumerate(self.row_groups):
                if first + n <= start:
                    first += n
                    continue
                if first >= stop:
                    break
                t = pf.read_row_group(g, columns=cols).to_pylist()
                for j, r in enumerate(t):
                    i = first + j
                    if start <= i < stop:
                        ref = ({"kind": "parquet", "path": self.url, "row": i, "row_group": g, "group_row": j,
                                "column": cfg.image_column} if has_img else None)
                        yield SourceRow(f"{name}:{i}", r[cfg.caption_column], ref, r.get(cfg.task_column))
                first += n

    def _images(self, cfg, start: int, stop: int):
        from pipeline.sources import SourceRow
        folder = Store(self.url)
        captions = _folder_captions(self.url, cfg.caption_column, cfg.task_column)
        for name in self.names[start:stop]:
            if not _is_utf8(name):          # a local name that is not UTF-8 cannot be stored or matched
                sid = f"{PurePosixPath(folder.root).name}/{name}"
                yield SourceRow(sid.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), None,
                                error="bad_file_name: the file name is not valid UTF-8")
                continue
            known = captions.get(name)
            if known is not None and known.error:           # conflicting or broken captions.jsonl entries
                yield SourceRow(f"{PurePosixPath(folder.root).name}/{name}", None, error=known.error)
                continue
            side = name.rsplit(".", 1)[0] + ".txt"
            if known:
                cap = known.caption
            elif folder.exists(side):
                cap = folder.read_bytes(side).decode("utf-8", errors="replace").strip()
            else:
                cap = None
            yield SourceRow(f"{PurePosixPath(folder.root).name}/{name}", cap, {"kind": "file", "path": folder.url(name)},
                            known.task if known else None)


_CAPTIONS: dict = {}
_IMAGE_KEY = re.compile(rb'"image"\s*:\s*("(?:[^"\\]|\\.)*")')      # the "image" of a line that is not JSON


class FolderCaptions(dict):
    """File name → SourceRow from an image folder's captions.jsonl. A file named by two entries
    that disagree, or by a line that is not valid JSON, maps to a row with ``error`` set
    (``conflicting_captions`` / ``bad_source_row``) naming the line numbers (1-based), so that
    image is a counted reject instead of silently taking one of them. ``issues``: counts per kind
    (bad_lines, conflicts, no_image) and at most 5 examples; {} when the file is clean."""
    issues: dict


def _checked(r):
    """A source row with its caption cleaned; a caption that tries to steer the LLM → error row."""
    from pipeline.captions import clean_caption, injection_issue
    if r.error or not isinstance(r.caption, str):
        return r
    cap = clean_caption(r.caption)
    why = injection_issue(cap)
    if why:
        return replace(r, caption=cap, error=f"caption_injection: {why}")
    return r if cap == r.caption else replace(r, caption=cap)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _ref_name(path: str) -> str:
    return PurePosixPath(unquote(path.partition("?")[0]) if is_uri(path) else path).name


def _folder_captions(url: str, caption_col: str, task_col: str) -> FolderCaptions:
    """captions.jsonl of an image folder by file name, read once per worker process (see
    ``FolderCaptions``). Two entries for one file that agree (after caption cleaning) are one."""
    key = (url, caption_col, task_col)
    if key not in _CAPTIONS:
        from pipeline.captions import clean_caption
        from pipeline.sources import SourceRow, jsonl_row
        folder = Store(url)
        out, line_of, broken, conflicts = FolderCaptions(), {}, {}, {}
        counts, examples = Counter(), []

        def note(kind: str, msg: str) -> None:
            counts[kind] += 1
            if len(examples) < 5:
                examples.append(msg)

        if folder.exists("captions.jsonl"):
            with folder.open_input("captions.jsonl") as f:
                for i, line in enumerate(_iter_lines(f)):
                    text = line.decode("utf-8", errors="replace")
                    if not text.strip():
                        continue
                    r = jsonl_row(text, f"captions.jsonl:{i}", caption_col, task_col, folder.url())
                    if r.error:
                        note("bad_lines", f"captions.jsonl line {i + 1}: {r.error.partition(': ')[2]}")
                        m = _IMAGE_KEY.search(line)
                        try:
                            name = PurePosixPath(json.loads(m.group(1))).name if m else None
                        except ValueError:
                            name = None
                        if name:
                            broken.setdefault(name, i + 1)
                        continue
                    if not r.image_ref:
                        note("no_image", f"captions.jsonl line {i + 1}: no \"image\"")
                        continue
                    name = _ref_name(r.image_ref["path"])
                    if name not in out:
                        out[name], line_of[name] = r, i + 1
                    elif name not in conflicts and ((clean_caption(out[name].caption), out[name].task)
                                                    != (clean_caption(r.caption), r.task)):
                        conflicts[name] = (line_of[name], i + 1)
                        note("conflicts", f"captions.jsonl lines {line_of[name]} and {i + 1} disagree on {name!r}")
        for name, n in broken.items():
            out[name] = SourceRow(f"captions.jsonl:{n - 1}", None, error=f"bad_source_row: captions.jsonl line {n} "
                                  f"names this image but is not valid JSON")
        for name, (a, b) in conflicts.items():
            out[name] = SourceRow(f"captions.jsonl:{a - 1}", None, error=f"conflicting_captions: captions.jsonl "
                                  f"lines {a} and {b} give {name!r} different captions")
        out.issues = {**dict(counts), "examples": examples} if counts else {}
        _CAPTIONS.clear()
        _CAPTIONS[key] = out
    return _CAPTIONS[key]


def _iter_lines(f, with_offsets: bool = False) -> Iterator:
    """Lines of a binary stream without their line ending (\\n or \\r\\n); a last line without one
    counts too. With ``with_offsets``: (byte offset of the line, line)."""
    rest, at = b"", 0                      # at: offset of ``rest`` in the stream
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        data = rest + chunk
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            line = data[pos:nl - 1] if nl > pos and data[nl - 1:nl] == b"\r" else data[pos:nl]
            yield (at + pos, line) if with_offsets else line
            pos = nl + 1
        rest, at = data[pos:], at + pos
    if rest:
        line = rest[:-1] if rest.endswith(b"\r") else rest
        yield (at, line) if with_offsets else line


def build_index(cfg, tasks: set[str] | None = None) -> SourceIndex:
    """One streaming pass over the source; see the module doc. ``tasks``: the job's task names (the
    demo adds its sign photos only when the job runs the text task)."""
    c = cfg.model_dump(mode="json")
    limit = cfg.limit
    if cfg.kind == "demo":
        from pipeline.sources import demo_rows
        rows = list(demo_rows(tasks, cfg.demo_signs, cfg.demo_people))[:limit]
        return SourceIndex("demo", len(rows), demo=rows, source_tasks={r.task for r in rows if r.task},
                           n_named=sum(bool(r.task) for r in rows), cfg=c)
    path = str(cfg.path)
    if cfg.kind == "images":
        folder = Store(path)
        if not folder.exists():
            raise FileNotFoundError(f"source.path {path!r} does not exist")
        if not folder.is_dir():
            raise ValueError(f"source.path {path!r} must be a folder for kind 'images'")
        all_names = [n for n in folder.list() if n != "captions.jsonl" and not n.endswith(".txt") and not n.startswith(".")]
        names = all_names[:limit] if limit is not None else all_names
        caps = _folder_captions(folder.url(), cfg.caption_column, cfg.task_column)
        named = [caps[n].task for n in names if n in caps and caps[n].task]
        listed = set(all_names)
        unmatched = sum(n not in listed for n in caps)          # entries for files not in the folder
        issues = {k: v for k, v in caps.issues.items() if k != "examples"} | ({"unmatched": unmatched} if unmatched else {})
        if issues:
            issues["examples"] = caps.issues.get("examples", [])
        if issues:
            log.warning("%s/captions.jsonl: %s (e.g. %s)", path,
                        ", ".join(f"{k} {v}" for k, v in issues.items() if k != "examples"),
                        "; ".join(issues["examples"][:3]) or "-")
        return SourceIndex("images", len(names), url=folder.url(), names=names, source_tasks=set(named),
                           n_named=len(named), cfg=c, caption_issues=issues)
    store, name = open_source(path)
    if not store.exists(name):
        raise FileNotFoundError(f"source.path {path!r} does not exist")
    url = store.url(name)
    if cfg.kind == "parquet" or name.endswith(".parquet"):
        return _index_parquet(url, store, name, cfg, c)
    return _index_lines(url, store, name, cfg, c)


def _index_lines(url, store, name, cfg, c) -> SourceIndex:
    jsonl = name.endswith(".jsonl")
    task_key = json.dumps(cfg.task_column).encode()           # '"task"': only such lines are parsed
    checkpoints, row, named, tasks = [], 0, 0, set()
    with store.open_input(name) as f:
        for line_no, (offset, line) in enumerate(_iter_lines(f, with_offsets=True)):
            if jsonl and not line.strip():
                continue                                      # blank .jsonl lines are no rows
            if cfg.limit is not None and row >= cfg.limit:
                break
            if row % STRIDE == 0:
                checkpoints.append((row, offset, line_no, named))
            if jsonl and task_key in line:
                try:
                    t = json.loads(line).get(cfg.task_column)
                except (ValueError, AttributeError):
                    t = None
                if t:
                    named += 1
                    tasks.add(str(t))
            row += 1
    return SourceIndex("lines", row, url=url, fmt="jsonl" if jsonl else "txt", checkpoints=checkpoints,
                       source_tasks=tasks, n_named=named, cfg=c)


def _index_parquet(url, store, name, cfg, c) -> SourceIndex:
    import pyarrow.parquet as pq
    with store.open_input(name) as fh:
        pf = pq.ParquetFile(fh)
        if cfg.caption_column not in pf.schema_arrow.names:
            raise ValueError(f"{url}: no caption column {cfg.caption_column!r} (columns: {pf.schema_arrow.names})")
        groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        n = sum(groups) if cfg.limit is None else min(sum(groups), cfg.limit)
        tasks, per_group, first = set(), [0] * len(groups), 0
        if cfg.task_column in pf.schema_arrow.names:
            for g in range(len(groups)):
                col = pf.read_row_group(g, columns=[cfg.task_column]).column(0).to_pylist()[: max(0, n - first)]
                first += groups[g]
                per_group[g] = sum(bool(t) for t in col)
                tasks.update(str(t) for t in col if t)
    return SourceIndex("parquet", n, url=url, row_groups=groups, group_named=per_group, source_tasks=tasks,
                       n_named=sum(per_group), cfg=c)
