"""The HTML report (`pairforge stats OUT --html FILE`) opened in a real headless browser: Debian's
chromium driven by Playwright (deploy/setup.sh installs both; Playwright's own browser download is
never used). The input is a small committed output written with the real shard writer
(tests/test_candidates.py), once with the candidates kept and once without.

Asserts what a reader would see break: the page loads without console errors, every <img> decodes
(naturalWidth > 0), every chart is an SVG with a nonzero bounding box and has bars, the thresholds
are drawn, and every in-page link (reject reason → examples) has its target."""
from __future__ import annotations

import os

import shutil

import pytest

from tests.test_candidates import _rows, _write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """() => {
  const imgs = [...document.images];
  const svgs = [...document.querySelectorAll('svg.chart')];
  const links = [...document.querySelectorAll('a[href^="#"]')];
  return {
    imgs: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 40)),
    svgs: svgs.length,
    flat: svgs.filter(s => { const b = s.getBBox(); return !(b.width > 0 && b.height > 0); }).length,
    bars: svgs.filter(s => [...s.querySelectorAll('rect')].some(r => r.getBBox().width > 0)).length,
    thresholds: document.querySelectorAll('svg.chart line.thr').length,
    dangling: links.filter(a => !document.getElementById(a.getAttribute('href').slice(1))).map(a => a.href),
    reasonLinks: [...document.querySelectorAll('#rejects ~ table a, table a')].length,
    kept: document.querySelectorAll('.cand.kept').length,
    candImgs: document.querySelectorAll('.cand img').length,
    scoresOnly: document.querySelectorAll('.cand .none').length,
  };
}"""


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):            # CI must run the report in a real browser, not skip it
            pytest.fail("chromium is not installed in CI: deploy/setup.sh installs it with apt-get")
        pytest.skip("chromium is not installed (deploy/setup.sh installs it with apt-get)")
    if os.environ.get("CI"):
        from playwright import sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pyproject test extra)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _open(browser, path):
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(path.as_uri(), wait_until="load")
    got = page.evaluate(PROBE)
    page.close()
    return got, errors


@pytest.mark.parametrize("keep", [True, False], ids=["candidates-kept", "scores-only"])
def test_report_renders_in_chromium(browser, tmp_path, keep):
    from pipeline.report_html import write_html
    out = tmp_path / "o"
    _write(out, _rows(), 3, keep=keep)
    got, errors = _open(browser, write_html(out, tmp_path / "r.html"))
    assert errors == []
    # 8 accepted cards + 2 rejected examples (one reason) × (input, output with mask); strips of
    # 2 samples × 3 candidates: 6 images with the candidates kept, 2 (the kept ones) without
    assert got["imgs"] == 20 + (6 if keep else 2) and got["broken"] == []
    assert got["svgs"] >= 2 + 1 and got["flat"] == 0 and got["bars"] == got["svgs"]   # funnel + histograms
    assert got["thresholds"] >= 1                       # local's clip_dir ≥ 0.2 (the default rules) at least
    assert got["dangling"] == [] and got["reasonLinks"] == 1
    assert got["kept"] == 2 and got["candImgs"] == (6 if keep else 2) and got["scoresOnly"] == (0 if keep else 4)
