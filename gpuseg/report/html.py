"""One self-contained ``report.html``: inline CSS and inline SVG, no script, no network.

The page's content security policy (a ``<meta>`` in ``templates/base.html.j2``) forbids scripts and
fetches outright, so even an injected tag would not run. The churn and value charts draw the
all-customer base rate as a dashed "all customers" line.

:func:`render_report` takes a plain ``context`` dict (built by the profile job from its artifacts)
and returns the HTML string. The page itself is the jinja2 template ``templates/report.html.j2``
(on ``templates/base.html.j2``), rendered with autoescaping on: this module only turns the context
into plain values (strings, numbers) for it, so every piece of user text (segment names, words,
snippets, ids, notes) is escaped by the template. The one exception is the inline SVG charts, passed
as :class:`markupsafe.Markup` by :func:`_inline_svg` alone: the charts of
:mod:`gpuseg.report.svg` escape every text they draw themselves, and any SVG is checked for scripts,
links and event handlers before it is trusted. Sections carry stable ids so tests and readers can link to them: ``overview``,
``how-to-use`` (segment, size, name, action with its evidence, expected value at stake), ``sizes``, ``projection``, ``lifts``, ``k-selection``, ``churn-value`` and ``personas``. A section
whose data is absent says so instead of failing. One more, ``changes`` ("Changes since the previous
segmentation"), is there only when the context has ``matching``.

Context keys (all optional except ``segments``):

``title`` (str), ``subtitle`` (str), ``overview`` (dict label -> value, shown as tiles),
``segments`` (list of dicts, one per segment, keys below), ``projection`` (dict ``xy``: (n, 2)
array, ``segments``: (n,) labels, optional ``note``), ``lift_matrix`` (dict ``rows``,
``columns``, ``values``; see :func:`lift_matrix`), ``k_selection_svg`` (an SVG document, e.g.
the segment job's ``k_selection.svg``) or ``k_selection`` (dict ``panels``: name -> (ks, values),
optional ``chosen_k``), ``notes`` (list of str: what could not be estimated and why, shown in the
overview so a reader never mistakes a missing figure for a result), ``value_note`` (str: why the
expected value at stake is not estimated, shown in the "How to use these segments" table),
``base_rates`` (dict measure -> the all-customer value of ``churn_rate``, ``churn_score`` or
``expected_value``, drawn as the "all customers" line of its bar chart; by default the segment
values weighted by segment size, which is the all-customer mean when they are means over each
segment's customers), ``matching`` (the ``matching`` entry of ``segment/segmentation.json``, written when
``segment.previous`` was used: ``previous``, ``max_distance``, ``spread``, ``matched`` (list of
dicts ``segment``, ``previous_segment``, ``distance``), ``births``, ``deaths``, ``renumbered``).

Segment dict keys: ``segment`` (int), ``name``, ``size``, ``share``, ``action``, ``top_lifts``
(list of (feature, z)), ``words`` (source -> list of (word, score)), ``top_events`` (list of
(event, share, lift)), ``ngrams`` (list of (tuple of events, count, ratio)), ``mean_rating``,
``churn_rate`` (with ``churn_labelled``, the customers it rests on, and ``churn_rate_reliable``:
False leaves it out of the churn chart), ``churn_score``, ``expected_value``, ``value_share``, ``representatives``
(list of dicts ``customer_id``, ``snippet``), ``action_kind``, ``action_evidence`` and
``name_evidence`` (lists of str) and ``value_at_stake`` (segment size x expected value per customer). Missing or NaN values are shown as "n/a" or left out.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from markupsafe import Markup

from gpuseg.profile.personas import humanize, lift_text
from gpuseg.report.svg import bar_chart, color, heatmap, scatter, small_multiples
from gpuseg.runtime import pca
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import atomic_path
from gpuseg.runtime.matrix import MatrixFile
from gpuseg.runtime.validation import check_int

log = logging.getLogger(__name__)

SECTION_IDS = ("overview", "how-to-use", "sizes", "projection", "lifts", "k-selection", "churn-value", "personas")
#: the section shown after the overview only when the segments were matched to a previous run's
CHANGES_ID = "changes"



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


#: what an SVG must not hold to be inlined: scripts, foreign HTML, links, event handlers, url()
_UNSAFE_SVG = re.compile(r"<script|<foreignObject|\bhref\s*=|\bsrc\s*=|\bon\w+\s*=|url\(", re.IGNORECASE)


def _inline_svg(svg: str, *, ours: bool = False) -> Markup:
    """An SVG document made safe to inline (no XML prolog, no namespace URL), as trusted markup.

    This is the only place the report marks text as safe HTML. An SVG holding scripts, links or
    event handlers is left out. ``ours=True`` is for a chart just drawn by :mod:`gpuseg.report.svg`:
    it escapes every text it draws (labels, legend, ``<title>``) and puts no user text in an
    attribute, so only its tags are checked (a segment called ``"src=x"`` keeps its chart). Any
    other SVG (an artifact read from disk) is checked whole.
    """
    svg = re.sub(r"<\?xml[^>]*\?>", "", str(svg))
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.IGNORECASE)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    probe = re.sub(r">[^<]*<", "><", svg) if ours else svg
    if _UNSAFE_SVG.search(probe):
        log.warning("an SVG for the report holds scripts, links or event handlers; left out")
        return Markup('<p class="note">Chart left out: it referenced external content.</p>')
    return Markup(svg.strip())


def pca_2d(X, n_sample: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Project a random sample of rows onto its first two principal components (torch, CPU).

    Parameters
    ----------
    X : array-like or MatrixFile, shape (n, d)
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
    # no float64 copy of the whole matrix: only the sample is converted (and only the sample is
    # read from a MatrixFile, which gathers rows from disk)
    X = X if isinstance(X, MatrixFile) else np.asarray(X)
    if len(X.shape) != 2 or X.shape[0] == 0:
        raise UserInputError(f"The 'X' parameter of pca_2d must be a non-empty 2-D array, got shape {X.shape}.")
    check_int("pca_2d", "n_sample", n_sample, low=1)
    n = X.shape[0]
    index = np.arange(n) if n <= n_sample else np.sort(
        np.random.default_rng(seed).choice(n, int(n_sample), replace=False))
    sample = torch.from_numpy(np.ascontiguousarray(X[index], dtype=np.float64))
    col_mean = torch.nanmean(sample, dim=0).nan_to_num(0.0)
    sample = torch.where(torch.isnan(sample), col_mean, sample) - col_mean
    comps = pca.from_centred_sample(sample, 2).components
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
# Each function below turns part of the context into the plain values one section of the template
# shows: strings and numbers (escaped there) and SVG charts (Markup, from _inline_svg only). A
# section whose data is absent gets None or an empty list, and the template says so.


def _text(value: Any) -> str:
    """User text as a plain ``str`` (a ``str`` subclass such as Markup would skip escaping)."""
    return str(value)


def _overview(ctx: Mapping[str, Any], segs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    tiles = dict(ctx.get("overview") or {})
    tiles.setdefault("Segments", len(segs))
    if "Customers" not in tiles and segs:
        sizes = [_num(s.get("size")) for s in segs]
        tiles["Customers"] = int(sum(v for v in sizes if v == v))
    biggest = None
    if segs:
        big = max(segs, key=lambda s: np.nan_to_num(_num(s.get("size")), nan=-1.0))
        biggest = {"name": _text(big.get("name", "")), "share": _fmt_pct(big.get("share"))}
    return {"tiles": [{"value": _text(_fmt(v)), "label": _text(k)} for k, v in tiles.items()],
            "notes": [_text(n) for n in ctx.get("notes") or []], "biggest": biggest}


def _label(s: Mapping[str, Any]) -> str:
    name = str(s.get("name", ""))
    # fallback names already start with "Segment N:"
    return name if name.startswith(f"Segment {s.get('segment')}:") else f"{s.get('segment')}: {name}"


def _colors(segs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [color(int(s.get("segment", i))) for i, s in enumerate(segs)]


def _sizes(segs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if not segs:
        return {"chart": None, "shares": []}
    svg = bar_chart([_label(s) for s in segs], [_num(s.get("size")) for s in segs],
                    value_format="{:,.0f}", colors=_colors(segs))
    return {"chart": _inline_svg(svg, ours=True),
            "shares": [{"name": _text(s.get("name", "")), "share": _fmt_pct(s.get("share"))} for s in segs]}


def _projection(ctx: Mapping[str, Any], names: Mapping[int, str]) -> dict[str, Any] | None:
    proj = ctx.get("projection")
    if not proj or proj.get("xy") is None or len(proj.get("xy")) == 0:
        return None
    xy = np.asarray(proj["xy"], dtype=np.float64)
    labels = np.asarray(proj["segments"]).astype(int)
    svg = scatter(xy.tolist(), labels.tolist(), group_names={int(k): f"{k}: {v}" for k, v in names.items()})
    note = proj.get("note") or (f"{len(xy):,} sampled customers projected on the first two principal "
                                "components; nearby points behave alike.")
    return {"chart": _inline_svg(svg, ours=True), "note": _text(note)}


def _lifts(ctx: Mapping[str, Any]) -> Markup | None:
    lm = ctx.get("lift_matrix")
    if not lm or not lm.get("rows") or not lm.get("columns"):
        return None
    return _inline_svg(heatmap(lm["rows"], lm["columns"], lm["values"]), ours=True)


def _k_selection(ctx: Mapping[str, Any]) -> dict[str, Any] | None:
    ks = ctx.get("k_selection") or {}
    if ctx.get("k_selection_svg"):  # an artifact read from disk: checked whole
        chart = _inline_svg(str(ctx["k_selection_svg"]))
    elif ks.get("panels"):
        every_k = sorted({float(x) for xs, _ys in ks["panels"].values() for x in xs})  # label every k
        chart = _inline_svg(small_multiples({str(k): v for k, v in ks["panels"].items()},
                                            marker_x=ks.get("chosen_k"), x_ticks=every_k), ours=True)
    else:
        return None
    chosen = ks.get("chosen_k")
    return {"chart": chart, "chosen_k": None if chosen is None else _text(_fmt(chosen))}


def _base_rate(segs: Sequence[Mapping[str, Any]], key: str) -> float:
    """The all-customer mean of a per-segment mean: the segment means weighted by segment size.

    NaN when no segment has both a size and the value.
    """
    pairs = [(_num(s.get("size")), _num(s.get(key))) for s in segs]
    pairs = [(n, v) for n, v in pairs if n == n and v == v and n > 0]
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total > 0 else float("nan")


def _churn_value(ctx: Mapping[str, Any], segs: Sequence[Mapping[str, Any]]) -> list[Markup]:
    """One bar chart per measure; a mean (not a share) shows the all-customer base rate as a line."""
    given = ctx.get("base_rates") or {}
    charts = []
    for key, label, fmt, has_base in (("churn_rate", "Churn rate (observed)", "{:.1%}", True),
                                      ("churn_score", "Mean predicted churn score", "{:.2f}", True),
                                      ("expected_value", "Mean expected value", "{:,.2f}", True),
                                      ("value_share", "Share of total value", "{:.1%}", False)):
        vals = [_num(s.get(key)) for s in segs]
        if key == "churn_rate":  # a rate over a handful of labelled customers is not drawn
            vals = [v if s.get("churn_rate_reliable", True) else float("nan") for v, s in zip(vals, segs, strict=True)]
        if any(v == v for v in vals):
            base = (_num(given[key]) if key in given else _base_rate(segs, key)) if has_base else None
            svg = bar_chart([_label(s) for s in segs], vals, title=label, value_format=fmt,
                            colors=_colors(segs), reference=base)
            charts.append(_inline_svg(svg, ours=True))
    return charts


def _how_to_use(ctx: Mapping[str, Any], segs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row per segment: size, name, action and its evidence, expected value at stake."""
    rows = []
    for s in segs:
        stake = _num(s.get("value_at_stake"))
        rows.append({"segment": int(s.get("segment", 0)), "color": color(int(s.get("segment", 0))),
                     "size": _fmt_int(s.get("size")), "share": _fmt_pct(s.get("share")),
                     "name": _text(s.get("name", "")), "kind": _text(s.get("action_kind") or "action"),
                     "action": _text(s.get("action") or ""),
                     "evidence": [_text(e) for e in s.get("action_evidence") or []],
                     "stake": "not estimated" if stake != stake else f"{stake:,.0f}"})
    note = ctx.get("value_note")
    if note is None and rows and all(r["stake"] == "not estimated" for r in rows):
        note = "expected value not estimated"
    return {"rows": rows, "value_note": _text(note) if note else None}


def _card(s: Mapping[str, Any]) -> dict[str, Any]:
    seg = int(s.get("segment", 0))
    facts = []
    for key, label, f in (("mean_rating", "mean rating", "{:.2f}"), ("churn_rate", "churn", "{:.1%}"),
                          ("churn_score", "churn score", "{:.2f}"),
                          ("expected_value", "expected value", "{:,.2f}"),
                          ("value_share", "share of value", "{:.1%}")):
        v = _num(s.get(key))
        if v == v and key == "churn_rate" and "churn_labelled" in s:
            thin = "" if s.get("churn_rate_reliable", True) else ", too few to rely on"
            facts.append(f"{label} {f.format(v)} (of {_fmt_int(s['churn_labelled'])} labelled{thin})")
        elif v == v:
            facts.append(f"{label} {f.format(v)}")
    lifts = [(f, float(z)) for f, z in (s.get("top_lifts") or []) if _num(z) == _num(z)][:5]
    words = [{"source": _text(source), "words": [_text(w) for w, *_ in pairs[:8]]}
             for source, pairs in (s.get("words") or {}).items() if pairs]
    events = s.get("top_events") or []
    reps = []
    for r in (s.get("representatives") or [])[:3]:
        snippet = str(r.get("snippet") or "")
        reps.append({"customer_id": _text(r.get("customer_id", "")),
                     "snippet": snippet if len(snippet) <= 180 else snippet[:177] + "..."})
    return {
        "segment": seg, "color": color(seg), "name": _text(s.get("name", f"Segment {seg}")),
        "size": _fmt_int(s.get("size")), "share": _fmt_pct(s.get("share")), "facts": " · ".join(facts),
        "lifts": [{"up": z >= 0, "text": lift_text(_text(f), z)} for f, z in lifts],
        "words": words,
        "events": ", ".join(f"{e} ({_fmt_pct(sh)})" for e, sh, *_ in events[:4]),
        "ngrams": [{"path": " → ".join(map(str, g)), "ratio": f"{_num(r):.1f}"}
                   for g, _c, r, *_ in (s.get("ngrams") or [])[:4]],
        "action": _text(s["action"]) if s.get("action") else None,
        "action_kind": _text(s.get("action_kind") or ""),
        "action_evidence": [_text(e) for e in s.get("action_evidence") or []],
        "name_evidence": [_text(e) for e in s.get("name_evidence") or []],
        "representatives": reps,
    }


def _matching(ctx: Mapping[str, Any], names: Mapping[int, str]) -> dict[str, Any] | None:
    """Kept, renumbered, born and dead segment ids of a refit matched to the previous run (None: none)."""
    m = ctx.get("matching")
    if not m:
        return None
    spread = _num(m.get("spread"))

    def row(entry: Mapping[str, Any]) -> dict[str, Any]:
        seg, dist = int(entry["segment"]), _num(entry.get("distance"))
        relative = dist / spread if spread == spread and spread > 0 and dist == dist else float("nan")
        return {"segment": seg, "previous": int(entry["previous_segment"]), "color": color(seg),
                "name": _text(names.get(seg, f"Segment {seg}")), "shift": _fmt(dist),
                "relative": None if relative != relative else f"{relative:.2f}"}

    matched = [row(e) for e in m.get("matched") or []]
    limit = m.get("max_distance")
    return {"previous": _text(m.get("previous") or "the previous run"),
            "previous_k": _fmt(m.get("previous_n_clusters")), "k": len(names),
            "limit": "none" if limit is None else _fmt(limit), "spread": None if spread != spread else _fmt(spread),
            "kept": [r for r in matched if r["segment"] == r["previous"]],
            "renumbered": [r for r in matched if r["segment"] != r["previous"]],
            "births": [{"segment": int(b), "color": color(int(b)), "name": _text(names.get(int(b), f"Segment {b}"))}
                       for b in m.get("births") or []],
            "deaths": [int(d) for d in m.get("deaths") or []]}


@functools.cache
def _environment() -> jinja2.Environment:
    """The report's templates (``gpuseg/report/templates``), every expression HTML-escaped."""
    return jinja2.Environment(loader=jinja2.PackageLoader("gpuseg.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def render_report(context: Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML string (see the module docstring for ``context``)."""
    if not isinstance(context, Mapping):
        raise UserInputError(f"The 'context' parameter must be a mapping, got {type(context).__name__}.")
    segs = sorted(context.get("segments") or [], key=lambda s: int(s.get("segment", 0)))
    names = {int(s.get("segment", i)): str(s.get("name", f"Segment {i}")) for i, s in enumerate(segs)}
    subtitle = context.get("subtitle")
    changes = _matching(context, names)
    ids = [*SECTION_IDS[:1], *([CHANGES_ID] if changes else []), *SECTION_IDS[1:]]
    return _environment().get_template("report.html.j2").render(
        title=_text(context.get("title") or "Customer segments"),
        subtitle=_text(subtitle) if subtitle else None,
        nav=[{"id": sid, "label": sid.replace("-", " ").capitalize()} for sid in ids],
        overview=_overview(context, segs), changes=changes, how_to_use=_how_to_use(context, segs), sizes=_sizes(segs), projection=_projection(context, names),
        lifts=_lifts(context), k_selection=_k_selection(context), churn_value=_churn_value(context, segs),
        personas=[_card(s) for s in segs],
    )


def write_report(path, html: str) -> Path:
    """Atomically write the report (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(path)
