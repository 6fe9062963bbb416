"""The self-contained HTML report: sections, no external references, escaping, headless Chromium."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import headless_chromium
from markupsafe import Markup

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


XSS_NAME = "<script>alert(1)</script>"
XSS_WORD = '"><img src=x onerror=alert(1)>'


def _xss_context() -> dict:
    """The full context with hostile user text in every field a user controls."""
    ctx = _context()
    big, small = ctx["segments"][1], ctx["segments"][0]
    small["name"], big["name"] = XSS_NAME, f"Dormant {XSS_WORD}"
    for seg in ctx["segments"]:
        seg["words"] = {"review": [("great", 0.3), (XSS_WORD, 0.2)], XSS_WORD: [(XSS_NAME, 0.1)]}
        seg["top_lifts"] = [*seg["top_lifts"], (XSS_WORD, 1.5)]
        seg["top_events"] = [(XSS_WORD, 0.5, 1.2)]
        seg["ngrams"] = [(("view", XSS_NAME), 3, 2.0)]
        seg["action"] = XSS_WORD
        seg["representatives"] = [{"customer_id": XSS_NAME, "snippet": XSS_WORD}]
    names = {0: small["name"], 1: big["name"]}
    lifts = {0: {"monetary_sum": 2.1, XSS_WORD: 1.5}, 1: {"recency_days": 2.0, XSS_NAME: -0.9}}
    ctx.pop("k_selection_svg")  # drawn from the panels instead, one panel named by the user
    ctx.update(title=f"Report {XSS_NAME}", subtitle=XSS_WORD, notes=[XSS_NAME, XSS_WORD],
               overview={XSS_WORD: XSS_NAME, "Customers": 160},
               projection={**ctx["projection"], "note": XSS_WORD}, lift_matrix=lift_matrix(lifts, names),
               k_selection={"panels": {XSS_WORD: ([2, 3, 4], [3.0, 2.0, 1.5])}, "chosen_k": 3})
    return ctx


class _Sections(HTMLParser):
    """Per section: its tags, attributes, text, and the text inside SVG <title> and <text>."""

    def __init__(self):
        super().__init__()
        self.sections, self.stack, self.tags, self.attrs = {}, [], [], []
        self.current = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "section":
            self.current = dict(attrs)["id"]
            self.sections[self.current] = {"text": [], "svg_text": []}
        self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current is None:
            return
        self.sections[self.current]["text"].append(data)
        if "svg" in self.stack and self.stack[-1] in ("title", "text"):
            self.sections[self.current]["svg_text"].append(data)


def test_user_text_is_escaped_in_every_section():
    html = render_report(_xss_context())
    parser = _Sections()
    parser.feed(html)
    # the payloads are text, never markup: no script, no image, no handler, no attribute broken out of
    assert "<script" not in html and "<img" not in html
    assert not {"script", "img"} & set(parser.tags)
    assert not [k for k, _ in parser.attrs if k.startswith("on") or k == "src"]
    assert {k for k, _ in parser.attrs} <= {"lang", "charset", "name", "content", "href", "id", "class",
                                             "style", "width", "height", "viewbox", "font-family",
                                             "font-size", "font-weight", "role", "x", "y", "x1", "x2",
                                             "y1", "y2", "cx", "cy", "r", "fill", "fill-opacity",
                                             "stroke", "stroke-width", "stroke-dasharray", "points",
                                             "text-anchor", "transform"}
    assert set(SECTION_IDS) <= set(parser.sections)
    text = {sid: "".join(sec["text"]) for sid, sec in parser.sections.items()}
    svg_text = {sid: "".join(sec["svg_text"]) for sid, sec in parser.sections.items()}
    # each section shows the hostile text, read back as the very same characters
    for sid in SECTION_IDS:
        assert XSS_NAME in text[sid] or XSS_WORD in text[sid], sid
    for sid in ("overview", "sizes", "personas"):
        assert XSS_NAME in text[sid] and XSS_WORD in text[sid], sid
    # inside the SVG charts too (<text> labels and <title> tooltips), and no chart was left out
    for sid in ("sizes", "projection", "lifts", "churn-value"):
        assert XSS_NAME in svg_text[sid] and XSS_WORD in svg_text[sid], sid
    assert XSS_WORD in svg_text["k-selection"] and "Chart left out" not in html
    assert text["overview"].count(XSS_NAME) == 2  # a note and a tile
    assert "<title>Report &lt;script&gt;alert(1)&lt;/script&gt;</title>" in html
    assert "<p>&#34;&gt;&lt;img src=x onerror=alert(1)&gt;</p></header>" in html
    # Markup handed in as user text is escaped all the same
    ctx = _context()
    ctx["segments"][0]["name"] = Markup("<b>bold</b>")
    assert "<b>bold</b>" not in render_report(ctx)


def test_svg_helpers():
    svg = bar_chart(["a", "<b>"], [1.0, float("nan")], title="t")
    assert svg.count("<rect") == 2 and "&lt;b&gt;" in svg and "n/a" in svg
    assert diverging_color(0.0) == "#ffffff" and diverging_color(5.0) == "#b2182b"
    assert diverging_color(-5.0) == "#2166ac" and diverging_color(float("nan")) == "#eeeeee"
    hm = heatmap(["r1", "r2"], ["c1"], [[1.0], [float("nan")]])
    assert hm.count("<rect") == 2 and "+1.0" in hm
    sc = scatter([[0, 0], [1, 1], [2, 0.5]], [0, 1, 1], group_names={1: "<one>"})
    assert sc.count("<circle") == 3 and "&lt;one&gt;" in sc and "Segment 0" in sc


def test_long_segment_names_are_never_clipped_in_charts():
    """A label right-aligned at x needs about 7 px a character at 12 px (more for capitals) left of x."""
    import re

    long = "Steady regulars, high spend, electronics, via app (segment 11)"
    svg = bar_chart(["0: short", f"1: {long}"], [3.0, 5.0])
    width = float(re.search(r'width="([\d.]+)"', svg).group(1))
    for x, label in re.findall(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="end">([^<]*)</text>', svg):
        assert float(x) >= 7.0 * len(label), (x, label)
    assert width >= float(re.search(r'<rect x="([\d.]+)"', svg).group(1)) + 200  # room left for the bars
    hm = heatmap([f"1: {long}"], ["c1"], [[1.0]])
    x, label = re.search(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="end">([^<]*)</text>', hm).groups()
    assert float(x) >= 6.4 * len(label)
    sc = scatter([[0, 0], [1, 1]], [0, 1], group_names={1: long})
    sc_width = float(re.search(r'width="([\d.]+)"', sc).group(1))
    x = float(re.search(r'<text x="([\d.]+)" y="[\d.]+">' + re.escape(long), sc).group(1))
    assert x + 6.4 * len(long) <= sc_width


def test_how_to_use_table_lists_name_action_evidence_and_value_at_stake():
    ctx = _context()
    for seg, stake in zip(ctx["segments"], (12345.6, None), strict=True):
        seg.update(action_kind="VIP care", action_evidence=["total spend 2.1 sd above average"],
                   value_at_stake=stake)
    html = render_report(ctx)
    use = html[html.index('id="how-to-use"'):html.index('id="sizes"')]
    assert "How to use these segments" in use and "High-value loyalists" in use
    assert "Dormant &lt;script&gt;" in use and "<script>" not in use
    assert "VIP care" in use and "Because: total spend 2.1 sd above average" in use
    assert "12,346" in use and "not estimated" in use
    # a value model that did not run says why
    for seg in ctx["segments"]:
        seg["value_at_stake"] = None
    html = render_report({**ctx, "value_note": "expected value not estimated: the data have no events table"})
    assert "not estimated: the data have no events table" in html


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


@pytest.mark.skipif(_CHROMIUM is None, reason="needs Debian's chromium package (installed by .ci/run)")
def test_report_renders_in_headless_chromium(tmp_path):
    report = write_report(tmp_path / "report.html", render_report(_xss_context()))
    dom, page_lines = headless_chromium(tmp_path / "profile-dom", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom.stdout
    # the hostile names and words reached the DOM as text, not as elements
    assert "Dormant &quot;&gt;&lt;img" in dom.stdout or 'Dormant "&gt;&lt;img' in dom.stdout
    assert "<img" not in dom.stdout and "<script" not in dom.stdout
    assert page_lines == []
    # the console check can fail: a page with an error is caught by the same filter
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, bad_lines = headless_chromium(tmp_path / "profile-bad", "--dump-dom", bad.as_uri())
    assert bad_lines
    png = tmp_path / "report.png"
    shot, _ = headless_chromium(tmp_path / "profile-shot", "--hide-scrollbars", "--window-size=1200,2000",
                                f"--screenshot={png}", report.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
