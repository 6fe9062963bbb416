"""An assign run's ``changes.html``: what changed since the previous run, on the report's page style.

:func:`render_changes` takes the run's own outputs (the ``transitions`` and ``movers`` tables and
the ``drift.json`` document) and returns one self-contained HTML page, the jinja2 template
``templates/changes.html.j2`` on the profile report's ``base.html.j2``, rendered by the same
autoescaping environment: segment names, customer ids and feature names are escaped there. The
sections carry stable ids (:data:`SECTION_IDS`): ``overview`` (counts as tiles), ``refit`` (the
recommendation and its reasons), ``transitions`` (a heatmap table of from-segment rows x
to-segment columns with counts and row shares; new customers are their own row), ``movers``
(the customers whose features moved most), ``drift`` (PSI per feature against its threshold),
``shares`` (segment shares against training) and ``stability`` (mean confidence, outlier share,
hysteresis and flip-flops).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.profile.personas import humanize
from gpuseg.report.html import _environment, _fmt, _fmt_int, _fmt_pct, _label, _num, _text
from gpuseg.report.svg import color, sequential_color
from gpuseg.runtime.errors import UserInputError

SECTION_IDS = ("overview", "refit", "transitions", "movers", "drift", "shares", "stability")

#: the row label of customers with no previous segment
NEW_CUSTOMERS = "New customers"

#: above this many segments the full matrix is not drawn, only the largest transitions
MAX_MATRIX = 24


def profile_names(profiles: Mapping[str, Any] | None, n_segments: int) -> dict[int, str]:
    """``segment -> name`` from a ``profile/profiles.json`` document of a model with ``n_segments``.

    Returns an empty dict (the page then says "Segment N") when there is no document or it
    describes another number of segments.
    """
    if not isinstance(profiles, Mapping) or profiles.get("n_segments") != int(n_segments) \
            or not isinstance(profiles.get("segments"), list):
        return {}
    names = {}
    for entry in profiles["segments"]:
        seg, name = (entry.get("segment"), entry.get("name")) if isinstance(entry, Mapping) else (None, None)
        if isinstance(seg, int) and 0 <= seg < n_segments and name:
            names[seg] = str(name)
    return names


def _seg(segment: int | None, names: Mapping[int, str]) -> str:
    if segment is None:
        return NEW_CUSTOMERS
    name = names.get(int(segment))
    return f"Segment {segment}" if name is None else _label({"segment": int(segment), "name": name})


def _cell(count: int, total: int, stay: bool, frm: str, to: str) -> dict[str, Any]:
    share = count / total if total else float("nan")
    return {"count": _fmt_int(count), "share": _fmt_pct(share), "stay": stay, "empty": count == 0,
            "color": sequential_color(share), "ink": "white" if share > 0.55 else "black",
            "title": f"{frm} → {to}: {count:,} ({_fmt_pct(share)} of the row)"}


def _transitions(table: pa.Table, k: int, names: Mapping[int, str], top: int) -> dict[str, Any]:
    """The from x to matrix (counts and row shares), and the largest moves between segments."""
    frm = table["from"].to_pylist()
    to = [int(t) for t in table["to"].to_pylist()]
    count = [int(c) for c in table["count"].to_pylist()]
    counts = np.zeros((k + 1, k), np.int64)  # row k: new customers
    for f, t, c in zip(frm, to, count, strict=True):
        counts[k if f is None else int(f), t] += c
    totals = counts.sum(axis=1)
    rows = []
    for r in [*range(k), k]:
        if r == k and not totals[k]:
            continue  # no new customers: no row for them
        label = _seg(None if r == k else r, names)
        rows.append({"label": label, "color": None if r == k else color(r), "total": _fmt_int(totals[r]),
                     "cells": [_cell(int(counts[r, c]), int(totals[r]), r == c, label, _seg(c, names))
                               for c in range(k)]})
    moves = sorted(((int(counts[f, t]), f, t) for f in range(k) for t in range(k) if f != t and counts[f, t]),
                   key=lambda m: (-m[0], m[1], m[2]))[:top]
    largest = [{"from": _seg(f, names), "to": _seg(t, names), "count": _fmt_int(c),
                "share": _fmt_pct(c / totals[f])} for c, f, t in moves]
    stayed = int(np.trace(counts[:k]))
    known = int(totals[:k].sum())
    return {"columns": [{"label": _seg(c, names), "color": color(c)} for c in range(k)],
            "rows": rows if k <= MAX_MATRIX else [], "too_many": k > MAX_MATRIX, "largest": largest,
            "stayed": _fmt_int(stayed), "known": _fmt_int(known), "new": _fmt_int(totals[k]),
            "stayed_share": _fmt_pct(stayed / known if known else float("nan")), "total": _fmt_int(totals.sum())}


def _movers(movers: pa.Table, names: Mapping[int, str], top: int) -> dict[str, Any]:
    """The ``top`` movers whose largest feature move (in sd) is largest, in table order on ties."""
    n = movers.num_rows
    if not n or not top:
        return {"rows": [], "n": _fmt_int(n), "shown": 0}
    moves = movers["moves_z"].combine_chunks()
    flat = np.abs(pc.list_flatten(moves).to_numpy(zero_copy_only=False).astype(np.float64))
    score = np.zeros(n)
    np.maximum.at(score, pc.list_parent_indices(moves).to_numpy(zero_copy_only=False), flat)
    order = np.lexsort((np.arange(n), -score))[:top]
    rows = []
    for r in movers.take(pa.array(order, pa.int64())).to_pylist():
        changes = [{"up": z >= 0, "text": f"{humanize(_text(f))} {z:+.2f} sd"}
                   for f, z in zip(r["features"] or [], r["moves_z"] or [], strict=True)]
        rows.append({"customer_id": _text(r["customer_id"]), "from": _seg(r["from"], names),
                     "to": _seg(r["to"], names), "moves": changes})
    return {"rows": rows, "n": _fmt_int(n), "shown": len(rows)}


def _drift_features(drift: Mapping[str, Any], top: int) -> dict[str, Any]:
    """Every feature over its PSI threshold, and the ``top`` largest PSI values in any case."""
    psi = {str(f): _num(v) for f, v in (drift.get("psi") or {}).items()}
    limit = (drift.get("thresholds") or {}).get("psi")
    ranked = sorted(psi.items(), key=lambda kv: (-np.nan_to_num(kv[1], nan=-1.0), kv[0]))
    over = [f for f, v in ranked if limit is not None and v == v and v > limit]
    shown = ranked[:max(top, len(over))]  # the features over the threshold lead the ranking
    rest = [v for f, v in ranked[len(shown):] if v == v]
    return {"rows": [{"feature": _text(f), "label": _text(humanize(f)), "psi": "n/a" if v != v else f"{v:.3f}",
                      "drifted": f in over} for f, v in shown],
            "threshold": "none" if limit is None else _fmt(limit), "n_drifted": len(over), "n": len(psi),
            "n_rest": len(rest), "rest_max": f"{max(rest):.3f}" if rest else None}


def _shares(drift: Mapping[str, Any], names: Mapping[int, str]) -> dict[str, Any]:
    limit = (drift.get("thresholds") or {}).get("share_shift")
    rows = []
    for s in drift.get("segment_share") or []:
        shift = _num(s.get("shift"))
        rows.append({"label": _seg(int(s["segment"]), names), "color": color(int(s["segment"])),
                     "train": _fmt_pct(s.get("train_share")), "now": _fmt_pct(s.get("share")),
                     "shift": "n/a" if shift != shift else f"{100 * shift:+.1f} pts",
                     "flagged": limit is not None and shift == shift and abs(shift) > limit})
    return {"rows": rows, "threshold": "none" if limit is None else f"{100 * float(limit):.1f} pts"}


def _stability(drift: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Mean confidence, outlier share and flip-flop rate: training, now, change, threshold, flag."""
    thr = drift.get("thresholds") or {}
    conf, out = drift.get("mean_confidence") or {}, drift.get("outlier_share") or {}
    rows = []
    for label, values, change, key, sign in (
            ("Mean confidence", conf, "drop", "confidence_drop", -1),
            ("Outlier share", out, "increase", "outlier_share_increase", 1)):
        delta, limit = _num(values.get(change)), thr.get(key)
        pct = label == "Outlier share"
        show = _fmt_pct if pct else (lambda v: "n/a" if _num(v) != _num(v) else f"{_num(v):.3f}")
        rows.append({"label": label, "train": show(values.get("train")), "now": show(values.get("now")),
                     "change": "n/a" if delta != delta else (f"{100 * sign * delta:+.2f} pts" if pct
                                                             else f"{sign * delta:+.3f}"),
                     "threshold": "none" if limit is None else
                     (f"{change} > {100 * float(limit):.1f} pts" if pct else f"{change} > {float(limit):g}"),
                     "flagged": limit is not None and delta == delta and delta > limit})
    rate = drift.get("flip_flop_rate")
    rows.append({"label": "Flip-flop rate (back to the segment left the run before)", "train": "",
                 "now": "n/a (no earlier move to return from)" if rate is None else _fmt_pct(rate),
                 "change": f"{_fmt_int(drift.get('flip_flops'))} customers" if rate is not None else "",
                 "threshold": "none", "flagged": False})
    return rows


def _hysteresis(settings: Mapping[str, Any]) -> str:
    """The run's hysteresis rules in words."""
    margin, confirm = _num(settings.get("margin")), settings.get("confirm_runs")
    text = (f"a customer moves when another centre is closer than its segment's by a relative margin of "
            f"{margin:g}" if margin == margin and margin > 0 else "a customer moves as soon as another centre is nearer")
    if confirm:
        text += f", or after {int(confirm)} consecutive runs voting for the same new segment"
    return text + "."


def _overview(drift: Mapping[str, Any]) -> list[dict[str, str]]:
    conf = drift.get("mean_confidence") or {}
    tiles = {"Customers": _fmt_int(drift.get("n_customers")),
             "New customers": _fmt_int(drift.get("n_new_customers")),
             "Changed segment": f"{_fmt_int(drift.get('n_changed'))} ({_fmt_pct(drift.get('changed_share'))})",
             "Held by hysteresis": _fmt_int(drift.get("n_held")),
             "Pending moves": _fmt_int(drift.get("n_pending")),
             "Mean confidence": "n/a" if _num(conf.get("now")) != _num(conf.get("now")) else f"{_num(conf['now']):.3f}",
             "Largest PSI": "n/a" if _num(drift.get("psi_max")) != _num(drift.get("psi_max"))
             else f"{_num(drift['psi_max']):.3f}"}
    return [{"value": v, "label": k} for k, v in tiles.items()]


def render_changes(transitions: pa.Table, movers: pa.Table, drift: Mapping[str, Any], *, previous_as_of: str,
                   names: Mapping[int, str] | None = None, top_movers: int = 20, top_features: int = 20) -> str:
    """The "Changes since <previous_as_of>" page of one assign run, as a self-contained HTML string.

    Parameters
    ----------
    transitions : pyarrow.Table
        ``from`` (null for a new customer), ``to``, ``count`` (the run's ``transitions.parquet``).
    movers : pyarrow.Table
        ``customer_id``, ``from``, ``to``, ``features``, ``moves_z`` (the run's ``movers.parquet``).
    drift : mapping
        The run's ``drift.json`` document (its ``segment_share`` gives the number of segments).
    previous_as_of : str
        The cut-off the run is compared with (the previous assign run's, or training's).
    names : mapping, optional
        ``segment -> name`` (see :func:`profile_names`); else segments are "Segment N".
    top_movers : int, default 20
        Movers listed (those whose largest feature move is largest).
    top_features : int, default 20
        Features listed by PSI (every feature over its threshold is listed in any case).

    Returns
    -------
    str
    """
    if not isinstance(drift, Mapping):
        raise UserInputError(f"The 'drift' parameter must be a mapping, got {type(drift).__name__}.")
    names = {int(k): str(v) for k, v in (names or {}).items()}
    k = len(drift.get("segment_share") or [])
    if transitions.num_rows:
        k = max(k, int(pc.max(transitions["to"]).as_py()) + 1)
    previous = drift.get("previous") or {}
    compared = "the training segments" if previous.get("source") == "segment" else "the assign run"
    return _environment().get_template("changes.html.j2").render(
        title=f"Changes since {_text(previous_as_of)}",
        subtitle=f"{_fmt_int(drift.get('n_customers'))} customers as of {_text(drift.get('as_of', ''))}, "
                 f"compared with {compared} of {_text(previous_as_of)}",
        nav=[{"id": sid, "label": sid.capitalize()} for sid in SECTION_IDS],
        overview=_overview(drift),
        refit={"recommended": bool(drift.get("refit_recommended")),
               "reasons": [_text(r) for r in drift.get("reasons") or []]},
        hysteresis=_hysteresis(drift.get("hysteresis") or {}),
        transitions=_transitions(transitions, k, names, top=10),
        movers=_movers(movers, names, int(top_movers)),
        drift=_drift_features(drift, int(top_features)),
        shares=_shares(drift, names),
        stability=_stability(drift),
    )
