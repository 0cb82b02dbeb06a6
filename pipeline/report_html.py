"""`pairforge stats OUT --html FILE`: one self-contained HTML page with the statistics and
thumbnails of accepted and rejected pairs per task (images inlined, so the file can be mailed)."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from pipeline.shards import read_table
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
            f'<div class="meta">{html.escape(scores)}<br><code>{r["id"][:12]}</code></div></div>')


def write_html(out: str | Path, dest: str | Path, per_task: int = 12) -> Path:
    out = Path(out)
    stats = compute_stats(out)
    rows = read_table(out, "data", COLS).to_pylist() + read_table(out, "rejects", COLS).to_pylist()
    parts = [f"<h1>pairforge: {html.escape(str(out))}</h1><pre>{html.escape(format_stats(stats))}</pre>"]
    for task in stats["tasks"]:
        for status in ("accepted", "rejected"):
            sel = [r for r in rows if r["task"] == task and r["status"] == status][:per_task]
            if sel:
                parts.append(f"<h2>{task}: {status} (first {len(sel)})</h2><div class='grid'>"
                             + "".join(_card(r) for r in sel) + "</div>")
    css = ("body{font-family:sans-serif;margin:2em}.grid{display:flex;flex-wrap:wrap;gap:12px}"
           ".card{width:340px;border:1px solid #ccc;padding:6px}.card img{width:160px;margin-right:4px}"
           ".ins{font-weight:bold;margin:4px 0}.why{color:#b00}.meta{color:#555;font-size:12px}")
    dest = Path(dest)
    dest.write_text(f"<!doctype html><meta charset='utf-8'><title>pairforge {html.escape(out.name)}</title>"
                    f"<style>{css}</style>" + "\n".join(parts) + f"<script type='application/json' id='stats'>"
                    f"{html.escape(json.dumps(stats))}</script>")
    return dest
