"""A lookalike run's ``report.html``: how far the audience reaches, and why its members are similar.

:func:`render_lookalike` takes what the lookalike job wrote (its ``metrics.json`` document, the
reach-curve SVG and the first rows of ``audience.parquet``) and returns one self-contained page on
the profile report's ``base.html.j2``, rendered by the same autoescaping environment. Per seed
list (query): the reach curve and the audience size at each expansion preset, the features that
set the seeds apart from the base, and the top members with their "why similar" features.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.report.html import _environment, _fmt, _fmt_int, _inline_svg, _text
from gpuseg.runtime.errors import UserInputError

SECTION_IDS = ("overview", "reach", "seeds", "members", "notes")


def _reach_rows(reach: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    chosen = reach.get("chosen")
    for name, point in [*(reach.get("presets") or {}).items(), *([("chosen", chosen)] if chosen else [])]:
        rows.append({"name": _text(name), "size": _fmt_int(point.get("size")), "reached": _fmt_int(point.get("reached")),
                     "min_score": _fmt(point.get("min_score")), "mean_score": _fmt(point.get("mean_score"))})
    return rows


def _seed_rows(seed_vs_base: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [{"feature": _text(f.get("feature")), "seed_z": f"{float(f.get('seed_z', 0.0)):+.2f}",
             "seed_mean": _fmt(f.get("seed_mean")), "base_mean": _fmt(f.get("base_mean"))} for f in seed_vs_base]


def _member_rows(audience: pa.Table, query: str | None, top: int) -> list[dict[str, Any]]:
    if "query" in audience.column_names:  # several seed lists: this one's rows (a null query is "audience")
        own = pc.equal(pc.coalesce(audience["query"].cast(pa.string()), "audience"), query or "audience")
        audience = audience.filter(own)
    out = []
    for r in audience.slice(0, top).to_pylist():  # only the rows listed become Python objects
        why = r.get("why_similar") or []
        out.append({"rank": _fmt_int(r.get("rank")), "customer_id": _text(r.get("customer_id")),
                    "score": _fmt(r.get("score")),
                    "why": ", ".join(f"{_text(w.get('feature'))} (z {float(w.get('z', 0.0)):+.2f})" for w in why[:3])})
    return out


def render_lookalike(metrics: Mapping[str, Any], reach_svg: str, audience: pa.Table, *, top_members: int = 20) -> str:
    """The lookalike page as one self-contained HTML string.

    Parameters
    ----------
    metrics : mapping
        The job's ``metrics.json`` document (``queries`` per seed list: ``reach``, ``seed_vs_base``).
    reach_svg : str
        ``reach_curve.svg`` as the job drew it.
    audience : pyarrow.Table
        The audience rows in rank order (``rank``, ``customer_id``, ``score``, ``why_similar``; ``query``
        when there are several seed lists).
    top_members : int, default 20
        Members listed per query.

    Returns
    -------
    str
    """
    if not isinstance(metrics, Mapping):
        raise UserInputError(f"The 'metrics' parameter must be a mapping, got {type(metrics).__name__}.")
    queries = []
    for name, q in (metrics.get("queries") or {}).items():
        queries.append({"name": _text(name), "n_seeds": _fmt_int(q.get("n_seeds")),
                        "size": _fmt_int(q.get("audience_size")), "reach": _reach_rows(q.get("reach") or {}),
                        "seeds": _seed_rows(q.get("seed_vs_base") or []),
                        "members": _member_rows(audience, None if name == "audience" else name, top_members)})
    expansion = metrics.get("expansion")
    overview = [{"value": _fmt_int(metrics.get("n_customers")), "label": "customers indexed"},
                {"value": _fmt_int(metrics.get("audience_size")), "label": "in the audience"},
                {"value": _text(expansion or metrics.get("size") or "threshold"), "label": "size asked"},
                {"value": _text(metrics.get("mode")), "label": "similarity to the seeds"}]
    return _environment().get_template("lookalike.html.j2").render(
        title="Lookalike audience",
        subtitle=f"{_fmt_int(metrics.get('audience_size'))} lookalikes of {len(queries)} seed list(s) among "
                 f"{_fmt_int(metrics.get('n_customers'))} customers ({_text(metrics.get('backend_used'))} index, "
                 f"{_text(metrics.get('mode'))})",
        nav=[{"id": sid, "label": sid.capitalize()} for sid in SECTION_IDS],
        overview=overview, reach_svg=_inline_svg(reach_svg, ours=True), queries=queries,
        include_seeds=bool(metrics.get("include_seeds")),
        notes=[_text(n) for n in metrics.get("notes") or []])
