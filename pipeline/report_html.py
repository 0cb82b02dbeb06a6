"""`pairforge stats OUT --html FILE`: one self-contained HTML page with the statistics and
thumbnails of accepted and rejected pairs per task (images inlined, so the file can be mailed).

Reads only what it shows: the small task/status columns of the first shards, then the row groups
holding the chosen rows, and it stops at the first shard by which every task has its quota. Every
string from the data (instructions, reasons, ids, task names, the output path) is HTML-escaped."""
from __future__ import annotations

import base64
import html
import io
import json
import posixpath
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.shards import Manifest, as_store
from pipeline.stats import compute_stats, format_stats

COLS = ["id", "task", "instruction", "input_caption", "input_image", "output_image", "status",
        "reject_stage", "reject_reason", "scores"]


def _thumb(img: dict | None, side: int = 160) -> str:
    if not img or not img.get("bytes"):
        return '<div class="none">—</div>'
    from PIL import Image
    im = Image.open(io.BytesIO(img["bytes"])).convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _card(r: dict) -> str:
    scores = ", ".join(f"{k} {v:.3f}" for k, v in (r["scores"] or {}).items() if v is not None)
    reason = f"{r['reject_stage']}: {r['reject_reason']}"
    why = "" if r["status"] == "accepted" else f'<div class="why">{html.escape(reason)}</div>'
    return (f'<div class="card">{_thumb(r["input_image"])}{_thumb(r["output_image"])}'
            f'<div class="ins">{html.escape(r["instruction"] or "(no instruction)")}</div>{why}'
            f'<div class="meta">{html.escape(scores)}<br><code>{html.escape((r["id"] or "")[:12])}</code></div></div>')


def _pick_cards(store, stats: dict, per_task: int) -> dict[tuple[str, str], list[str]]:
    """Cards of the first ``per_task`` accepted and rejected rows of every task, in shard order."""
    need = {(task, status): min(per_task, t[status]) for task, t in stats["tasks"].items()
            for status in ("accepted", "rejected")}
    cards: dict = defaultdict(list)
    for _, e in Manifest(store).iter_entries():
        if e["rejected"] and "rejects" not in e["files"]:    # rejects are not written: none to show
            need = {key: n if key[1] == "accepted" else 0 for key, n in need.items()}
        if not any(need.values()):
            break
        for sub, status, in_file in (("data", "accepted", e["tasks_accepted"]),
                                     ("rejects", "rejected", e["tasks_rejected"])):
            f = e["files"].get(sub)
            if f and any(need.get((t, status)) for t in in_file):   # the record says which tasks it holds
                _take_rows(store, f["path"], need, cards)
    return cards


def _take_rows(store, path: str, need: dict, cards: dict) -> None:
    """The rows of one file that ``need`` still asks for, read row group by row group."""
    with store.open_input(path) as fh:
        pf = pq.ParquetFile(fh)
        small = pf.read(columns=["task", "status"])
        wanted = []
        for i, key in enumerate(zip(small.column("task").to_pylist(), small.column("status").to_pylist())):
            if need.get(key, 0) > 0:
                need[key] -= 1
                wanted.append(i)
        start = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            local = [i - start for i in wanted if start <= i < start + n]
            if local:
                for r in pf.read_row_group(g, columns=COLS).take(local).to_pylist():
                    cards[(r["task"], r["status"])].append(_card(r))
            start += n


def write_html(out, dest: str | Path, per_task: int = 12) -> Path:
    store = as_store(out)
    stats = compute_stats(store)
    cards = _pick_cards(store, stats, per_task)
    parts = [f"<h1>pairforge: {html.escape(stats['output'])}</h1><pre>{html.escape(format_stats(stats))}</pre>"]
    for task in stats["tasks"]:
        for status in ("accepted", "rejected"):
            sel = cards.get((task, status))
            if sel:
                parts.append(f"<h2>{html.escape(task)}: {status} (first {len(sel)})</h2><div class='grid'>"
                             + "".join(sel) + "</div>")
    css = ("body{font-family:sans-serif;margin:2em}.grid{display:flex;flex-wrap:wrap;gap:12px}"
           ".card{width:340px;border:1px solid #ccc;padding:6px}.card img{width:160px;margin-right:4px}"
           ".ins{font-weight:bold;margin:4px 0}.why{color:#b00}.meta{color:#555;font-size:12px}")
    name = posixpath.basename(store.root.rstrip("/"))
    # inside <script> entities are not decoded: escape '<' the JSON way, so the block stays valid
    # JSON and no string in it can close the element
    data = json.dumps(stats).replace("<", "\\u003c")
    dest = Path(dest)
    dest.write_text(f"<!doctype html><meta charset='utf-8'><title>pairforge {html.escape(name)}</title>"
                    f"<style>{css}</style>" + "\n".join(parts) + f"<script type='application/json' id='stats'>"
                    f"{data}</script>", encoding="utf-8")
    return dest
