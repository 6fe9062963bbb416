"""The self-contained HTML report: sections, no external references, escaping, headless Chromium."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import headless_chromium
from markupsafe import Markup

from gpuseg.report.html import SECTION_IDS, lift_matrix, pca_2d, render_report, write_report
from gpuseg.report.svg import bar_chart, diverging_color, heatmap, scatter, small_multiples

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
    assert {k for k, _ in parser.attrs} <= {"lang", "charset", "http-equiv", "name", "content", "href", "id", "class",
                                             "style", "width", "height", "viewbox", "font-family",
                                             "font-size", "font-weight", "font-style", "role", "x", "y", "x1", "x2",
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


# --------------------------------------------------------------------- layout in headless Chromium
#: Walks the laid-out page and writes what overflows into <pre id="overflow-report"> as JSON:
#: HTML boxes whose content is wider or taller than the box (scrollWidth > clientWidth) and SVG
#: <text> whose box, in the svg's own coordinates, reaches past the svg's viewBox. Only added to
#: a test copy of the report: the shipped one has no script (its content policy forbids it).
_OVERFLOW_PROBE = """<script>
(function () {
  const out = {width: window.innerWidth, boxes: [], texts: [], svgs: 0};
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
                       + (el.className && typeof el.className === "string" ? "." + el.className : "");
  for (const el of document.body.querySelectorAll("*")) {
    if (!(el instanceof HTMLElement) || el.tagName === "SCRIPT" || el.id === "overflow-report") continue;
    const style = getComputedStyle(el);
    if (style.display === "inline" || style.display === "contents" || style.display === "none") continue;
    const wide = el.scrollWidth - el.clientWidth, tall = el.scrollHeight - el.clientHeight;
    if ((wide > 1 || tall > 1) && el.clientWidth > 0) {
      out.boxes.push({el: name(el), wide: wide, tall: tall, overflow: style.overflowX,
                      text: el.textContent.slice(0, 80)});
    }
  }
  for (const svg of document.querySelectorAll("svg")) {
    out.svgs += 1;
    const vb = svg.viewBox.baseVal, toSvg = svg.getScreenCTM().inverse();
    for (const t of svg.querySelectorAll("text")) {
      if (!t.textContent.trim()) continue;
      const b = t.getBBox(), m = toSvg.multiply(t.getScreenCTM());
      const pts = [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height], [b.x + b.width, b.y + b.height]]
        .map(([x, y]) => new DOMPoint(x, y).matrixTransform(m));
      const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
      const past = {left: vb.x - Math.min(...xs), right: Math.max(...xs) - (vb.x + vb.width),
                    top: vb.y - Math.min(...ys), bottom: Math.max(...ys) - (vb.y + vb.height)};
      if (Object.values(past).some((d) => d > 0.5)) {
        const sec = svg.closest("section");
        out.texts.push({section: sec ? sec.id : "", text: t.textContent.slice(0, 80), past: past});
      }
    }
  }
  const pre = document.createElement("pre");
  pre.id = "overflow-report";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""

LONG_NAMES = [f"Segment {s} persona: " + "frequent weekend electronics buyers via the mobile app"
              if s % 3 else f"{s}_Unbroken_identifier_that_has_no_spaces_at_all_for_a_browser_to_wrap_on"
              for s in range(12)]
LONG_FEATURES = [f"share_of_spend_in_category_{c}_during_the_last_ninety_days_before_as_of" for c in "abcdefgh"]


def _crowded_context() -> dict:
    """12 segments with 60+ character names, long feature names and every chart present."""
    rng = np.random.default_rng(3)
    segs, lifts = [], {}
    for s, name in enumerate(LONG_NAMES):
        assert len(name) >= 60
        lifts[s] = {f: float(rng.normal(scale=1.5)) for f in LONG_FEATURES}
        segs.append({"segment": s, "name": name, "size": 100 + 37 * s, "share": 1 / 12,
                     "action": "Win back with a personalised offer on their favourite category " * 2,
                     "action_kind": "win-back", "action_evidence": [f"{LONG_FEATURES[0]} 2.1 sd above average"],
                     "name_evidence": [LONG_FEATURES[1]], "top_lifts": list(lifts[s].items())[:5],
                     "words": {"review": [(LONG_FEATURES[2], 0.3), ("great", 0.2)]},
                     "top_events": [(LONG_FEATURES[3], 0.4, 1.1)],
                     "ngrams": [(("view", LONG_FEATURES[4], "buy"), 12, 2.5)],
                     "churn_rate": 0.05 * (s % 7), "churn_score": 0.1 + 0.05 * s,
                     "expected_value": 12345.6 * (1 + s), "value_share": (1 + s) / 78,
                     "value_at_stake": 1e6 * (1 + s),
                     "representatives": [{"customer_id": f"C{s}" * 30, "snippet": LONG_FEATURES[5] * 3}]})
    ks = list(range(2, 16))
    panels = {f"{LONG_FEATURES[i]} (lower is better)": (ks, [12345.6 / k for k in ks]) for i in range(4)}
    return {"title": "A report title that is quite long too, " * 3, "subtitle": LONG_NAMES[0],
            "overview": {LONG_FEATURES[0]: LONG_NAMES[0], "Customers": 12_345_678},
            "notes": [LONG_FEATURES[6] * 2], "segments": segs,
            "projection": {"xy": rng.normal(size=(300, 2)), "segments": np.arange(300) % 12},
            "lift_matrix": lift_matrix(lifts, dict(enumerate(LONG_NAMES)), top_features=8),
            "k_selection": {"panels": panels, "chosen_k": 5}}


def _overflow(tmp_path, html: str, name: str) -> tuple[dict, list[str]]:
    """The overflow probe's findings for ``html`` laid out 1400 px wide, and the page's console lines."""
    import json
    import re
    from html import unescape

    probe_page = html.replace('<meta http-equiv="Content-Security-Policy"', '<meta name="csp-off"', 1)
    probe_page = probe_page.replace("</body>", _OVERFLOW_PROBE + "\n</body>", 1)
    page = tmp_path / f"{name}-probe.html"
    page.write_text(probe_page, encoding="utf-8")
    dom, lines = headless_chromium(tmp_path / f"profile-{name}", "--window-size=1400,1000", "--dump-dom",
                                   page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="overflow-report">(.*?)</pre>', dom.stdout, re.DOTALL)
    assert found, dom.stdout[-2000:]
    return json.loads(unescape(found.group(1))), lines


@pytest.mark.skipif(_CHROMIUM is None, reason="needs Debian's chromium package (installed by .ci/run)")
def test_no_text_overflows_its_box_at_1400px(tmp_path):
    html = render_report(_crowded_context())
    assert "<script" not in html and "Content-Security-Policy" in html and "script-src" not in html
    found, lines = _overflow(tmp_path, html, "crowded")
    assert lines == []  # no console errors, the probe included
    assert found["width"] == 1400 and found["svgs"] == 8  # laid out as asked, every chart measured
    assert found["boxes"] == [] and found["texts"] == [], (found["boxes"][:5], found["texts"][:5])
    # the probe can fail: a label drawn past its chart and a long word in a fixed box are both caught
    bad = html.replace("</body>", '<div style="width:100px;overflow-wrap:normal">' + "x" * 80 + "</div>"
                       '<svg viewBox="0 0 50 20" width="50" height="20"><text x="40" y="12">'
                       f"{LONG_NAMES[1]}</text></svg></body>")
    caught, _ = _overflow(tmp_path, bad, "bad")
    assert [b["wide"] > 300 for b in caught["boxes"] if b["el"] == "div"] == [True]
    assert [t["text"] for t in caught["texts"]] == [LONG_NAMES[1]] and caught["texts"][0]["past"]["right"] > 100
    # the page as a user sees it, 1400 px wide
    report = write_report(tmp_path / "report.html", html)
    png = tmp_path / "report-1400.png"
    shot, shot_lines = headless_chromium(tmp_path / "profile-shot", "--hide-scrollbars", "--window-size=1400,3000",
                                         f"--screenshot={png}", report.as_uri())
    assert shot.returncode == 0 and shot_lines == [], shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1400 and len(data) > 50_000


@pytest.mark.skipif(_CHROMIUM is None, reason="needs Debian's chromium package (installed by .ci/run)")
def test_content_policy_refuses_an_injected_script(tmp_path):
    html = render_report(_context()).replace("</body>", "<script>document.title = 'ran';</script></body>")
    page = tmp_path / "injected.html"
    page.write_text(html, encoding="utf-8")
    dom, lines = headless_chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0 and "<title>ran</title>" not in dom.stdout
    assert any("Refused to execute" in line or "Content Security Policy" in line for line in lines), lines


def test_churn_and_value_bars_show_the_all_customer_base_rate():
    import re

    ctx = _context()  # sizes 60 and 100, churn 10% and 80%: 60*0.1 + 100*0.8 over 160 customers
    html = render_report(ctx)
    churn = html[html.index('id="churn-value"'):html.index('id="personas"')]
    assert "all customers: 53.8%" in churn
    assert churn.count("all customers:") == 1  # value share has no base rate; the others are absent
    # the line sits where a bar of that value would end
    svg = churn[churn.index("<svg"):churn.index("</svg>")]
    bars = [(float(x), float(w)) for x, w in re.findall(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)]
    line_x = float(re.search(r'<line x1="([\d.]+)"', svg).group(1))
    (x0, w_low), (_, w_high) = bars
    assert line_x - x0 == pytest.approx(w_high * 0.5375 / 0.8, abs=0.2) and w_low < line_x - x0 < w_high
    # a base rate the caller knows wins over the size-weighted mean
    assert "all customers: 25.0%" in render_report({**ctx, "base_rates": {"churn_rate": 0.25}})
    # a label near the right edge is pulled inside the chart
    svg = bar_chart(["a", "b"], [1.0, 2.0], reference=2.0, reference_label="all customers")
    width = float(re.search(r'width="([\d.]+)"', svg).group(1))
    tx = float(re.search(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle" font-style="italic">', svg).group(1))
    assert tx + 0.31 * 12 * len("all customers: 2") <= width
    assert "<line" not in bar_chart(["a"], [1.0], reference=float("nan"))


def test_chart_geometry_leaves_room_for_long_labels():
    import re

    long = LONG_FEATURES[0]
    hm = heatmap(["0: a", "1: b"], ["short", long], [[1.0, 2.0], [0.0, -1.0]])
    width, height = (float(v) for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', hm).groups())
    heads = re.findall(r'translate\(([\d.]+),([\d.]+)\) rotate\(55\)" text-anchor="end">([^<]*)<', hm)
    for x, y, label in heads:  # a label ending at (x, y) reaches 0.82 of its length up, 0.57 left
        assert float(y) >= 0.82 * 6.2 * len(label) and float(x) >= 0.57 * 6.2 * len(label), label
        assert float(x) <= width
    assert len(heads) == 2
    # a legend of 30 segments makes the map taller instead of running off its bottom
    sc = scatter([[0, 0]] * 30, list(range(30)))
    sc_height = float(re.search(r'height="([\d.]+)"', sc).group(1))
    last_y = max(float(y) for y in re.findall(r'<text x="[\d.]+" y="([\d.]+)">Segment', sc))
    assert last_y + 4 <= sc_height
    # k-selection: every k labelled, wide y labels and a long panel title inside the panel
    ks = list(range(2, 13))
    sm = small_multiples({f"{long} (lower is better)": (ks, [123456.0 / k for k in ks])}, x_ticks=ks)
    assert all(f'text-anchor="middle">{k}</text>' in sm for k in ks)
    y_label_x = float(re.search(r'<text x="([\d.]+)" y="[\d.]+" text-anchor="end">6\.17e\+04', sm).group(1))
    assert y_label_x >= 6.2 * len("6.17e+04")
    assert float(re.search(r'width="([\d.]+)"', sm).group(1)) >= y_label_x + 6.2 * len(long)


def test_a_churn_rate_over_too_few_labelled_customers_is_counted_and_not_drawn():
    ctx = _context()
    ctx["segments"][0].update(churn_labelled=45, churn_rate_reliable=True)
    ctx["segments"][1].update(churn_rate=1.0, churn_labelled=6, churn_rate_reliable=False)
    html = render_report(ctx)
    assert "churn 10.0% (of 45 labelled)" in html
    assert "churn 100.0% (of 6 labelled, too few to rely on)" in html
    churn = html[html.index('id="churn-value"'):html.index('id="personas"')]
    first = churn[churn.index("<svg"):churn.index("</svg>")]
    assert "Churn rate (observed)" in first and "100.0%" not in first and "10.0%" in first
