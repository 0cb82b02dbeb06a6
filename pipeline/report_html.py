"""`pairforge stats OUT --html FILE`: one self-contained HTML page (images inlined, charts as inline
SVG, no script, no external CSS or fonts), so the file can be mailed and opened anywhere:

  * the funnel per task: samples that reached each stage and survived it (pipeline/funnel.py, from
    the rows' stage_times; outputs written before rows had them: from the reject reasons);
  * score histograms per task with the thresholds that judged them drawn (the job's filter rules,
    calibrated quantile thresholds from calibration.json, the minimum-change floors);
  * a sample of accepted pairs per task: input, output with the edit mask overlaid, instruction;
  * candidate strips: for a few samples, every candidate with its scores and verdict, the kept one
    marked (images from candidates/ when the job kept them, output.keep_candidates: all; otherwise
    the scores alone);
  * reject reasons per task, each linked to examples of it further down (anchors).

Reads only what it shows: the statistics' small columns (as `pairforge stats`), then for the sample
the small task/status/reason columns of the first shards and the row groups holding the chosen rows;
it stops at the first shard by which every quota is met. Every string from the data (instructions,
reasons, ids, task names, the output path) is HTML-escaped."""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import posixpath
import re
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.shards import Manifest, as_store
from pipeline.stats import compute_stats, format_stats

COLS = ["id", "sample_index", "task", "instruction", "input_image", "output_image", "mask", "status",
        "reject_stage", "reject_reason", "reject_detail", "scores", "provenance.candidates"]
SMALL = ["task", "status", "reject_stage", "reject_reason"]
CAND_COLS = ["sample_index", "candidate", "output_image"]
BINS = 24
esc = html.escape


# ------------------------------------------------------------------------------------ images

def _jpeg(im, side: int) -> str:
    im = im.convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="">'


def _open(img: dict | None):
    if not img or not img.get("bytes"):
        return None
    from PIL import Image
    return Image.open(io.BytesIO(img["bytes"]))


def _thumb(img: dict | None, side: int = 160) -> str:
    im = _open(img)
    return '<div class="none">—</div>' if im is None else _jpeg(im, side)


def _overlay(img: dict | None, mask: dict | None, side: int = 160) -> str:
    """The output with the edit mask tinted red over it (the mask as stored: white = edited)."""
    from PIL import Image
    im, m = _open(img), _open(mask)
    if im is None:
        return '<div class="none">—</div>'
    if m is None:
        return _jpeg(im, side)
    im = im.convert("RGB")
    alpha = m.convert("L").resize(im.size).point(lambda v: int(v * 0.45))
    return _jpeg(Image.composite(Image.new("RGB", im.size, (230, 30, 30)), im, alpha), side)


# ------------------------------------------------------------------------------------ charts

def _funnel(stats: dict) -> tuple[dict, str]:
    """Per task [{stage, reached, rejected, survived}] and where it came from. The stage_times funnel
    when the rows had stage times (an output whose rows carry none, written before they existed or
    by a tool, gives a funnel with rejects at stages nothing reached: then the reject reasons')."""
    fun = stats.get("funnel") or {}
    if fun and all(r["survived"] >= 0 for rows in fun.values() for r in rows):
        return fun, "stage_times"
    from pipeline.funnel import stage_order
    order = {s: i for i, s in enumerate(stage_order())}
    out = {}
    for task, t in stats["tasks"].items():
        per_stage = defaultdict(int)
        for reason, n in t["reject_reasons"].items():
            per_stage[reason.split(":", 1)[0]] += n
        left, rows = t["samples"], []
        for s in sorted(per_stage, key=lambda s: (order.get(s, len(order)), s)):
            rows.append({"stage": s, "reached": left, "rejected": per_stage[s], "survived": left - per_stage[s]})
            left -= per_stage[s]
        out[task] = rows
    return out, "reject reasons"


def _funnel_svg(rows: list[dict], accepted: int) -> str:
    W, bar, label_w = 520, 16, 130
    top = max([r["reached"] for r in rows] + [accepted, 1])
    h = (len(rows) + 1) * (bar + 6) + 4
    parts = [f'<svg class="chart" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img">']
    y = 2
    for r in rows + [{"stage": "accepted", "reached": accepted, "survived": accepted}]:
        wr = (W - label_w - 90) * max(r["reached"], 0) / top
        ws = (W - label_w - 90) * max(r["survived"], 0) / top
        parts.append(f'<text x="0" y="{y + 12}">{esc(r["stage"])}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{wr:.1f}" height="{bar}" fill="#f3c1c1"/>'
                     f'<rect x="{label_w}" y="{y}" width="{ws:.1f}" height="{bar}" fill="#3a7bd5"/>'
                     f'<text x="{label_w + wr + 4:.1f}" y="{y + 12}">{r["reached"]}→{r["survived"]}</text>')
        y += bar + 6
    return "".join(parts) + "</svg>"


def _hist_svg(metric: str, h: dict, lines: list[tuple[str, float]]) -> str:
    """Bars of a histogram over [lo, hi]; each threshold a dashed red line with its label (the axis
    widened to show a threshold outside the data)."""
    W, H, pad = 250, 120, 18
    xs = [h["lo"], h["hi"]] + [v for _, v in lines]
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.03 * span, hi + 0.03 * span

    def x(v: float) -> float:
        return (v - lo) / (hi - lo) * W

    top = max(h["counts"] + [1])
    bw = (h["hi"] - h["lo"]) / len(h["counts"])
    single = h["hi"] - h["lo"] < 1e-6               # one value (or one sample): one bar, 6 px wide

    def anchor(v: float) -> str:
        return "start" if x(v) < 30 else "end" if x(v) > W - 30 else "middle"

    parts = [f'<svg class="chart" width="{W}" height="{H + pad}" viewBox="0 0 {W} {H + pad}" role="img">'
             f'<title>{esc(metric)}</title>']
    for i, c in enumerate(h["counts"]):
        x0, x1 = x(h["lo"] + i * bw), x(h["lo"] + (i + 1) * bw)
        if single:
            x0, x1 = min(max(x(h["lo"]) - 3, 0), W - 6), min(max(x(h["lo"]) - 3, 0), W - 6) + 6.5
        bh = (H - 14) * c / top
        parts.append(f'<rect x="{x0:.1f}" y="{H - bh:.1f}" width="{max(x1 - x0 - 0.5, 0.8):.1f}" '
                     f'height="{max(bh, 0.0):.1f}" fill="#3a7bd5"/>')
    parts.append(f'<line x1="0" y1="{H}" x2="{W}" y2="{H}" stroke="#444"/>'
                 f'<text x="{x(h["lo"]):.1f}" y="{H + 13}" text-anchor="{anchor(h["lo"])}">{h["lo"]:.3g}</text>'
                 + ("" if single else
                    f'<text x="{x(h["hi"]):.1f}" y="{H + 13}" text-anchor="{anchor(h["hi"])}">{h["hi"]:.3g}</text>'))
    for i, (name, v) in enumerate(lines):
        parts.append(f'<line class="thr" x1="{x(v):.1f}" y1="0" x2="{x(v):.1f}" y2="{H}" stroke="#d00" '
                     f'stroke-width="2" stroke-dasharray="4 3"/>'
                     f'<text x="{min(x(v) + 3, W - 60):.1f}" y="{11 + 12 * i}" fill="#d00">{esc(name)} {v:.3g}</text>')
    return "".join(parts) + "</svg>"


def thresholds(store) -> tuple[dict, bool]:
    """task → metric → [(label, value)] from the job's own config (job.resolved.yaml) and the
    quantile thresholds it calibrated (calibration.json); and whether the filters were on.
    An output without a readable job file gives none (the histograms are drawn without lines)."""
    import yaml

    from pipeline.config import JobConfig
    from tasks import TASK_NAMES
    try:
        cfg = JobConfig.model_validate(yaml.safe_load(store.read_text("job.resolved.yaml")) or {})
    except Exception:              # an output of another version, or none: no lines, not an error
        return {}, True
    fc = cfg.filters
    if store.exists("calibration.json"):
        try:
            fc.calibrated = store.read_json("calibration.json").get("thresholds") or fc.calibrated
        except (ValueError, OSError):
            pass
    out: dict = defaultdict(dict)
    for task in TASK_NAMES:
        for metric in fc.resolved_rules(task):
            t = fc.threshold(task, metric)
            if t is not None:
                out[task][metric] = [(k, v) for k, v in zip(("min", "max"), t) if v is not None]
        floor = fc.change_floor(task)
        if floor is not None:
            out[task]["change_l1"] = [("min", floor.min_l1)]
            out[task]["change_frac"] = [("min", floor.min_frac)]
    out["color"]["clipped_frac"] = [("max", fc.max_clipped_frac)]
    return dict(out), fc.enabled


# ------------------------------------------------------------------------------------ rows

def _anchor(task: str, reason: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", f"{task}-{reason}".lower()).strip("-")[:60]
    digest = hashlib.sha1((task + "\x1f" + reason).encode()).hexdigest()[:6]   # distinct slugs stay distinct
    return f"r-{slug}-{digest}"


def _key(r: dict) -> tuple:
    if r["status"] == "accepted":
        return (r["task"], "accepted", None)
    return (r["task"], "rejected", f"{r['reject_stage']}:{r['reject_reason']}")


def _pick_rows(store, stats: dict, per_task: int, per_reason: int) -> dict[tuple, list[dict]]:
    """The first ``per_task`` accepted rows of every task and ``per_reason`` rejected rows of every
    (task, reason), in shard order: full rows (images included) of only those."""
    need = {}
    for task, t in stats["tasks"].items():
        need[(task, "accepted", None)] = min(per_task, t["accepted"])
        for reason, n in t["reject_reasons"].items():
            need[(task, "rejected", reason)] = min(per_reason, n)
    rows: dict = defaultdict(list)
    for _, e in Manifest(store).iter_entries():
        if e["rejected"] and "rejects" not in e["files"]:    # rejects are not written: none to show
            need = {key: n if key[1] == "accepted" else 0 for key, n in need.items()}
        if not any(need.values()):
            break
        for sub, in_file in (("data", e["tasks_accepted"]), ("rejects", e["tasks_rejected"])):
            f = e["files"].get(sub)
            if not f:
                continue
            if sub == "data" and not any(need.get((t, "accepted", None)) for t in in_file):
                continue
            if sub == "rejects" and not any(need.get((t, "rejected", r)) for t in in_file for r in e["reject_reasons"]):
                continue
            _take_rows(store, f["path"], need, rows)
    return rows


def _take_rows(store, path: str, need: dict, out: dict) -> None:
    """The rows of one file that ``need`` still asks for, read row group by row group."""
    with store.open_input(path) as fh:
        pf = pq.ParquetFile(fh)
        small = pf.read(columns=SMALL).to_pylist()
        wanted = []
        for i, r in enumerate(small):
            key = _key(r)
            if need.get(key, 0) > 0:
                need[key] -= 1
                wanted.append(i)
        _read_rows(pf, wanted, COLS, lambda r: out[_key(r)].append(r))


def _read_rows(pf, wanted: list[int], columns: list[str], sink) -> None:
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        local = [i - start for i in wanted if start <= i < start + n]
        if local:
            for r in pf.read_row_group(g, columns=columns).take(local).to_pylist():
                sink(r)
        start += n


def _stored_candidates(store, rows: list[dict]) -> dict[tuple[int, int], dict]:
    """(sample index, candidate) → output image of the stored (not kept) candidates of ``rows``,
    read from candidates/ of their shards, only the row groups holding them."""
    m = Manifest(store)
    n = m.data["rows_per_shard"]
    by_shard = defaultdict(set)
    for r in rows:
        by_shard[r["sample_index"] // n].add(r["sample_index"])
    out = {}
    for k, samples in sorted(by_shard.items()):
        e = m.entry(k)
        f = (e or {}).get("files", {}).get("candidates")
        if not f:
            continue
        with store.open_input(f["path"]) as fh:
            pf = pq.ParquetFile(fh)
            idx = pf.read(columns=["sample_index"]).column("sample_index").to_pylist()
            wanted = [i for i, s in enumerate(idx) if s in samples]
            _read_rows(pf, wanted, CAND_COLS, lambda c: out.__setitem__((c["sample_index"], c["candidate"]), c["output_image"]))
    return out


# ------------------------------------------------------------------------------------ page parts

def _scores_text(scores: dict | None) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in (scores or {}).items() if isinstance(v, (int, float)))


def _card(r: dict) -> str:
    why = ""
    if r["status"] != "accepted":
        reason = f"{r['reject_stage']}: {r['reject_reason']}"
        why = f'<div class="why">{esc(reason)}</div>'
        if r.get("reject_detail"):
            why += f'<div class="meta">{esc(r["reject_detail"][:200])}</div>'
    return (f'<div class="card">{_thumb(r["input_image"])}{_overlay(r["output_image"], r.get("mask"))}'
            f'<div class="ins">{esc(r["instruction"] or "(no instruction)")}</div>{why}'
            f'<div class="meta">{esc(_scores_text(r["scores"]))}<br><code>{esc((r["id"] or "")[:12])}</code></div></div>')


def _strip(r: dict, stored: dict) -> str | None:
    """Every candidate of one sample: image (kept one from the row, others from candidates/), its
    verdict and scores; the kept one marked. None for a sample with one candidate."""
    rep = json.loads((r.get("provenance") or {}).get("candidates") or "{}")
    cands = rep.get("candidates") or []
    if len(cands) < 2:
        return None
    sel, by = rep.get("selected"), rep.get("select_by", "")
    tiles = []
    for i, c in enumerate(cands):
        kept = i == sel
        img = r["output_image"] if kept else stored.get((r["sample_index"], i))
        pic = _thumb(img, 120) if img else '<div class="none small">scores only</div>'
        verdict = "passed" if c.get("keep") else f"failed: {c.get('reason')}"
        sc = c.get("scores") or {}
        head = f"#{i} {'KEPT · ' if kept else ''}{by} {sc[by]:.3f}" if by in sc else f"#{i}{' KEPT' if kept else ''}"
        tiles.append(f'<div class="cand{" kept" if kept else ""}">{pic}<div class="meta"><b>{esc(head)}</b><br>'
                     f'{esc(verdict)}<br>{esc(_scores_text(sc))}</div></div>')
    return (f'<div class="strip"><div class="ins">{esc(r["task"])} · {esc(r["instruction"] or "")} '
            f'<code>{esc((r["id"] or "")[:12])}</code> ({esc(r["status"])})</div>'
            f'<div class="row">{"".join(tiles)}</div></div>')


CSS = ("body{font-family:sans-serif;margin:2em;color:#222}nav a{margin-right:1em}"
       ".grid{display:flex;flex-wrap:wrap;gap:12px}.card{width:340px;border:1px solid #ccc;padding:6px}"
       ".card img{width:160px;margin-right:4px}.ins{font-weight:bold;margin:4px 0}.why{color:#b00}"
       ".meta{color:#555;font-size:12px}.none{display:inline-block;width:160px;height:100px;background:#eee;"
       "text-align:center;line-height:100px;color:#888}.none.small{width:120px;font-size:12px}"
       "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}"
       ".chart text{font-size:11px;font-family:sans-serif}.hists{display:flex;flex-wrap:wrap;gap:16px}"
       ".strip{margin:10px 0;border-top:1px solid #ddd}.row{display:flex;gap:8px;overflow-x:auto}"
       ".cand{width:130px;border:2px solid transparent;padding:3px}.cand img{width:120px}"
       ".cand.kept{border-color:#2a2;background:#efe}.off{color:#b60}")


def write_html(out, dest: str | Path, per_task: int = 12, per_reason: int = 4, strips: int = 2) -> Path:
    """``per_task`` accepted pairs per task, ``per_reason`` examples per (task, reject reason),
    ``strips`` candidate strips per task: the page's size is fixed by these, not by the job."""
    store = as_store(out)
    stats = compute_stats(store, bins=BINS)
    picked = _pick_rows(store, stats, per_task, per_reason)
    thr, filters_on = thresholds(store)
    name = posixpath.basename(store.root.rstrip("/"))
    P = [f"<h1>pairforge report: {esc(name)}</h1>",
         '<nav><a href="#funnel">funnel</a><a href="#scores">scores</a><a href="#pairs">pairs</a>'
         '<a href="#candidates">candidates</a><a href="#rejects">reject reasons</a><a href="#stats">all statistics</a></nav>',
         f"<p>{esc(stats['output'])} · job <b>{esc(str(stats['job_name']))}</b> · shards "
         f"{stats['shards_committed']}/{stats['shards_total']}{'' if stats['complete'] else ' (INCOMPLETE)'} · "
         f"samples {stats['samples']} · accepted {stats['accepted']} ({stats['acceptance']:.1%})</p>"]

    fun, source = _funnel(stats)
    P.append(f'<h2 id="funnel">Funnel per task</h2><p class="meta">reached → survived per stage '
             f'(from {esc(source)}); light: rejected at that stage</p><div class="hists">')
    for task, rows in fun.items():
        P.append(f"<div><h3>{esc(task)}</h3>{_funnel_svg(rows, stats['tasks'].get(task, {}).get('accepted', 0))}</div>")
    P.append("</div>")

    P.append('<h2 id="scores">Scores per task</h2><p class="meta">every sample that reached the filters '
             '(the kept candidate\'s scores); dashed red: the threshold that judges the score'
             + ("" if filters_on else ' — <span class="off">filters were off in this job: nothing was judged</span>')
             + "</p>")
    for task, t in stats["tasks"].items():
        hs = t.get("histograms") or {}
        if hs:
            P.append(f"<h3>{esc(task)}</h3><div class='hists'>")
            for metric, h in hs.items():
                P.append(f"<div><div class='meta'>{esc(metric)} (n={h['n']})</div>"
                         f"{_hist_svg(metric, h, thr.get(task, {}).get(metric, []))}</div>")
            P.append("</div>")

    P.append('<h2 id="pairs">Pairs</h2><p class="meta">input, then output with the edit mask in red; '
             f"the first {per_task} accepted pairs of each task</p>")
    for task in stats["tasks"]:
        sel = picked.get((task, "accepted", None))
        if sel:
            P.append(f"<h3>{esc(task)} ({len(sel)} shown)</h3><div class='grid'>" + "".join(map(_card, sel)) + "</div>")

    strip_rows = []
    for task in stats["tasks"]:
        pool = picked.get((task, "accepted", None), []) + [r for k, v in picked.items()
                                                           if k[0] == task and k[1] == "rejected" for r in v]
        strip_rows += [r for r in pool if len(json.loads((r.get("provenance") or {}).get("candidates")
                                                         or "{}").get("candidates") or []) > 1][:strips]
    stored = _stored_candidates(store, strip_rows) if strip_rows else {}
    P.append('<h2 id="candidates">Candidates</h2><p class="meta">every candidate of a sample, the kept one in '
             'green; images of the others when the job kept them (output.keep_candidates: all)</p>')
    made = [s for s in (_strip(r, stored) for r in strip_rows) if s]
    P.append("".join(made) or "<p>No sample in the report had more than one candidate.</p>")

    P.append('<h2 id="rejects">Reject reasons</h2><table><tr><th>task</th><th>reason</th><th>samples</th></tr>')
    examples = []
    for task, t in stats["tasks"].items():
        for reason, n in t["reject_reasons"].items():
            sel = picked.get((task, "rejected", reason))
            a = _anchor(task, reason)
            label = f'<a href="#{a}">{esc(reason)}</a>' if sel else esc(reason)
            P.append(f"<tr><td>{esc(task)}</td><td>{label}</td><td>{n}</td></tr>")
            if sel:
                examples.append(f'<h3 id="{a}">{esc(task)}: {esc(reason)} ({len(sel)} of {n})</h3>'
                                f"<div class='grid'>{''.join(map(_card, sel))}</div>")
    P.append("</table>" + "".join(examples))
    P.append(f'<h2 id="stats">All statistics</h2><pre>{esc(format_stats(stats))}</pre>')
    # inside <script> entities are not decoded: escape '<' the JSON way, so the block stays valid
    # JSON and no string in it can close the element
    data = json.dumps(stats).replace("<", "\\u003c")
    dest = Path(dest)
    dest.write_text(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pairforge {esc(name)}</title>"
                    f"<style>{CSS}</style></head><body>" + "\n".join(P)
                    + f"<script type='application/json' id='stats'>{data}</script></body></html>", encoding="utf-8")
    return dest
