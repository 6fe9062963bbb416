"""Distinct, human segment names that fit the numbers: rule names, tie-breakers and churn checks.

:func:`name_segments` turns the per-segment lifts (z-scores, see :mod:`gpuseg.profile.lifts`) into
one name per segment, in four steps:

1. **Base name.** The best-scoring persona rule (:mod:`gpuseg.profile.personas`) whose name does
   not contradict the segment's observed churn: a rule that implies churn ``"below"`` average
   ("loyalists", "steady") is barred when the segment churns more than ``churn_tolerance`` times
   the base rate, one that implies ``"above"`` ("dormant", "at risk") when it churns less than
   the base rate divided by it. The next matching rule is taken instead. With no rule left, the
   name is described from the strongest features, value tier first: ``"High spend, frequent
   returns"``.
2. **Churn.** A name that implies nothing about churn gets ``", high churn"`` when the segment
   churns ``churn_high`` times the base rate or more, so a 60%-churn segment is never just
   "Big-ticket occasional buyers".
   A rule name also takes the segment's strongest feature that the rule does not speak of when
   it is :data:`STRONG_LIFT` sd or more (``"Steady regulars, books"``).
3. **Ties.** Segments that share a base name are told apart by their next distinguishing
   feature: among the features the base rule does not already use, the one on which the segment
   differs most from the others of its group (``"Steady regulars, high spend"`` vs
   ``"Steady regulars, electronics"``), or a word they use more than the others.
4. **Overrides.** Names given by the user (``profile.names``) are kept as they are; an automatic
   name equal to one of them is told apart the same way. Whatever is left equal gets its segment
   id, so two segments never share a name.

Each feature reads as a short phrase (:data:`PHRASES`); features of one *concept* (``frequency``
and ``n_events``, ``recency_days`` and ``days_since_last_event``) are named once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from gpuseg.profile.personas import (
    COUPON_FEATURES,
    describe_lift,
    lift_text,
    rank_rules,
    validate_rules,
)
from gpuseg.runtime.validation import check_real

log = logging.getLogger(__name__)

#: feature -> (concept, phrase when above average, phrase when below); None: not worth a name
PHRASES: dict[str, tuple[str, str | None, str | None]] = {
    "expected_value": ("value", "high value", "low value"),
    "monetary_sum": ("spend", "high spend", "low spend"),
    "monetary_net": ("spend", "high net spend", "low net spend"),
    "recency_days": ("recency", "lapsed", "recently active"),
    "days_since_last_event": ("recency", "lapsed", "recently active"),
    "frequency": ("activity", "frequent buyers", "infrequent buyers"),
    "n_purchase_events": ("activity", "frequent buyers", "infrequent buyers"),
    "n_events": ("activity", "very active", "little activity"),
    "monetary_mean": ("basket", "big baskets", "small baskets"),
    "tenure_days": ("tenure", "long-standing", "newly joined"),
    "trend_activity": ("trend", "picking up", "slowing down"),
    "trend_purchases": ("trend", "buying more lately", "buying less lately"),
    "trend_spend": ("trend", "spending more lately", "spending less lately"),
    "interpurchase_mean_days": ("gaps", "long gaps between orders", "short gaps between orders"),
    "interpurchase_median_days": ("gaps", "long gaps between orders", "short gaps between orders"),
    "interpurchase_std_days": ("gaps_std", "irregular orders", "regular orders"),
    "n_returns": ("returns", "frequent returns", "few returns"),
    "share_event_return": ("returns", "frequent returns", "few returns"),
    "share_event_cancellation": ("cancellations", "frequent cancellations", "few cancellations"),
    "n_tickets": ("tickets", "many support tickets", "few support tickets"),
    "share_event_support_ticket": ("tickets", "many support tickets", "few support tickets"),
    "mean_rating": ("rating", "happy reviewers", "unhappy reviewers"),
    "n_texts_ticket": ("tickets", "many support tickets", "few support tickets"),
    "n_reviews": ("reviews", "active reviewers", None),
    "n_texts_review": ("reviews", "active reviewers", None),
    "n_texts": ("texts", "write to us often", None),
    "share_event_purchase": ("purchase_share", "mostly buy when they visit", "browse more than they buy"),
    "churn_rate": ("churn", "high churn", "low churn"),
    **{f: ("deals", "deal-driven", "rarely use deals") for f in COUPON_FEATURES},
}

#: concepts that say how valuable a segment is: a described name leads with one of them
VALUE_CONCEPTS = ("value", "spend")

#: smallest |lift| (sd) a feature needs to enter a name
MIN_LIFT = 0.25

#: a lift this strong (sd) on something the rule does not speak of is part of the name, tie or not
STRONG_LIFT = 1.5


class SegmentName(NamedTuple):
    """Name of one segment: the ``name``, where it came from (``source``: ``"rule"``,
    ``"described"``, ``"fixed"`` or ``"config"``), the persona ``rule`` behind it (None unless
    ``source="rule"``), its rule ``score``, the ``qualifiers`` added to the base name and the
    ``evidence`` (lifts and churn figures) it rests on."""

    name: str
    source: str
    rule: str | None
    score: float
    qualifiers: list[str]
    evidence: list[str]


def _concept(feature: str) -> str:
    if feature in PHRASES:
        return PHRASES[feature][0]
    return feature.split("=", 1)[0]  # a categorical attribute counts once


def phrase(feature: str, z: float) -> str | None:
    """A lift as a short phrase for a name: ``high spend``, ``lapsed``, ``electronics``, ``Contract: Two year``."""
    if feature in PHRASES:
        return PHRASES[feature][1 if z > 0 else 2]
    for prefix in ("share_category_", "share_channel_"):
        if feature.startswith(prefix):  # how they buy: what and where
            what = feature[len(prefix):].replace("_", " ")
            via = "via " if prefix == "share_channel_" else ""
            return f"{via}{what}" if z > 0 else f"rarely {via}{what}"
    if feature.startswith("share_event_"):
        what = feature[len("share_event_"):].replace("_", " ")
        return f"many {what} events" if z > 0 else f"few {what} events"
    if "=" in feature and z < 0:
        return None  # "rarely region: North" names a segment by what it is not
    return describe_lift(feature, z)


def _candidates(lifts: Mapping[str, float], skip: set[str],
                relative: Mapping[str, float] | None = None) -> list[tuple[str, float, str]]:
    """``(feature, z, phrase)`` per concept, strongest first, skipping the concepts in ``skip``.

    With ``relative`` (feature -> the segment's lift minus its group's mean), ordered by how much
    the segment differs from its group instead, on features where it differs in its own direction.
    """
    order = lifts if relative is None else relative
    out, seen = [], set(skip)
    for f, rz in sorted(((f, float(z)) for f, z in order.items() if np.isfinite(z)), key=lambda kv: (-abs(kv[1]), kv[0])):
        concept, z = _concept(f), float(lifts[f])
        if concept in seen or abs(z) < MIN_LIFT or (relative is not None and np.sign(z) != np.sign(rz)):
            continue
        text = phrase(f, z)
        if text:
            seen.add(concept)
            out.append((f, z, text))
    return out


def describe(lifts: Mapping[str, float], n: int = 2) -> tuple[str, list[tuple[str, float, str]]]:
    """A name from the strongest features, value tier first: ``"High spend, frequent returns"``.

    Returns the name and the ``(feature, z, phrase)`` it was made of.
    """
    cands = _candidates(lifts, set())
    value = [c for c in cands if _concept(c[0]) in VALUE_CONCEPTS and abs(c[1]) >= 0.5][:1]
    parts = value + [c for c in cands if c not in value][: n - len(value)]
    if not parts:
        return "Average customers", []
    text = ", ".join(p[2] for p in parts)
    return text[0].upper() + text[1:], parts


def _evidence_text(feature: str, z: float) -> str:
    """A lift in words; the value and churn pseudo-lifts as what they stand for."""
    if feature == "expected_value":
        return f"expected value per customer {2.0 ** z:.1f}x the average"
    if feature == "churn_rate":
        return f"churn {abs(z):.1f} sd {'above' if z >= 0 else 'below'} the base rate"
    return lift_text(feature, z)


def _churn_z(rate: float, overall: float) -> float:
    """The churn rate as a lift: the difference in sd of a 0/1 label with the base rate."""
    sd = np.sqrt(overall * (1 - overall))
    return float((rate - overall) / sd) if sd > 0 else 0.0


def churn_fits(direction: str | None, rate: float, overall: float, tolerance: float) -> bool:
    """Whether a name implying churn ``direction`` fits a segment churning at ``rate`` (base ``overall``)."""
    if direction is None or not (np.isfinite(rate) and np.isfinite(overall)) or overall <= 0:
        return True
    if direction == "below":
        return rate <= overall * tolerance
    return rate >= overall / tolerance


def name_segments(lifts_by_segment: Mapping[int, Mapping[str, float]],
                  rules: Sequence[Mapping[str, Any]] | None = None, *,
                  churn_rate: Mapping[int, float] | None = None, overall_churn: float = float("nan"),
                  churn_tolerance: float = 1.25, churn_high: float = 1.5,
                  value_ratio: Mapping[int, float] | None = None,
                  words: Mapping[int, Sequence[str]] | None = None,
                  fixed: Mapping[int, tuple[str, list[str]]] | None = None,
                  overrides: Mapping[int, str] | None = None) -> dict[int, SegmentName]:
    """One distinct name per segment that fits its lifts and its churn (see the module docstring).

    Parameters
    ----------
    lifts_by_segment : mapping
        ``segment -> {feature: lift_z}``.
    rules : list of mappings, optional
        Persona rules (default :data:`gpuseg.profile.personas.DEFAULT_RULES`).
    churn_rate : mapping, optional
        ``segment -> observed churn rate`` (NaN where unknown).
    overall_churn : float
        Churn rate of all customers with a known label.
    churn_tolerance : float, default 1.25
        A name implying churn below (above) average is barred beyond this ratio to the base rate.
    churn_high : float, default 1.5
        A churn ratio at which a name that implies nothing about churn says ``high churn``.
    value_ratio : mapping, optional
        ``segment -> expected value per customer / the average`` (NaN: not estimated). It enters
        the names as the lift ``expected_value`` = log2(ratio): twice the average value counts as
        1 sd, like a spend lift, since expected value is too skewed for a z-score to say much.
    words : mapping, optional
        ``segment -> distinctive words``, best first (a tie-breaker after the features).
    fixed : mapping, optional
        ``segment -> (base name, evidence)`` decided elsewhere (e.g. customers with no history yet);
        still told apart from each other.
    overrides : mapping, optional
        ``segment -> name`` given by the user, kept as they are.

    Returns
    -------
    dict
        ``segment -> SegmentName``.
    """
    check_real("name_segments", "churn_tolerance", churn_tolerance, low=1.0)
    check_real("name_segments", "churn_high", churn_high, low=1.0)
    checked = validate_rules(rules)
    churn_rate = dict(churn_rate or {})
    words = dict(words or {})
    fixed = dict(fixed or {})
    overrides = {int(s): str(n) for s, n in (overrides or {}).items()}
    base: dict[int, dict[str, Any]] = {}
    for seg, lifts in lifts_by_segment.items():
        seg = int(seg)
        rate = float(churn_rate.get(seg, np.nan))
        lifts = dict(lifts)
        if np.isfinite(rate) and np.isfinite(overall_churn):
            lifts["churn_rate"] = _churn_z(rate, overall_churn)
        value = float((value_ratio or {}).get(seg, np.nan))
        if np.isfinite(value) and value > 0:
            lifts["expected_value"] = float(np.log2(value))
        ratio = rate / overall_churn if np.isfinite(rate) and overall_churn > 0 else float("nan")
        churn_note = [f"churn {rate:.0%} vs {overall_churn:.0%} overall"] if np.isfinite(ratio) else []
        if seg in fixed:
            name, evidence = fixed[seg]
            base[seg] = {"name": name, "source": "fixed", "rule": None, "score": 0.0, "skip": set(),
                         "qualifiers": [], "evidence": list(evidence), "lifts": lifts}
            continue
        chosen = None
        for rule, score in rank_rules(lifts, checked):
            if churn_fits(rule["churn"], rate, overall_churn, churn_tolerance):
                chosen = (rule, score)
                break
            log.info("segment %d: rule %r skipped, its churn %s average contradicts %s", seg, rule["name"],
                     rule["churn"], churn_note[0])
        if chosen is not None:
            rule, score = chosen
            # what the rule already says ("high spend") is no qualifier; an "about average"
            # condition (abs<) leaves room for one ("Steady regulars, high spend")
            used = {_concept(f) for c in rule["conditions"] if not c["op"].startswith("abs") for f in c["feature"]}
            present = (next((f for f in c["feature"] if np.isfinite(lifts.get(f, np.nan))), None)
                       for c in rule["conditions"])
            evidence = [_evidence_text(f, lifts[f]) for f in present if f is not None][:4]
            entry = {"name": rule["name"], "source": "rule", "rule": rule["name"], "score": round(score, 6),
                     "skip": used, "implies": rule["churn"], "evidence": evidence}
        else:
            name, parts = describe({k: v for k, v in lifts.items() if k != "churn_rate"})
            entry = {"name": name, "source": "described", "rule": None, "score": 0.0,
                     "skip": {_concept(f) for f, _, _ in parts}, "implies": None,
                     "evidence": [_evidence_text(f, z) for f, z, _ in parts]}
        entry.update(qualifiers=[], lifts=lifts)
        if entry["source"] == "rule":  # "Steady regulars" that buy books 3 sd above average say so
            strong = [c for c in _candidates({f: z for f, z in lifts.items() if f != "churn_rate"}, entry["skip"])
                      if abs(c[1]) >= STRONG_LIFT][:1]
            for f, z, text in strong:
                entry["qualifiers"].append(text)
                entry["skip"].add(_concept(f))
                entry["evidence"].append(_evidence_text(f, z))
        if entry["implies"] is None and np.isfinite(ratio) and ratio >= churn_high:
            entry["qualifiers"].append("high churn")
            entry["skip"].add("churn")
        entry["evidence"] += churn_note
        if entry["implies"]:  # "Dormant customers, high churn" says nothing new
            entry["skip"].add("churn")
        base[seg] = entry
    for entry in base.values():
        entry["full"] = ", ".join([entry["name"], *entry["qualifiers"]])
    _break_ties(base, words, taken=set(overrides.values()))
    out = {}
    for seg in sorted(base):
        e = base[seg]
        if seg in overrides:
            out[seg] = SegmentName(overrides[seg], "config", None, 0.0, [], e["evidence"])
        else:
            out[seg] = SegmentName(e["full"], e["source"], e["rule"], e["score"], e["qualifiers"], e["evidence"])
    return out


def _break_ties(base: dict[int, dict[str, Any]], words: Mapping[int, Sequence[str]], taken: set[str]) -> None:
    """Give every segment of a group sharing a name its next distinguishing feature (in place)."""
    groups: dict[str, list[int]] = {}
    for seg, e in base.items():
        groups.setdefault(e["full"], []).append(seg)
    for full, members in groups.items():
        if len(members) == 1 and full not in taken:
            continue
        features = {f for s in members for f in base[s]["lifts"]}
        # a feature a segment lacks counts as average (0) there
        centre = {f: float(np.mean([base[s]["lifts"].get(f, 0.0) for s in members])) if len(members) > 1 else 0.0
                  for f in features}
        chosen: set[str] = set()
        for seg in sorted(members):
            e = base[seg]
            relative = {f: float(z) - centre[f] for f, z in e["lifts"].items() if np.isfinite(z)}
            options = [(text, _evidence_text(f, e["lifts"][f]))
                       for f, _z, text in _candidates(e["lifts"], e["skip"], relative)]
            options[2:2] = [(f'say "{w}"', f'"{w}" is among its most distinctive words')
                            for w in list(words.get(seg, []))[:1]]
            pick = next((o for o in options if o[0] not in chosen), None)
            if pick is not None:
                chosen.add(pick[0])
                e["qualifiers"].append(pick[0])
                e["evidence"].append(pick[1])
                e["full"] = f"{e['full']}, {pick[0]}"
    # whatever is still equal (or equal to a configured name) gets its id
    seen: dict[str, int] = {}
    for seg in sorted(base):
        e = base[seg]
        if e["full"] in seen or e["full"] in taken:
            e["full"] = f"{e['full']} (segment {seg})"
        seen[e["full"]] = seg

