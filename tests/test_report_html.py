"""The self-contained HTML report: sections, no external references, escaping, headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from gpuseg.report.html import SECTION_IDS, lift_matrix, pca_2d, render_report, write_report
from gpuseg.report.svg import bar_chart, diverging_color, heatmap, scatter

EVIL = "<script>alert('x')</script>"


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.tags, self.attrs, self.text = set(), [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        self.ids.update(v for k, v in attrs if k == "id")

    def handle_data(self, data):
        self.text.append(data)


def _context(with_churn: bool = True) -> dict:
    rng = np.random.default_rng(0)
    lifts = {0: {"monetary_sum": 2.1, "recency_days": -0.8}, 1: {"recency_days": 2.0, "frequency": -0.9}}
    names = {0: "High-value loyalists", 1: f"Dormant {EVIL}"}
    segs = []
    for s in (0, 1):
        seg = {"segment": s, "name": names[s], "size": 60 + 40 * s, "share": (60 + 40 * s) / 160,
               "action": "Reward & retain", "top_lifts": list(lifts[s].items()),
               "words": {"review": [("great", 0.3), (EVIL, 0.2)], "ticket": [("refund", 0.1)]},
               "top_events": [("visit", 0.4, 1.1)], "ngrams": [(("view", "cart", "buy"), 12, 2.5)],
               "mean_rating": 4.2 - s, "value_share": 0.8 - 0.6 * s,
               "representatives": [{"customer_id": f"C{s}", "snippet": f"I said {EVIL}"}]}
        if with_churn:
            seg["churn_rate"] = 0.1 + 0.7 * s
        segs.append(seg)
    xy, idx = pca_2d(rng.normal(size=(200, 5)), n_sample=100, seed=0)
    return {"title": "Segments <of> 2025", "overview": {"Customers": 160, "As of": "2025-01-01"},
            "segments": segs, "projection": {"xy": xy, "segments": (idx % 2)},
            "lift_matrix": lift_matrix(lifts, names),
            "k_selection": {"panels": {"inertia": ([2, 3, 4], [3.0, 2.0, 1.5])}, "chosen_k": 2},
            "k_selection_svg": '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" '
                               'width="10" height="10"><rect width="5" height="5"/></svg>'}


def test_report_sections_self_contained_and_escaped(tmp_path):
    html = render_report(_context())
    parser = _Collect()
    parser.feed(html)
    assert set(SECTION_IDS) <= parser.ids
    assert {"persona-0", "persona-1"} <= parser.ids
    # no network: no URL, no external script, stylesheet, image or link element
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html and "<img" not in html and "<iframe" not in html
    for key, value in parser.attrs:
        if key in ("src", "href"):
            assert value.startswith("#"), (key, value)
    # user text escaped everywhere (names, words, snippets, title)
    assert "&lt;script&gt;alert(" in html
    assert "Segments &lt;of&gt; 2025" in html and "Reward &amp; retain" in html
    assert "script" not in parser.tags
    text = " ".join(parser.text)
    assert "recency 2.0 sd above average" in text and "total spend 2.1 sd above average" in text
    assert "view → cart → buy" in text
    assert "Churn rate (observed)" in text and "Share of total value" in text
    assert parser.tags.count("svg") >= 6  # sizes, projection, heatmap, k-selection, 3 churn/value bars
    path = write_report(tmp_path / "out" / "report.html", html)
    assert path.read_text(encoding="utf-8") == html


def test_report_degrades_gracefully_without_optional_parts():
    ctx = {"segments": [{"segment": 0, "name": "Only", "size": 5, "share": 1.0}]}
    html = render_report(ctx)
    parser = _Collect()
    parser.feed(html)
    assert set(SECTION_IDS) <= parser.ids
    assert "No churn labels" in html and "No projection" in html and "No k-selection" in html
    # an SVG with a script is not embedded
    bad = render_report({**ctx, "k_selection_svg": "<svg><script>alert(1)</script></svg>"})
    assert "<script" not in bad and "Chart left out" in bad


def test_svg_helpers():
    svg = bar_chart(["a", "<b>"], [1.0, float("nan")], title="t")
    assert svg.count("<rect") == 2 and "&lt;b&gt;" in svg and "n/a" in svg
    assert diverging_color(0.0) == "#ffffff" and diverging_color(5.0) == "#b2182b"
    assert diverging_color(-5.0) == "#2166ac" and diverging_color(float("nan")) == "#eeeeee"
    hm = heatmap(["r1", "r2"], ["c1"], [[1.0], [float("nan")]])
    assert hm.count("<rect") == 2 and "+1.0" in hm
    sc = scatter([[0, 0], [1, 1], [2, 0.5]], [0, 1, 1], group_names={1: "<one>"})
    assert sc.count("<circle") == 3 and "&lt;one&gt;" in sc and "Segment 0" in sc


def test_pca_2d_deterministic_and_correct():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(500, 1))
    X = np.hstack([base * 10, base * -5, rng.normal(size=(500, 3)) * 0.1])
    xy, idx = pca_2d(X, n_sample=300, seed=3)
    xy2, idx2 = pca_2d(X, n_sample=300, seed=3)
    assert xy.shape == (300, 2) and np.array_equal(idx, idx2) and np.array_equal(xy, xy2)
    assert np.all(np.diff(idx) > 0)
    # the first component carries the planted direction: its variance dwarfs the second's
    assert xy[:, 0].var() > 100 * xy[:, 1].var()
    assert abs(np.corrcoef(xy[:, 0], base[idx, 0])[0, 1]) > 0.99


_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--enable-logging=stderr", "--v=0"]
#: page console messages: "CONSOLE(12)" (older Chromium) or "INFO:CONSOLE:12]" (newer)
_CONSOLE = re.compile(r"CONSOLE[(:]|Uncaught")


def _chromium(tmp_path, name, *args):
    return subprocess.run([_CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / ('profile-' + name)}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_CHROMIUM is None, reason="needs Debian's chromium package (installed by .ci/run)")
def test_report_renders_in_headless_chromium(tmp_path):
    report = write_report(tmp_path / "report.html", render_report(_context()))
    dom = _chromium(tmp_path, "dom", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom.stdout
    assert "High-value loyalists" in dom.stdout
    page_lines = [ln for ln in dom.stderr.splitlines() if _CONSOLE.search(ln)]
    assert page_lines == []
    # the console check can fail: a page with an error is caught by the same filter
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    bad_run = _chromium(tmp_path, "bad", "--dump-dom", bad.as_uri())
    assert any(_CONSOLE.search(ln) for ln in bad_run.stderr.splitlines())
    png = tmp_path / "report.png"
    shot = _chromium(tmp_path, "shot", "--hide-scrollbars", "--window-size=1200,2000",
                     f"--screenshot={png}", report.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
