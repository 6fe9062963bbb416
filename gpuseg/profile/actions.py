"""A next-best action for every segment, drawn from its profile, with the evidence that triggered it.

:func:`next_best_action` reads one segment's lifts (z-scores), observed churn against the base
rate and value per customer against the average, and walks :data:`PLAYBOOK` in order: the first
play whose trigger fires is the action, and the figures that fired it are its evidence. Urgent
plays come first (an unhappy customer needs service before an offer; a lapsing high spender needs
a win-back before VIP perks). When nothing fires the action is ``nurture``, whose evidence says
why no stronger play applies, so every segment always has an action and a reason.

Thresholds are in population standard deviations for lifts and in ratios to the base rate for
churn and value (``churn_high=1.5``: half again the base churn rate).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from gpuseg.profile.personas import COUPON_FEATURES, lift_text


class NextBestAction(NamedTuple):
    """``kind`` (``"win-back"``, ``"retention offer"``, ...), the ``text`` to act on and the
    ``evidence`` (sentences with the figures that triggered it)."""

    kind: str
    text: str
    evidence: list[str]


#: kind -> default text of the action
TEXTS: dict[str, str] = {
    "service recovery": "Route to senior support, fix the root causes they raise and follow up "
                        "personally; no marketing pressure until resolved.",
    "win-back": "A personal check-in and a time-limited offer on their usual categories; suppress "
                "from expensive channels if there is no response.",
    "retention offer": "Reach out before they leave, with a loyalty reward or a plan that fits how "
                       "they buy now.",
    "VIP care": "A named contact, early access, loyalty perks and referral invitations; avoid "
                "blanket discounts.",
    "onboarding": "Welcome series, second-purchase incentive and product discovery.",
    "returns reduction": "Better size and product guidance; review what the returns cost.",
    "targeted promotions": "Promotions and bundles; protect margin with coupon caps.",
    "basket growth": "Bundles, free-shipping thresholds and cross-sell.",
    "upsell": "Premium recommendations and timely replenishment or upgrade reminders.",
    "nurture": "Personalised recommendations in their favourite categories; watch for a change in "
               "churn or value.",
}


class _Facts:
    """One segment's figures, with the lookups the plays share."""

    def __init__(self, lifts: Mapping[str, float], churn_rate: float, overall_churn: float,
                 value: float, overall_value: float):
        self.lifts = {f: float(z) for f, z in lifts.items() if np.isfinite(z)}
        self.churn, self.base = float(churn_rate), float(overall_churn)
        self.value, self.base_value = float(value), float(overall_value)

    def lift(self, *features: str) -> tuple[str | None, float]:
        """The first of ``features`` present, and its lift (0 when none is)."""
        f = next((f for f in features if f in self.lifts), None)
        return f, (self.lifts[f] if f else 0.0)

    def churn_ratio(self) -> float:
        ok = np.isfinite(self.churn) and np.isfinite(self.base) and self.base > 0
        return self.churn / self.base if ok else float("nan")

    def value_ratio(self) -> float:
        ok = np.isfinite(self.value) and np.isfinite(self.base_value) and self.base_value > 0
        return self.value / self.base_value if ok else float("nan")

    def churn_text(self) -> str:
        return f"churn {self.churn:.0%} vs {self.base:.0%} overall ({self.churn_ratio():.1f}x)"

    def value_text(self) -> str:
        return f"expected value per customer {self.value:,.0f} vs {self.base_value:,.0f} average " \
               f"({self.value_ratio():.1f}x)"


def _evidence(*pairs: tuple[str | None, float]) -> list[str]:
    return [lift_text(f, z) for f, z in pairs if f is not None]


def _service(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    tickets = x.lift("n_tickets", "share_event_support_ticket")
    rating = x.lift("mean_rating")
    if tickets[1] > t["lift"] or (rating[0] and rating[1] < -t["lift"]):
        return _evidence(tickets, rating)
    return None


def _win_back(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    recency = x.lift("recency_days", "days_since_last_event")
    ratio = x.churn_ratio()
    # long gaps alone are no lapse when the segment's customers were seen buying again in the
    # hold-out (churn far below the base, e.g. a store whose customers buy every few months)
    staying = np.isfinite(ratio) and ratio <= 1 / t["churn_high"]
    lapsed = recency[1] > t["lapsed"] and not staying
    leaving = np.isfinite(ratio) and ratio >= t["churn_high"] and recency[1] > 0
    if lapsed or leaving:
        return _evidence(recency, x.lift("frequency", "n_events")) + ([x.churn_text()] if np.isfinite(ratio) else [])
    return None


def _retention(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    ratio = x.churn_ratio()
    trend = x.lift("trend_activity", "trend_purchases")
    elevated = np.isfinite(ratio) and ratio >= t["churn_elevated"]
    if elevated or trend[1] < -t["trend"]:
        return ([x.churn_text()] if elevated else []) + (_evidence(trend) if trend[1] < 0 else [])
    return None


def _vip(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    spend = x.lift("monetary_sum", "monetary_net")
    ratio = x.value_ratio()
    if spend[1] > t["high_spend"] or (np.isfinite(ratio) and ratio >= t["value_high"]):
        return _evidence(spend) + ([x.value_text()] if np.isfinite(ratio) else [])
    return None


def _onboarding(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    tenure = x.lift("tenure_days")
    return _evidence(tenure) if tenure[1] < -t["new"] else None


def _returns(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    returns = x.lift("n_returns", "share_event_return")
    return _evidence(returns) if returns[1] > t["returns"] else None


def _promotions(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    deals = x.lift(*COUPON_FEATURES)
    return _evidence(deals) if deals[1] > t["deals"] else None


def _basket(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    freq, basket = x.lift("frequency", "n_events"), x.lift("monetary_mean")
    return _evidence(freq, basket) if freq[1] > 0.3 and basket[1] < -0.3 else None


def _upsell(x: _Facts, t: Mapping[str, float]) -> list[str] | None:
    basket, freq = x.lift("monetary_mean"), x.lift("frequency", "n_events")
    growing = x.lift("trend_activity", "trend_purchases")
    if (basket[1] > 1.0 and freq[1] < 0) or (growing[1] > t["trend"] and freq[0]):
        return _evidence(basket, freq) if basket[1] > 1.0 else _evidence(growing)
    return None


#: (kind, trigger) in priority order; a trigger returns its evidence, or None when it does not fire
PLAYBOOK: list[tuple[str, Callable[[_Facts, Mapping[str, float]], list[str] | None]]] = [
    ("service recovery", _service), ("win-back", _win_back), ("retention offer", _retention),
    ("VIP care", _vip), ("onboarding", _onboarding), ("returns reduction", _returns),
    ("targeted promotions", _promotions), ("basket growth", _basket), ("upsell", _upsell),
]

#: trigger thresholds (lifts in sd; churn and value as ratios to the base)
THRESHOLDS: dict[str, float] = {"lift": 0.8, "lapsed": 1.0, "churn_high": 1.5, "churn_elevated": 1.25,
                                "trend": 0.6, "high_spend": 1.0, "value_high": 2.0, "new": 1.0,
                                "returns": 1.0, "deals": 0.7}


def next_best_action(lifts: Mapping[str, float], *, churn_rate: float = float("nan"),
                     overall_churn: float = float("nan"), value: float = float("nan"),
                     overall_value: float = float("nan"), texts: Mapping[str, str] | None = None,
                     thresholds: Mapping[str, float] | None = None) -> NextBestAction:
    """The first play of :data:`PLAYBOOK` that fires for one segment, or ``nurture`` with the reason.

    Parameters
    ----------
    lifts : mapping
        ``feature -> lift_z`` of the segment.
    churn_rate, overall_churn : float, optional
        Observed churn of the segment and of all customers (NaN: unknown).
    value, overall_value : float, optional
        Mean expected value per customer of the segment and of all customers (NaN: not estimated).
    texts : mapping, optional
        ``kind -> text`` replacing :data:`TEXTS`.
    thresholds : mapping, optional
        Replacements for :data:`THRESHOLDS`.

    Returns
    -------
    NextBestAction
    """
    facts = _Facts(lifts, churn_rate, overall_churn, value, overall_value)
    t = {**THRESHOLDS, **(thresholds or {})}
    words = {**TEXTS, **(texts or {})}
    for kind, trigger in PLAYBOOK:
        evidence = trigger(facts, t)
        if evidence is not None:
            return NextBestAction(kind, words[kind], evidence or [kind])
    return NextBestAction("nurture", words["nurture"], _why_nurture(facts))


def _why_nurture(x: _Facts) -> list[str]:
    """Why no stronger play fired: the strongest lift, and churn near the base rate."""
    out = []
    if x.lifts:
        f, z = max(x.lifts.items(), key=lambda kv: (abs(kv[1]), kv[0]))
        out.append(f"no play fits: its strongest difference is {lift_text(f, z)}")
    else:
        out.append("no play fits: no feature differs from the average")
    if np.isfinite(x.churn_ratio()):
        out.append(x.churn_text())
    return out

