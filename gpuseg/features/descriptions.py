"""A readable description of every RFM+ feature, for people and for the plain-words audience matcher.

The features are defined in :mod:`gpuseg.features.rfm`; their meaning is spelt here, next to them,
once. Each description says what the number is and, in a marketer's words, what a high or low
value means ("inactive", "big spenders"), because ``gpuseg audience`` matches plain-language
requests against these texts. Tags group features that a modifier word refers to: "declining"
looks only at ``trend`` features, "recent" and "inactive" at ``recency`` ones, "new" at ``tenure``.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Description(NamedTuple):
    """What a column means (``text``) and the groups it belongs to (``tags``)."""

    text: str
    tags: frozenset[str] = frozenset()


def _d(text: str, *tags: str) -> Description:
    return Description(text, frozenset(tags))


#: the features that do not depend on fitted vocabularies (``rfm.BASE_FEATURES`` and the text counts)
FEATURE_DESCRIPTIONS: dict[str, Description] = {
    "recency_days": _d("recency: days since the last purchase; low means bought recently, high means a "
                       "lapsed buyer", "recency"),
    "frequency": _d("purchases: number of purchases made so far (purchase occasions, orders), how often they "
                    "buy; frequent repeat buyers, loyal customers who buy often", "count"),
    "n_purchase_events": _d("number of purchase lines, items and orders bought", "count"),
    "monetary_sum": _d("total spend: money spent, gross purchase amount, revenue, big spenders", "money"),
    "monetary_net": _d("net spend after returns: money spent minus refunds", "money"),
    "monetary_mean": _d("average order value: spend per purchase, basket size", "money"),
    "tenure_days": _d("tenure: days since the first activity, how long they have been a customer; new "
                      "customers have a short tenure, long-standing ones a long tenure", "tenure"),
    "days_since_last_event": _d("days since the last activity of any kind (visit, view, purchase); inactive, "
                                "dormant customers have many", "recency"),
    "n_events": _d("activity: number of events, visits, views and purchases; engagement, active "
                   "customers", "count"),
    "interpurchase_mean_days": _d("mean days between purchases, the buying cycle; short means buys often"),
    "interpurchase_std_days": _d("variability of the days between purchases, irregular buying"),
    "interpurchase_median_days": _d("median days between purchases"),
    "trend_purchases": _d("purchase trend: change in the number of purchases recently against the period "
                          "before, from -1 to 1; buying declining or growing", "trend"),
    "trend_spend": _d("spend trend: change in money spent recently against the period before, from -1 to 1; "
                      "spending declining or growing", "trend"),
    "trend_activity": _d("engagement trend: change in activity, visits and events recently against the "
                         "period before, from -1 to 1; engagement declining or growing", "trend"),
    "n_returns": _d("number of returns: products sent back, refunds", "count"),
    "return_amount": _d("money returned: value of the refunded returns", "money"),
    "n_tickets": _d("number of support tickets: complaints, contacts with customer service", "count"),
    "n_reviews": _d("number of product reviews written, reviewers", "count"),
    "n_texts": _d("number of texts written: reviews and support tickets", "count"),
    "mean_rating": _d("average review rating in stars: satisfaction; happy customers rate high, unhappy or "
                      "dissatisfied ones rate low", "rating"),
}

_SHARE = {
    "event": "share of the customer's events that are {v} events, how often they {v}",
    "channel": "share of the customer's activity through the {v} channel: shops via the {v}, {v} users",
    "category": "share of the customer's activity in the {v} category, buys {v}, {v} shoppers",
}


def readable_name(name: str) -> str:
    """``TotalCharges`` / ``total_charges`` / ``total-charges`` -> ``total charges``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(name))
    return re.sub(r"[^A-Za-z0-9]+", " ", spaced).strip().lower() or str(name)


def describe_feature(name: str) -> Description | None:
    """The description of an RFM+ feature column, or None for a column the featurizer does not make.

    Parameters
    ----------
    name : str
        A column of ``features/features.parquet`` (``recency_days``, ``share_channel_app``, ...).

    Returns
    -------
    Description or None
        Attribute columns (copied from the customers table) are not features: None.
    """
    if name in FEATURE_DESCRIPTIONS:
        return FEATURE_DESCRIPTIONS[name]
    if name.startswith("n_texts_"):
        source = readable_name(name[len("n_texts_"):])
        return _d(f"number of {source} texts written", "count")
    match = re.fullmatch(r"share_(event|channel|category)_(.+)", name)
    if match:
        kind, value = match.group(1), readable_name(match.group(2))
        if value == "other":
            return _d(f"share of the customer's events with a less common {kind}", "share")
        return _d(_SHARE[kind].format(v=value), "share")
    return None
