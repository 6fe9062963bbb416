"""One self-contained ``report.html``: inline CSS and inline SVG, no script, no network.

:func:`render_report` takes a plain ``context`` dict (built by the profile job from its artifacts)
and returns the HTML string; every piece of user text (segment names, words, snippets, ids) is
escaped. Sections carry stable ids so tests and readers can link to them: ``overview``,
``sizes``, ``projection``, ``lifts``, ``k-selection``, ``churn-value`` and ``personas``. A section
whose data is absent says so instead of failing.

Context keys (all optional except ``segments``):

``title`` (str), ``subtitle`` (str), ``overview`` (dict label -> value, shown as tiles),
``segments`` (list of dicts, one per segment, keys below), ``projection`` (dict ``xy``: (n, 2)
array, ``segments``: (n,) labels, optional ``note``), ``lift_matrix`` (dict ``rows``,
``columns``, ``values``; see :func:`lift_matrix`), ``k_selection_svg`` (an SVG document, e.g.
the segment job's ``k_selection.svg``) or ``k_selection`` (dict ``panels``: name -> (ks, values),
optional ``chosen_k``), ``notes`` (list of str: what could not be estimated and why, shown in the
overview so a reader never mistakes a missing figure for a result).

Segment dict keys: ``segment`` (int), ``name``, ``size``, ``share``, ``action``, ``top_lifts``
(list of (feature, z)), ``words`` (source -> list of (word, score)), ``top_events`` (list of
(event, share, lift)), ``ngrams`` (list of (tuple of events, count, ratio)), ``mean_rating``,
``churn_rate``, ``churn_score``, ``expected_value``, ``value_share`` and ``representatives``
(list of dicts ``customer_id``, ``snippet``). Missing or NaN values are shown as "n/a" or left out.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpuseg.profile.personas import humanize
from gpuseg.report.svg import bar_chart, color, heatmap, scatter, small_multiples
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import atomic_path

log = logging.getLogger(__name__)

SECTION_IDS = ("overview", "sizes", "projection", "lifts", "k-selection", "churn-value", "personas")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9;line-height:1.45}
header{background:#1f3b57;color:#fff;padding:18px 28px}header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;opacity:.85}
nav{background:#fff;border-bottom:1px solid #ddd;padding:8px 28px;font-size:14px}
nav a{margin-right:16px;color:#1f3b57;text-decoration:none}
main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:16px 20px;margin:18px 0}
h2{margin:0 0 10px;font-size:19px;color:#1f3b57}.note{color:#666;font-size:13px}
.tiles{display:flex;flex-wrap:wrap;gap:12px}.tile{background:#f0f4f8;border-radius:6px;
padding:10px 14px;min-width:120px}.tile b{display:block;font-size:20px}.tile span{font-size:12px;color:#555}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}
.card{border:1px solid #e1e4e8;border-left:6px solid #888;border-radius:6px;padding:12px 14px}
.card h3{margin:0 0 2px;font-size:17px}.card h4{margin:10px 0 3px;font-size:13px;color:#1f3b57}
.card ul{margin:0;padding-left:18px;font-size:13px}.card p{margin:2px 0;font-size:13px}
.up{color:#b2182b}.down{color:#2166ac}.action{background:#fff8e1;border-radius:4px;padding:6px 8px}
.words span{display:inline-block;background:#eef2f6;border-radius:10px;padding:1px 8px;margin:2px;
font-size:12px}blockquote{margin:2px 0 4px;padding-left:8px;border-left:3px solid #ddd;color:#444;
font-size:12px}.chart{overflow-x:auto}.notes{background:#fff4e5;border-left:4px solid #e08a00;
border-radius:4px;padding:4px 12px;margin:10px 0}.notes h3{margin:4px 0;font-size:14px}
"""


def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


def _fmt_int(value: Any) -> str:
    v = _num(value)
    return "n/a" if v != v else f"{int(round(v)):,}"


def _fmt_pct(value: Any) -> str:
    v = _num(value)
    return "n/a" if v != v else f"{100 * v:.1f}%"


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    v = _num(value)
    if v != v:
        return "n/a"
    return f"{int(v):,}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:,.3g}"


def _inline_svg(svg: str) -> str:
    """An SVG document made safe to inline: no XML prolog, no namespace URL, no script or links."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.IGNORECASE)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    if re.search(r"<script|<foreignObject|\bhref\s*=|\bsrc\s*=|\bon\w+\s*=|url\(", svg, re.IGNORECASE):
        log.warning("an SVG for the report holds scripts, links or event handlers; left out")
        return '<p class="note">Chart left out: it referenced external content.</p>'
    return svg.strip()


def lift_words(feature: str, z: float) -> str:
    """``"recency 2.1 sd above average"`` for a lift of +2.1 on ``recency_days``."""
    return f"{humanize(feature)} {abs(z):.1f} sd {'above' if z >= 0 else 'below'} average"


def pca_2d(X, n_sample: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Project a random sample of rows onto its first two principal components (torch, CPU).

    Parameters
    ----------
    X : array-like, shape (n, d)
        Customer matrix (e.g. the fused matrix); NaN entries are replaced by the column mean.
    n_sample : int, default 2000
        Rows to sample (all rows when ``n <= n_sample``).
    seed : int, default 0
        Seed of the sample; the same seed gives the same projection.

    Returns
    -------
    xy : ndarray, shape (m, 2)
        Coordinates of the sampled rows (component signs fixed so the result is deterministic).
    index : ndarray of int, shape (m,)
        Sorted row indices of the sample into ``X`` (use them to pick the segment labels).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise UserInputError(f"The 'X' parameter of pca_2d must be a non-empty 2-D array, got shape {X.shape}.")
    if not isinstance(n_sample, int | np.integer) or n_sample < 1:
        raise UserInputError(f"The 'n_sample' parameter must be an int >= 1, got {n_sample!r}.")
    n = X.shape[0]
    index = np.arange(n) if n <= n_sample else np.sort(
        np.random.default_rng(seed).choice(n, int(n_sample), replace=False))
    sample = torch.from_numpy(np.ascontiguousarray(X[index]))
    col_mean = torch.nanmean(sample, dim=0).nan_to_num(0.0)
    sample = torch.where(torch.isnan(sample), col_mean, sample) - col_mean
    _, _, vh = torch.linalg.svd(sample, full_matrices=False)
    comps = vh[:2]
    # an eigenvector's sign is arbitrary; make its largest loading positive
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    xy = (sample @ comps.T).numpy()
    if xy.shape[1] < 2:  # a single feature: second axis is flat
        xy = np.column_stack([xy, np.zeros(len(xy))])
    return xy, index


def lift_matrix(lifts: Mapping[int, Mapping[str, float]], names: Mapping[int, str] | None = None,
                top_features: int = 12) -> dict[str, Any]:
    """Rows (segments) x columns (features with the largest max |lift|) for the heatmap.

    Parameters
    ----------
    lifts : mapping
        ``segment -> {feature: lift_z}``.
    names : mapping, optional
        ``segment -> persona name`` for the row labels.
    top_features : int, default 12
    """
    feats: dict[str, float] = {}
    for row in lifts.values():
        for f, z in row.items():
            if z == z:
                feats[f] = max(feats.get(f, 0.0), abs(z))
    columns = [f for f, _ in sorted(feats.items(), key=lambda kv: (-kv[1], kv[0]))[:top_features]]
    segs = sorted(lifts)
    rows = [f"{s}: {(names or {}).get(s, f'Segment {s}')}" for s in segs]
    values = [[float(lifts[s].get(f, float("nan"))) for f in columns] for s in segs]
    return {"rows": rows, "columns": [humanize(f) for f in columns], "values": values}


# ---------------------------------------------------------------------------------- sections


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def _overview(ctx: Mapping[str, Any], segs: Sequence[Mapping[str, Any]]) -> str:
    tiles = dict(ctx.get("overview") or {})
    tiles.setdefault("Segments", len(segs))
    if "Customers" not in tiles and segs:
        sizes = [_num(s.get("size")) for s in segs]
        tiles["Customers"] = int(sum(v for v in sizes if v == v))
    html = ['<div class="tiles">']
    html += [f'<div class="tile"><b>{escape(_fmt(v))}</b><span>{escape(str(k))}</span></div>'
             for k, v in tiles.items()]
    html.append("</div>")
    notes = [str(n) for n in ctx.get("notes") or []]
    if notes:
        html.append('<div class="notes"><h3>Notes</h3><ul>' + "".join(f"<li>{escape(n)}</li>" for n in notes)
                    + "</ul></div>")
    if segs:
        biggest = max(segs, key=lambda s: np.nan_to_num(_num(s.get("size")), nan=-1.0))
        html.append(f'<p>The largest segment is <b>{escape(str(biggest.get("name", "")))}</b> '
                    f'({escape(_fmt_pct(biggest.get("share")))} of customers).</p>')
    return _section("overview", "Overview", "\n".join(html))


def _label(s: Mapping[str, Any]) -> str:
    name = str(s.get("name", ""))
    # fallback names already start with "Segment N:"
    return name if name.startswith(f"Segment {s.get('segment')}:") else f"{s.get('segment')}: {name}"


def _sizes(segs: Sequence[Mapping[str, Any]]) -> str:
    if not segs:
        return _section("sizes", "Segment sizes", '<p class="note">No segments.</p>')
    svg = bar_chart([_label(s) for s in segs], [_num(s.get("size")) for s in segs],
                    value_format="{:,.0f}", colors=[color(int(s.get("segment", i))) for i, s in enumerate(segs)])
    shares = ", ".join(f"{escape(str(s.get('name', '')))} {escape(_fmt_pct(s.get('share')))}" for s in segs)
    return _section("sizes", "Segment sizes", f'<div class="chart">{_inline_svg(svg)}</div>'
                    f'<p class="note">Share of customers: {shares}.</p>')


def _projection(ctx: Mapping[str, Any], names: Mapping[int, str]) -> str:
    proj = ctx.get("projection")
    if not proj or proj.get("xy") is None or len(proj.get("xy")) == 0:
        return _section("projection", "Map of customers", '<p class="note">No projection available.</p>')
    xy = np.asarray(proj["xy"], dtype=np.float64)
    labels = np.asarray(proj["segments"]).astype(int)
    svg = scatter(xy.tolist(), labels.tolist(), group_names={int(k): f"{k}: {v}" for k, v in names.items()})
    note = proj.get("note") or (f"{len(xy):,} sampled customers projected on the first two principal "
                                "components; nearby points behave alike.")
    return _section("projection", "Map of customers",
                    f'<div class="chart">{_inline_svg(svg)}</div><p class="note">{escape(str(note))}</p>')


def _lifts(ctx: Mapping[str, Any]) -> str:
    lm = ctx.get("lift_matrix")
    if not lm or not lm.get("rows") or not lm.get("columns"):
        return _section("lifts", "What sets each segment apart", '<p class="note">No lifts available.</p>')
    svg = heatmap(lm["rows"], lm["columns"], lm["values"])
    return _section("lifts", "What sets each segment apart",
                    f'<div class="chart">{_inline_svg(svg)}</div><p class="note">Each cell is the '
                    "segment's mean in population standard deviations from the average (red above, "
                    "blue below).</p>")


def _k_selection(ctx: Mapping[str, Any]) -> str:
    title = "How the number of segments was chosen"
    if ctx.get("k_selection_svg"):
        body = f'<div class="chart">{_inline_svg(str(ctx["k_selection_svg"]))}</div>'
    elif ctx.get("k_selection") and ctx["k_selection"].get("panels"):
        ks = ctx["k_selection"]
        svg = small_multiples({str(k): v for k, v in ks["panels"].items()}, marker_x=ks.get("chosen_k"))
        body = f'<div class="chart">{_inline_svg(svg)}</div>'
    else:
        return _section("k-selection", title, '<p class="note">No k-selection evidence recorded.</p>')
    chosen = (ctx.get("k_selection") or {}).get("chosen_k")
    if chosen is not None:
        body += f"<p>Chosen number of segments: <b>{escape(_fmt(chosen))}</b> (dashed line).</p>"
    return _section("k-selection", title, body)


def _churn_value(segs: Sequence[Mapping[str, Any]]) -> str:
    charts = []
    for key, label, fmt in (("churn_rate", "Churn rate (observed)", "{:.1%}"),
                            ("churn_score", "Mean predicted churn score", "{:.2f}"),
                            ("expected_value", "Mean expected value", "{:,.2f}"),
                            ("value_share", "Share of total value", "{:.1%}")):
        vals = [_num(s.get(key)) for s in segs]
        if any(v == v for v in vals):
            svg = bar_chart([_label(s) for s in segs], vals, title=label, value_format=fmt,
                            colors=[color(int(s.get("segment", i))) for i, s in enumerate(segs)])
            charts.append(f'<div class="chart">{_inline_svg(svg)}</div>')
    if not charts:
        return _section("churn-value", "Churn and value by segment",
                        '<p class="note">No churn labels, scores or value estimates available.</p>')
    return _section("churn-value", "Churn and value by segment", "\n".join(charts))


def _card(s: Mapping[str, Any]) -> str:
    seg = int(s.get("segment", 0))
    out = [f'<div class="card" id="persona-{seg}" style="border-left-color:{color(seg)}">',
           f"<h3>{escape(str(s.get('name', f'Segment {seg}')))}</h3>",
           f"<p>Segment {seg} &middot; {escape(_fmt_int(s.get('size')))} customers "
           f"({escape(_fmt_pct(s.get('share')))})</p>"]
    facts = []
    for key, label, f in (("mean_rating", "mean rating", "{:.2f}"), ("churn_rate", "churn", "{:.1%}"),
                          ("churn_score", "churn score", "{:.2f}"),
                          ("expected_value", "expected value", "{:,.2f}"),
                          ("value_share", "share of value", "{:.1%}")):
        v = _num(s.get(key))
        if v == v:
            facts.append(f"{label} {f.format(v)}")
    if facts:
        out.append(f"<p>{escape(' · '.join(facts))}</p>")
    lifts = [(f, z) for f, z in (s.get("top_lifts") or []) if _num(z) == _num(z)][:5]
    if lifts:
        out.append("<h4>What sets them apart</h4><ul>")
        out += [f'<li class="{"up" if z >= 0 else "down"}">{escape(lift_words(f, float(z)))}</li>'
                for f, z in lifts]
        out.append("</ul>")
    words = s.get("words") or {}
    if any(words.values()):
        out.append("<h4>What they say</h4>")
        for source, pairs in words.items():
            if pairs:
                chips = "".join(f"<span>{escape(str(w))}</span>" for w, *_ in pairs[:8])
                out.append(f'<p class="words"><i>{escape(str(source))}s:</i> {chips}</p>')
    grams = s.get("ngrams") or []
    events = s.get("top_events") or []
    if grams or events:
        out.append("<h4>Typical journey</h4>")
        if events:
            out.append("<p>Most frequent: " + escape(", ".join(
                f"{e} ({_fmt_pct(sh)})" for e, sh, *_ in events[:4])) + "</p>")
        if grams:
            out.append("<ul>" + "".join(
                f"<li>{escape(' → '.join(map(str, g)))} <span class='note'>(&times;{_num(r):.1f} vs "
                "average)</span></li>" for g, _c, r, *_ in grams[:4]) + "</ul>")
    if s.get("action"):
        out.append(f'<h4>Suggested action</h4><p class="action">{escape(str(s["action"]))}</p>')
    reps = s.get("representatives") or []
    if reps:
        out.append("<h4>Representative customers</h4>")
        for r in reps[:3]:
            snippet = str(r.get("snippet") or "")
            snippet = snippet if len(snippet) <= 180 else snippet[:177] + "..."
            out.append(f"<p><b>{escape(str(r.get('customer_id', '')))}</b></p>")
            if snippet:
                out.append(f"<blockquote>{escape(snippet)}</blockquote>")
    out.append("</div>")
    return "\n".join(out)


def _personas(segs: Sequence[Mapping[str, Any]]) -> str:
    if not segs:
        return _section("personas", "Personas", '<p class="note">No segments.</p>')
    return _section("personas", "Personas", '<div class="cards">' + "\n".join(_card(s) for s in segs) + "</div>")


def render_report(context: Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML string (see the module docstring for ``context``)."""
    if not isinstance(context, Mapping):
        raise UserInputError(f"The 'context' parameter must be a mapping, got {type(context).__name__}.")
    segs = sorted(context.get("segments") or [], key=lambda s: int(s.get("segment", 0)))
    names = {int(s.get("segment", i)): str(s.get("name", f"Segment {i}")) for i, s in enumerate(segs)}
    title = str(context.get("title") or "Customer segments")
    subtitle = context.get("subtitle")
    nav = "".join(f'<a href="#{sid}">{sid.replace("-", " ").capitalize()}</a>' for sid in SECTION_IDS)
    body = [_overview(context, segs), _sizes(segs), _projection(context, names), _lifts(context),
            _k_selection(context), _churn_value(segs), _personas(segs)]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<header><h1>{escape(title)}</h1>" + (f"<p>{escape(str(subtitle))}</p>" if subtitle else "") + "</header>",
        f"<nav>{nav}</nav>", "<main>", *body, "</main>", "</body>", "</html>", ""])


def write_report(path, html: str) -> Path:
    """Atomically write the report (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(path)
