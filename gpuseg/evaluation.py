"""Scoring the pipeline against the synthetic generator's planted personas (benchmarks and tests).

Everything that knows what the synthetic data were made of lives here, not in library code or
jobs: which persona-rule names stand for which planted persona, which personas differ only in the
order of their events, and how to score segments or embeddings against ``ground_truth.parquet``.
No job imports this module (a test checks it), so real data never meets these assumptions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.journey.baselines import kmeans_labels
from gpuseg.profile.lifts import check_segments
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.metrics import adjusted_rand_index

#: the synthetic personas that differ only in the order of their events
ORDER_PAIR = ("gadget_planner", "gadget_impulse")

#: Default persona-rule name (gpuseg.profile.personas.DEFAULT_RULES) -> the planted persona(s) it
#: stands for. The three steady regulars share one tabular behaviour, so the rules (which read
#: tabular lifts) name them alike.
EXPECTED_PERSONA_NAMES: dict[str, str | list[str]] = {
    "High-value loyalists": "high_value_loyalist",
    "At-risk former actives": "at_risk_former_active",
    "Price-sensitive deal hunters": "deal_hunter",
    "New customers": "new_customer",
    "Unhappy support-heavy customers": "support_heavy_unhappy",
    "Dormant customers": "dormant",
    "Steady regulars": ["eco_planner", "gadget_planner", "gadget_impulse"],
}


def match_report(assigned_names: Mapping[int, str], segments, truth_personas,
                 name_to_persona: Mapping[str, str | Sequence[str]]) -> dict[str, Any]:
    """Compare assigned persona names with planted personas.

    Parameters
    ----------
    assigned_names : mapping
        ``segment -> persona name`` (e.g. ``{s: a.name for s, a in assign_personas(...).items()}``).
    segments : array of int, shape (n,)
        Segment of each customer.
    truth_personas : array of str, shape (n,)
        Planted persona of each customer.
    name_to_persona : mapping
        Rule name -> the planted persona (or list of personas) it stands for, e.g.
        :data:`EXPECTED_PERSONA_NAMES`.

    Returns
    -------
    dict
        ``segments``: per segment ``segment``, ``name``, ``majority_persona``, ``majority_share``,
        ``expected`` (personas the name stands for) and ``match``; plus ``n_matched``,
        ``n_segments`` and ``match_rate``.
    """
    seg = check_segments(segments)
    truth = np.asarray(truth_personas).astype(str)
    if truth.shape != seg.shape:
        raise UserInputError(f"The 'truth_personas' parameter has {truth.shape[0]} entries but "
                             f"'segments' has {seg.shape[0]}; they must be aligned.")
    rows = []
    for s in sorted(assigned_names):
        members = truth[seg == s]
        name = assigned_names[s]
        target = name_to_persona.get(name, [])
        expected = [target] if isinstance(target, str) else list(target)
        if members.size:
            persona, count = Counter(members.tolist()).most_common(1)[0]
            share = count / members.size
        else:
            persona, share = None, 0.0
        rows.append({"segment": int(s), "name": name, "majority_persona": persona,
                     "majority_share": float(share), "expected": expected,
                     "match": persona is not None and persona in expected})
    n_matched = sum(r["match"] for r in rows)
    return {"segments": rows, "n_matched": n_matched, "n_segments": len(rows),
            "match_rate": n_matched / len(rows) if rows else float("nan")}


def persona_ari(embeddings: np.ndarray, customer_ids: pa.Array, truth: pa.Table, *,
                mask: np.ndarray | None = None, seed: int = 0) -> dict[str, Any] | None:
    """ARI of k-means on per-customer embeddings against the planted personas.

    Parameters
    ----------
    embeddings : ndarray, shape (n, d)
        One row per customer of ``customer_ids``.
    customer_ids : pyarrow.Array
        Ids of the rows.
    truth : pyarrow.Table
        ``ground_truth.parquet`` (``customer_id``, ``persona``).
    mask : ndarray of bool, optional
        Rows to score (e.g. customers with events).
    seed : int
        Seed of the k-means runs.

    Returns
    -------
    dict or None
        ``n_customers``, ``n_personas``, ``all_personas`` (ARI with k = number of personas) and,
        when both are present, ``order_pair`` (ARI of a 2-means on the :data:`ORDER_PAIR` customers
        alone); None when fewer than 10 customers can be scored.
    """
    index = pc.index_in(customer_ids, value_set=truth["customer_id"].combine_chunks())
    known = index.is_valid().to_numpy(zero_copy_only=False)
    if mask is not None:
        known &= np.asarray(mask, dtype=bool)
    if known.sum() < 10:
        return None
    persona = np.asarray(truth["persona"].to_numpy(zero_copy_only=False), dtype=object)
    persona = persona[index.to_numpy(zero_copy_only=False)[known].astype(np.int64)]
    X = np.asarray(embeddings)[known]
    names = sorted(set(persona.tolist()))
    result: dict[str, Any] = {"n_customers": int(known.sum()), "n_personas": len(names)}
    result["all_personas"] = adjusted_rand_index(kmeans_labels(X, len(names), seed=seed), persona)
    if all(p in names for p in ORDER_PAIR):
        pair = np.isin(persona, ORDER_PAIR)
        result["order_pair"] = {
            "personas": list(ORDER_PAIR),
            "n_customers": int(pair.sum()),
            "ari": adjusted_rand_index(kmeans_labels(X[pair], 2, seed=seed), persona[pair]),
        }
    return result
