"""Several periods of the synthetic data: the same customers, some moving between personas.

Period 1 is the one-period generator's history, ending ``period_days * (periods - 1)`` days
before ``as_of``; each later period ``p`` covers the ``period_days`` days up to its own end
(:func:`period_ends`), the last one ending at ``as_of``, followed by the hold-out window that
defines ``churned``. At each boundary a customer whose persona has a planted transition moves to
its target with probability ``mover_share``; everybody else keeps the persona. Behaviour within a
period follows the persona's own parameters relative to the period's end (an at-risk customer's
activity declines before it, a dormant one stops), with these rules:

- a customer is new only in the period it signs up: every ``new_customer`` moves at the first
  boundary, so ``new_customer`` must have a transition and can never be a target;
- a dormant customer that was already dormant stays silent (no events);
- each customer keeps its engagement level (how active it is relative to its persona), and while
  it keeps its persona also its favourite category and preferred channel;
- purchase amounts drift: period ``p`` pays ``(1 + amount_drift) ** (p - 1)`` times period 1.

Every block of customers draws period 1 from the one-period stream ``SeedSequence(seed,
spawn_key=(block,))`` and period ``p >= 2`` from ``spawn_key=(block, p)``: the tables depend on
the seed only, never on ``chunk_size``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa

from gpuseg.data import synthetic as syn
from gpuseg.runtime.errors import UserInputError

#: The planted transitions when none are given: loyalists at risk, new customers becoming regulars.
DEFAULT_TRANSITIONS = {"high_value_loyalist": "at_risk_former_active", "new_customer": "eco_planner"}

_NEW = syn.PERSONA_NAMES.index("new_customer")


@dataclass(frozen=True)
class PeriodPlan:
    """What a multi-period generation plants (built and checked by :func:`period_plan`)."""

    periods: int
    period_days: int
    ends_us: tuple[int, ...]  # each period's end (its as_of), microseconds since the epoch
    target: np.ndarray  # persona id -> persona id it moves to, -1 when it has no transition
    mover_share: float
    amount_drift: float
    tables: tuple[syn._Tables, ...]  # one per period (amounts drifted)

    def truth_schema(self) -> pa.Schema:
        """Ground truth: the final persona, then the persona of every period and whether it moved."""
        extra = []
        for p in range(1, self.periods + 1):
            extra += [(f"persona_{p}", pa.string()), (f"persona_id_{p}", pa.int16())]
        return pa.schema([*syn.GROUND_TRUTH, *extra, ("moved", pa.bool_())])


def period_ends(as_of_us: int, periods: int, period_days: int) -> list[int]:
    """Each period's end in microseconds: the last is ``as_of``, the others ``period_days`` apart."""
    return [as_of_us - (periods - p) * period_days * syn._DAY_US for p in range(1, periods + 1)]


def _check_real(name: str, value: Any, low: float, high: float | None = None) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ok and math.isfinite(float(value)) and float(value) >= low and (high is None or float(value) <= high):
        return float(value)
    interval = f"[{low}, {high}]" if high is not None else f"[{low}, inf)"
    raise UserInputError(f"The '{name}' parameter of generate_synthetic must be a float in the range "
                         f"{interval}. Got {value!r} instead.")


def resolve_transitions(transitions: Mapping[str, str] | None) -> np.ndarray:
    """Persona id -> target persona id (-1: stays), from a mapping of persona names.

    Raises
    ------
    UserInputError
        For unknown names, a persona moving to itself, ``new_customer`` as a target or
        ``new_customer`` without a transition.
    """
    transitions = DEFAULT_TRANSITIONS if transitions is None else dict(transitions)
    names = list(syn.PERSONA_NAMES)
    unknown = sorted({str(n) for pair in transitions.items() for n in pair} - set(names))
    if unknown:
        raise UserInputError(f"The 'transitions' parameter of generate_synthetic has unknown personas "
                             f"{unknown}; expected names among {names}.")
    target = np.full(len(names), -1, dtype=np.int64)
    for source, dest in transitions.items():
        if source == dest or dest == "new_customer":
            raise UserInputError(f"The 'transitions' parameter of generate_synthetic cannot plant "
                                 f"{source} -> {dest}: a persona moves to another one, and a customer "
                                 "is new only in the period it signs up.")
        target[names.index(source)] = names.index(dest)
    if target[_NEW] < 0:
        raise UserInputError("The 'transitions' parameter of generate_synthetic must give new_customer a "
                             "target (e.g. new_customer: eco_planner) when periods > 1: a customer is new "
                             "only in the period it signs up.")
    return target


def period_plan(*, periods: int, period_days: int, as_of_us: int, shares: np.ndarray,
                transitions: Mapping[str, str] | None, mover_share: float, amount_drift: float) -> PeriodPlan:
    """Check the multi-period parameters and build the per-period parameter tables."""
    mover_share = _check_real("mover_share", mover_share, 0.0, 1.0)
    amount_drift = _check_real("amount_drift", amount_drift, -0.5)
    target = resolve_transitions(transitions)
    base = syn._Tables(syn.PERSONAS, shares)
    tables = []
    for p in range(periods):
        tb = copy.copy(base)  # shallow: only the amounts differ between periods
        tb.amount = base.amount.copy()
        tb.amount[:, 0] += p * math.log1p(amount_drift)
        tables.append(tb)
    return PeriodPlan(periods=periods, period_days=period_days,
                      ends_us=tuple(period_ends(as_of_us, periods, period_days)), target=target,
                      mover_share=mover_share, amount_drift=amount_drift, tables=tuple(tables))


def _move(rng: np.random.Generator, persona: np.ndarray, plan: PeriodPlan) -> np.ndarray:
    """Next period's personas: planted movers go to their target, new customers always do."""
    dest = plan.target[persona]
    moves = (dest >= 0) & ((rng.random(len(persona)) < plan.mover_share) | (persona == _NEW))
    return np.where(moves, dest, persona)


def _period_activity(rng: np.random.Generator, prev: np.ndarray, persona: np.ndarray, z: np.ndarray,
                     tb: syn._Tables, plan: PeriodPlan, holdout_days: int, final: bool) -> SimpleNamespace:
    """Activity window and event counts of one later period (days relative to its end).

    Mirrors :func:`gpuseg.data.synthetic._activity` over a window of ``period_days`` that the
    customer already covers (it signed up before), with zero events allowed.
    """
    n, L = len(persona), float(plan.period_days)
    c = SimpleNamespace(persona=persona)
    engagement = np.exp(syn._ENGAGEMENT_SD * z)
    syn._activity_window(rng, c, np.full(n, -L), L, tb)
    n_hist = np.minimum(rng.poisson(tb.rate[persona] * engagement * c.intensity), syn._MAX_EVENTS)
    silent = tb.has_stop[persona] & tb.has_stop[prev]  # dormant before, dormant still
    c.n_hist = np.where(silent, 0, n_hist)
    if final:
        logit = tb.logit_active[persona] + syn._CHURN_SLOPE * z
        c.active = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
        n_hold = np.where(c.active, 1 + rng.poisson(tb.holdout_rate[persona] * engagement * holdout_days), 0)
        c.n_hold = np.minimum(n_hold, syn._MAX_EVENTS)
    else:
        c.active = np.zeros(n, dtype=bool)
        c.n_hold = np.zeros(n, dtype=np.int64)
    return c


def _events(rng: np.random.Generator, ids: pa.Array, c: SimpleNamespace, tb: syn._Tables,
            st: syn._Settings) -> tuple[dict, SimpleNamespace]:
    """Events and texts of one period's activity (the one-period generator's steps, in its order)."""
    ev = syn._event_times(rng, c, tb, st)
    syn._event_types(rng, c, ev, tb)
    syn._event_details(rng, c, ev, tb)
    tx = syn._event_texts(rng, ev, tb)
    return syn._event_tables(ids, ev, tx, st), ev


def periods_block(seed: int, block: int, first: int, n: int, plan: PeriodPlan, st: syn._Settings) -> dict:
    """Generate ``n`` customers over every period of ``plan``; returns Arrow tables and counts."""
    names = len(syn.PERSONA_NAMES)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
    st1 = replace(st, as_of_us=plan.ends_us[0])
    tb = plan.tables[0]
    c = syn._activity(rng, n, tb, st1)
    ev = syn._event_times(rng, c, tb, st1)
    syn._event_types(rng, c, ev, tb)
    syn._event_details(rng, c, ev, tb)
    tx = syn._event_texts(rng, ev, tb)
    first_tables = syn._block_tables(rng, first, c, ev, tx, tb, st1)
    # period 1's own hold-out is period 2's time: those events are replaced by period 2's
    events = [first_tables["events"].filter(pa.array(~ev.in_hold))]
    texts = [first_tables["texts"].filter(pa.array(~ev.in_hold[tx.rows]))]
    ids = first_tables["customers"]["customer_id"].combine_chunks()
    personas, moves = [c.persona], np.zeros((plan.periods - 1, names, names), dtype=np.int64)
    z = c.z
    for p in range(2, plan.periods + 1):
        rng_p = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, p)))
        prev = personas[-1]
        persona = _move(rng_p, prev, plan)
        np.add.at(moves[p - 2], (prev, persona), 1)
        tb = plan.tables[p - 1]
        st_p = replace(st, as_of_us=plan.ends_us[p - 1], history_days=plan.period_days)
        c_prev = c
        c = _period_activity(rng_p, prev, persona, z, tb, plan, st.holdout_days, final=p == plan.periods)
        # a customer who keeps its persona keeps its favourite category and channel too
        c.keep_favourite = np.where(persona == prev, c_prev.favourite, -1)
        c.keep_preferred = np.where(persona == prev, c_prev.preferred, -1)
        tables, _ = _events(rng_p, ids, c, tb, st_p)
        events.append(tables["events"])
        texts.append(tables["texts"])
        personas.append(persona)
    order = [("customer_id", "ascending"), ("timestamp", "ascending")]
    customers = first_tables["customers"]
    customers = customers.set_column(customers.schema.get_field_index("churned"), "churned",
                                     pa.array(c.churned.astype(np.int8)))
    label = pa.array(syn.PERSONA_NAMES, type=pa.string())
    truth = {"customer_id": ids, "persona": label.take(pa.array(personas[-1])),
             "persona_id": pa.array(personas[-1].astype(np.int16))}
    for p, persona in enumerate(personas, start=1):
        truth[f"persona_{p}"] = label.take(pa.array(persona))
        truth[f"persona_id_{p}"] = pa.array(persona.astype(np.int16))
    truth["moved"] = pa.array(np.any(np.stack(personas) != personas[0], axis=0))
    return {
        "customers": customers,
        "events": pa.concat_tables(events).sort_by(order),
        "texts": pa.concat_tables(texts).sort_by(order),
        "ground_truth": pa.table(truth, schema=plan.truth_schema()),
        "stats": {
            "persona_counts": np.bincount(personas[-1], minlength=names),
            "persona_churned": np.bincount(personas[-1], weights=c.churned, minlength=names),
            "period_counts": np.stack([np.bincount(q, minlength=names) for q in personas]),
            "moves": moves,
        },
    }


def periods_metadata(plan: PeriodPlan, history_days: int, period_counts: np.ndarray,
                     moves: np.ndarray) -> dict:
    """The ``generation.json`` entries that say where each period ends and who moved."""
    day = np.timedelta64(1, "D")
    ends = [np.datetime64(e, "us") for e in plan.ends_us]
    names = syn.PERSONA_NAMES
    periods = []
    for p, end in enumerate(ends, start=1):
        start = end - (history_days if p == 1 else plan.period_days) * day
        periods.append({"period": p, "start": str(start), "as_of": str(end),
                        "persona_counts": dict(zip(names, period_counts[p - 1].astype(int).tolist(),
                                                   strict=True))})
    boundaries = []
    for b in range(plan.periods - 1):
        m = moves[b]
        boundaries.append({"from_period": b + 1, "to_period": b + 2, "movers": int(m.sum() - np.trace(m)),
                           "transitions": {f"{names[i]} -> {names[j]}": int(m[i, j])
                                           for i in range(len(names)) for j in range(len(names))
                                           if i != j and m[i, j]}})
    return {
        "periods": periods,
        "period_as_of": [str(e) for e in ends],
        "boundaries": boundaries,
        "transitions": {names[i]: names[t] for i, t in enumerate(plan.target) if t >= 0},
    }
