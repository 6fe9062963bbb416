"""Rule-based persona names and next-best actions from per-segment lifts.

Rules are plain data (lists and dicts, so they can live in a YAML config)::

    {"name": "High-value loyalists",
     "conditions": [{"feature": "monetary_sum", "op": ">", "value": 0.8}, ...],
     "action": "Reward and retain: ..."}

Each condition compares a segment's lift (a z-score, see :mod:`gpuseg.profile.lifts`) with a
threshold. ``feature`` may be a list of alternatives; the first one present in the segment's lifts
is used (``share_event_coupon`` on synthetic data, ``share_event_discount`` elsewhere). ``op`` is
one of ``>``, ``<`` (signed lift), ``abs<`` and ``abs>`` (size of the lift, for "nothing special"
rules). A rule matches a segment when every condition holds; a condition whose features are all
absent fails. Its *score* is the mean margin by which the conditions are exceeded (in sd), so
among several matching rules the one the segment satisfies most clearly wins (ties: earlier rule).
A rule may say what its name implies for churn (``"churn": "above"`` or ``"below"`` the
population's rate): :func:`churn_contradictions` then lists the segments whose observed churn
says otherwise, so a "Dormant" segment that nobody left is reported, not trusted.
A segment that matches no rule gets a descriptive fallback name from its strongest lifts,
``"Segment 3: high recency / low frequency"``, and :data:`FALLBACK_ACTION` (a generic nurture).

Defaults (:data:`DEFAULT_RULES`) are written for retail data with the RFM+ features of
:mod:`gpuseg.features.rfm`; thresholds are in population standard deviations:

=================================  =======================================================
High-value loyalists               monetary_sum > 0.8, frequency > 0.5, recency_days < 0
At-risk former actives             trend_activity (or trend_purchases) < -0.6, recency > 0
Dormant customers                  recency_days > 1.0, frequency < 0
New customers                      tenure_days < -1.0
Price-sensitive deal hunters       coupon/discount/promo share > 0.7, monetary_mean < -0.3
Bargain basket shoppers            monetary_mean < -0.8, frequency > 0.3
Unhappy support-heavy customers    n_tickets (or ticket share) > 0.8, mean_rating < -0.5
Frequent returners                 n_returns (or return share) > 1.0
Big-ticket occasional buyers       monetary_mean > 1.0, frequency < 0
VIP top spenders                   monetary_sum > 1.5, recency < 0.5
Growing customers                  trend_activity (or trend_purchases) > 0.6, recency < 0,
                                   tenure > -0.5
Occasional light buyers            frequency < -0.3, monetary_sum < -0.3, |recency| < 1.0
Steady regulars                    |lift| < 0.5 on recency, frequency, spend, basket, tenure,
                                   activity trend, tickets and returns
=================================  =======================================================

:func:`assign_personas` gives each segment its best rule; :func:`gpuseg.profile.naming.name_segments`
builds on :func:`rank_rules` to give distinct names that do not contradict the observed churn.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from gpuseg.runtime.errors import UserInputError

log = logging.getLogger(__name__)

OPS = (">", "<", "abs<", "abs>")

#: the names a coupon / discount share takes in different data (the first present is used)
COUPON_FEATURES = ["share_event_coupon", "share_event_discount", "share_event_promo",
           "share_event_promotion", "share_event_voucher"]

DEFAULT_RULES: list[dict[str, Any]] = [
    {"name": "High-value loyalists",
     "conditions": [{"feature": "monetary_sum", "op": ">", "value": 0.8},
                    {"feature": "frequency", "op": ">", "value": 0.5},
                    {"feature": "recency_days", "op": "<", "value": 0.0}],
     "action": "Reward and retain: loyalty perks, early access and referral invitations; "
               "avoid blanket discounts.",
     "churn": "below"},
    {"name": "At-risk former actives",
     "conditions": [{"feature": ["trend_activity", "trend_purchases"], "op": "<", "value": -0.6},
                    {"feature": "recency_days", "op": ">", "value": 0.0}],
     "action": "Win back now: personal check-in and a time-limited offer on their usual "
               "categories before they lapse.",
     "churn": "above"},
    {"name": "Dormant customers",
     "conditions": [{"feature": ["recency_days", "days_since_last_event"], "op": ">", "value": 1.0},
                    {"feature": ["frequency", "n_events"], "op": "<", "value": 0.0}],
     "action": "Low-cost reactivation campaign (email, strong incentive); suppress from "
               "expensive channels if there is no response.",
     "churn": "above"},
    {"name": "New customers",
     "conditions": [{"feature": "tenure_days", "op": "<", "value": -1.0}],
     "action": "Onboard: welcome series, second-purchase incentive and product discovery."},
    {"name": "Price-sensitive deal hunters",
     "conditions": [{"feature": COUPON_FEATURES, "op": ">", "value": 0.7},
                    {"feature": "monetary_mean", "op": "<", "value": -0.3}],
     "action": "Target with promotions and bundles; protect margin with coupon caps and "
               "private-label alternatives."},
    {"name": "Bargain basket shoppers",
     "conditions": [{"feature": "monetary_mean", "op": "<", "value": -0.8},
                    {"feature": "frequency", "op": ">", "value": 0.3}],
     "action": "Grow the basket: bundles, free-shipping thresholds and cross-sell."},
    {"name": "Unhappy support-heavy customers",
     "conditions": [{"feature": ["n_tickets", "share_event_support_ticket"], "op": ">", "value": 0.8},
                    {"feature": "mean_rating", "op": "<", "value": -0.5}],
     "action": "Service recovery: route to senior support, fix the root causes they raise, "
               "follow up personally; no marketing pressure until resolved."},
    {"name": "Frequent returners",
     "conditions": [{"feature": ["n_returns", "share_event_return"], "op": ">", "value": 1.0}],
     "action": "Reduce returns: better size and product guidance, review return policy costs."},
    {"name": "Big-ticket occasional buyers",
     "conditions": [{"feature": "monetary_mean", "op": ">", "value": 1.0},
                    {"feature": "frequency", "op": "<", "value": 0.0}],
     "action": "Premium recommendations and timely replenishment or upgrade reminders."},
    {"name": "VIP top spenders",
     "conditions": [{"feature": "monetary_sum", "op": ">", "value": 1.5},
                    {"feature": ["recency_days", "days_since_last_event"], "op": "<", "value": 0.5}],
     "action": "VIP care: a named contact, early access and service guarantees; no discounts needed.",
     "churn": "below"},
    {"name": "Growing customers",
     "conditions": [{"feature": ["trend_activity", "trend_purchases"], "op": ">", "value": 0.6},
                    {"feature": ["recency_days", "days_since_last_event"], "op": "<", "value": 0.0},
                    {"feature": "tenure_days", "op": ">", "value": -0.5}],  # new customers all "grow"
     "action": "Upsell while interest grows: next-tier products and a loyalty programme invitation.",
     "churn": "below"},
    {"name": "Occasional light buyers",
     "conditions": [{"feature": ["frequency", "n_events"], "op": "<", "value": -0.3},
                    {"feature": "monetary_sum", "op": "<", "value": -0.3},
                    {"feature": ["recency_days", "days_since_last_event"], "op": "abs<", "value": 1.0}],
     "action": "Nurture cheaply: newsletters and seasonal reminders, no costly channels."},
    {"name": "Steady regulars",
     "conditions": [{"feature": f, "op": "abs<", "value": 0.5}
                    for f in ("recency_days", "frequency", "monetary_sum", "monetary_mean",
                              "tenure_days", "trend_activity", "n_tickets", "n_returns")],
     "action": "Keep engaged: personalised recommendations and cross-sell in their favourite "
               "categories.",
     "churn": "below"},
]

FALLBACK_ACTION = ("Nurture: personalised recommendations in their favourite categories, and watch "
                   "their churn and value for a clearer signal.")


class PersonaAssignment(NamedTuple):
    """Persona of one segment: ``name``, the ``rule`` that matched (None for the fallback name),
    its ``score`` (mean margin in sd; 0 for the fallback) and the suggested ``action``."""

    name: str
    rule: str | None
    score: float
    action: str


def validate_rules(rules: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Check rules and return them as plain dicts (raises :class:`UserInputError` naming the rule).

    ``None`` stands for :data:`DEFAULT_RULES`.
    """
    if rules is None:
        rules = DEFAULT_RULES
    if isinstance(rules, str | bytes) or not isinstance(rules, Sequence):
        raise UserInputError(f"The 'rules' parameter must be a list of rule mappings, got {type(rules).__name__}.")
    out = []
    for i, rule in enumerate(rules):
        where = f"rule {i} ({rule.get('name', '?')!r})" if isinstance(rule, Mapping) else f"rule {i}"
        if not isinstance(rule, Mapping) or not isinstance(rule.get("name"), str) or not rule["name"]:
            raise UserInputError(f"The 'rules' parameter: {where} needs a non-empty string 'name'.")
        conds = rule.get("conditions")
        if not isinstance(conds, Sequence) or isinstance(conds, str) or not conds:
            raise UserInputError(f"The 'rules' parameter: {where} needs a non-empty list 'conditions'.")
        clean = []
        for c in conds:
            if not isinstance(c, Mapping):
                raise UserInputError(f"The 'rules' parameter: {where} has a condition that is not a mapping: {c!r}.")
            feat = c.get("feature")
            feats = [feat] if isinstance(feat, str) else list(feat) if isinstance(feat, Sequence) else []
            if not feats or not all(isinstance(f, str) and f for f in feats):
                raise UserInputError(f"The 'rules' parameter: {where} has a condition whose 'feature' "
                                     f"is not a name or a list of names: {feat!r}.")
            if c.get("op") not in OPS:
                raise UserInputError(f"The 'rules' parameter: {where} has op {c.get('op')!r}; "
                                     f"expected one of {list(OPS)}.")
            value = c.get("value")
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise UserInputError(f"The 'rules' parameter: {where} has a non-numeric 'value': {value!r}.")
            clean.append({"feature": feats, "op": c["op"], "value": float(value)})
        churn = rule.get("churn")
        if churn not in (None, "above", "below"):
            raise UserInputError(f"The 'rules' parameter: {where} has churn {churn!r}; expected 'above', 'below' "
                                 "or none.")
        out.append({"name": rule["name"], "conditions": clean, "action": str(rule.get("action") or FALLBACK_ACTION),
                    "churn": churn})
    return out


def _margin(lift: float, op: str, value: float) -> float:
    """How far past the threshold the lift is (positive when the condition holds)."""
    if op == ">":
        return lift - value
    if op == "<":
        return value - lift
    if op == "abs<":
        return value - abs(lift)
    return abs(lift) - value  # abs>


def rule_score(lifts: Mapping[str, float], rule: Mapping[str, Any]) -> float | None:
    """Mean margin of a (validated) rule on one segment's lifts, or None when it does not match."""
    margins = []
    for c in rule["conditions"]:
        feat = next((f for f in c["feature"] if f in lifts and np.isfinite(lifts[f])), None)
        if feat is None:
            return None
        m = _margin(float(lifts[feat]), c["op"], c["value"])
        if not m > 0:
            return None
        margins.append(m)
    return float(np.mean(margins))


def rank_rules(lifts: Mapping[str, float], rules: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    """Every (validated) rule that matches one segment, with its score, best first (ties: earlier rule)."""
    scored = [(i, rule, rule_score(lifts, rule)) for i, rule in enumerate(rules)]
    ranked = sorted(((i, rule, s) for i, rule, s in scored if s is not None), key=lambda t: (-t[2], t[0]))
    return [(rule, s) for _, rule, s in ranked]


def humanize(feature: str) -> str:
    """Readable feature name: ``share_event_coupon`` -> ``coupon share``, ``recency_days`` -> ``recency``,
    a categorical indicator ``Contract=Month-to-month`` -> ``Contract = Month-to-month share``."""
    if "=" in feature:
        column, value = feature.split("=", 1)
        return f"{column.removeprefix('attr_').replace('_', ' ')} = {value} share"
    for prefix in ("share_event_", "share_channel_", "share_category_"):
        if feature.startswith(prefix):
            return f"{feature[len(prefix):].replace('_', ' ')} share"
    special = {"recency_days": "recency", "tenure_days": "tenure", "monetary_sum": "total spend",
               "monetary_net": "net spend", "monetary_mean": "basket value",
               "mean_rating": "rating", "n_tickets": "tickets", "n_returns": "returns",
               "n_reviews": "reviews", "n_events": "activity"}
    return special.get(feature, feature.replace("_", " "))


def lift_text(feature: str, z: float) -> str:
    """``"recency 2.1 sd above average"`` for a lift of +2.1 on ``recency_days``: evidence in words."""
    return f"{humanize(feature)} {abs(z):.1f} sd {'above' if z >= 0 else 'below'} average"


def describe_lift(feature: str, z: float) -> str:
    """One lift in words: ``high tenure``, ``low recency``, ``Contract: Two year``, ``rarely Partner: Yes``."""
    if "=" in feature:
        column, value = feature.split("=", 1)
        said = f"{column.removeprefix('attr_').replace('_', ' ')}: {value}"
        return said if z > 0 else f"rarely {said}"
    return f"{'high' if z > 0 else 'low'} {humanize(feature)}"


def fallback_name(segment: int, lifts: Mapping[str, float]) -> str:
    """``"Segment s: <strongest lift> / <next strongest>"`` in words, from two different columns.

    The two strongest lifts by size, so a segment is named after what sets it apart most; a
    categorical attribute counts once (``Partner = Yes`` up is ``Partner = No`` down).
    """
    finite = sorted(((f, z) for f, z in lifts.items() if np.isfinite(z) and z != 0), key=lambda kv: -abs(kv[1]))
    parts, columns = [], set()
    for feature, z in finite:
        column = feature.split("=", 1)[0]
        if column in columns:
            continue
        columns.add(column)
        parts.append(describe_lift(feature, z))
        if len(parts) == 2:
            break
    return f"Segment {segment}: " + (" / ".join(parts) if parts else "average on every feature")


def assign_personas(lifts_by_segment: Mapping[int, Mapping[str, float]],
                    rules: Sequence[Mapping[str, Any]] | None = None,
                    actions: Mapping[str, str] | None = None) -> dict[int, PersonaAssignment]:
    """Name each segment with the best-matching rule.

    Parameters
    ----------
    lifts_by_segment : mapping
        ``segment -> {feature: lift_z}`` (see :func:`gpuseg.profile.lifts.lifts_by_segment`).
    rules : list of mappings, optional
        Persona rules (default :data:`DEFAULT_RULES`); see the module docstring for the format.
    actions : mapping, optional
        Persona name -> next-best action, overriding the rules' own ``action`` (a key
        ``"fallback"`` sets the action of fallback-named segments).

    Returns
    -------
    dict
        ``segment -> PersonaAssignment(name, rule, score, action)``.
    """
    checked = validate_rules(rules)
    actions = dict(actions or {})
    out: dict[int, PersonaAssignment] = {}
    for seg, lifts in lifts_by_segment.items():
        ranked = rank_rules(lifts, checked)
        best, best_score = ranked[0] if ranked else (None, 0.0)
        if best is None:
            name = fallback_name(int(seg), lifts)
            out[int(seg)] = PersonaAssignment(name, None, 0.0, actions.get("fallback", FALLBACK_ACTION))
        else:
            out[int(seg)] = PersonaAssignment(best["name"], best["name"], round(best_score, 6),
                                              actions.get(best["name"], best["action"]))
        log.debug("segment %s -> %s (score %.3f)", seg, out[int(seg)].name, out[int(seg)].score)
    return out


def churn_contradictions(assignments: Mapping[int, PersonaAssignment], rules: Sequence[Mapping[str, Any]] | None,
                         churn_rate: Sequence[float], overall_rate: float) -> list[str]:
    """Segments whose persona name implies churn above (or below) average while the data say otherwise.

    Parameters
    ----------
    assignments : mapping
        ``segment -> PersonaAssignment`` from :func:`assign_personas`.
    rules : list of mappings, optional
        The rules they were assigned with (default :data:`DEFAULT_RULES`).
    churn_rate : sequence of float
        Observed churn rate of each segment (NaN where unknown).
    overall_rate : float
        Churn rate of all customers with a known label.

    Returns
    -------
    list of str
        One sentence per contradiction, for the log and the report.
    """
    expected = {r["name"]: r["churn"] for r in validate_rules(rules)}
    out = []
    for seg, a in sorted(assignments.items()):
        direction = expected.get(a.rule) if a.rule else None
        rate = float(churn_rate[seg])
        if direction is None or not np.isfinite(rate) or not np.isfinite(overall_rate):
            continue
        if (direction == "above" and rate <= overall_rate) or (direction == "below" and rate >= overall_rate):
            out.append(f"segment {seg} is named '{a.name}' from its lifts, which implies churn {direction} "
                       f"average, but {rate:.0%} of it churned against {overall_rate:.0%} overall: read the "
                       "name with care")
    return out
