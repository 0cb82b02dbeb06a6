"""Benchmark of the text generator with the real EasyOCR (a script, not a test).

    .venv/bin/python tests/bench_text.py --n 100 [--out bench_text.json]

For each of N demo sign photos (pipeline/text/signs.py: a real scikit-image photo with a sign whose
text we know), the generator makes a replace pair (new text from signs.NEW_TEXTS, a font
description and a colour name drawn per sample) and a remove pair, then OCR checks the outputs:

  replace  OCR reads the new text in the output (crop around the mask; pipeline.text.checks)
  remove   OCR finds no text in the masked region of the output; reported strict (any OCR box,
           whatever its confidence) and at text.min_confidence

A generator reject (the sign text not read in the photo, text too long for the box) counts as a
failure of that pair. Prints the rates and the reasons; --out writes every sample as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FONTS = ("bold sans-serif", "elegant serif", "handwritten script", "typewriter", "tall condensed capitals",
         "chunky retro display", "italic serif", "plain sans", "highway sans-serif", "bold block letters")
COLORS = ("red", "black", "white", "navy blue", "gold", "green", "yellow", "dark grey", "orange", "purple",
          "pink", "brown", "sky blue", "teal")


def run(n: int, start: int = 0, inpaint_method: str = "telea", log=print, ocr=None) -> dict:
    """``ocr``: an OcrReader to reuse (the test shares one); None loads EasyOCR here."""
    from pipeline.sources import decode_image
    from pipeline.text.checks import around_mask, check_pair, text_in_mask
    from pipeline.text.config import TextConfig
    from pipeline.text.editor import TextEditor
    from pipeline.text.signs import NEW_TEXTS, sign_sample
    from tasks.base import SampleReject

    cfg = TextConfig(inpaint_method=inpaint_method)
    t0 = time.time()
    ed = TextEditor(cfg, ocr=ocr)
    load_s = time.time() - t0
    rows, t1 = [], time.time()
    for k in range(start, start + n):
        s = sign_sample(k)
        img = decode_image(s.image, 512)          # what the load stage hands the text stage
        rng = np.random.default_rng([k, 0x7E47])
        boxes = ed.ocr.read(img)
        new = NEW_TEXTS[int(rng.integers(len(NEW_TEXTS)))]
        while new.casefold() == s.text.casefold():
            new = NEW_TEXTS[int(rng.integers(len(NEW_TEXTS)))]
        font, color = FONTS[int(rng.integers(len(FONTS)))], COLORS[int(rng.integers(len(COLORS)))]
        row = {"index": k, "photo": s.photo, "text": s.text, "new_text": new, "font": font, "color": color,
               "angle": round(s.angle, 2)}
        # replace
        try:
            p = ed.make_pair(img, {"old_text": s.text, "new_text": new, "font": font, "color": color},
                             {"op": "replace"}, rng, ocr_boxes=boxes)
            reason, detail = check_pair(ed.ocr, "replace", p.input_image, p.output_image, p.mask, new,
                                        match_threshold=cfg.match_threshold, min_confidence=cfg.min_confidence)
            row.update(replace_ok=reason is None, replace_reason=reason, replace_detail=detail,
                       font_file=Path(p.params["font"]["path"]).name, font_size=p.params["font"]["size"],
                       color_source=p.params["color"]["source"])
        except SampleReject as e:
            row.update(replace_ok=False, replace_reason=f"reject:{e.reason}", replace_detail=e.detail)
        # remove: one OCR pass at confidence 0 gives both the strict and the configured verdict
        try:
            p = ed.make_pair(img, {"old_text": s.text, "new_text": ""}, {"op": "remove"}, rng, ocr_boxes=boxes)
            ys, xs = around_mask(p.mask)
            left = text_in_mask(ed.ocr.read(p.output_image[ys, xs], min_confidence=0.0), p.mask[ys, xs])
            row.update(remove_ok=not left, remove_ok_at_min_conf=not [b for b in left if b.conf >= cfg.min_confidence],
                       remove_left=[(b.text, round(b.conf, 3)) for b in left])
        except SampleReject as e:
            row.update(remove_ok=False, remove_ok_at_min_conf=False, remove_reason=f"reject:{e.reason}",
                       remove_detail=e.detail)
        rows.append(row)
        log(f"[{k - start + 1}/{n}] {s.text!r}->{new!r} replace={row['replace_ok']} remove={row['remove_ok']} "
            f"({time.time() - t1:.0f}s)")
    m = len(rows)
    summary = {
        "samples": m, "ocr_load_s": round(load_s, 1), "seconds": round(time.time() - t1, 1),
        "inpaint_method": inpaint_method,
        "replace_new_text_read": sum(r["replace_ok"] for r in rows) / m,
        "remove_no_text_in_mask_strict": sum(r["remove_ok"] for r in rows) / m,
        "remove_no_text_in_mask_at_min_conf": sum(r["remove_ok_at_min_conf"] for r in rows) / m,
        "replace_failures": dict(Counter(r["replace_reason"] for r in rows if not r["replace_ok"])),
        "color_sources": dict(Counter(r.get("color_source") for r in rows if r.get("color_source"))),
    }
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="number of demo sign photos")
    ap.add_argument("--start", type=int, default=0, help="first sign index")
    ap.add_argument("--inpaint-method", choices=("telea", "ns"), default="telea")
    ap.add_argument("--out", help="write summary and per-sample rows as JSON here")
    a = ap.parse_args()
    res = run(a.n, a.start, a.inpaint_method, log=lambda s: print(s, file=sys.stderr, flush=True))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
