"""Synthetic multi-table customer data with planted personas: gpuseg's embedded default dataset.

Nine personas generate customers, events and texts. Six differ in tabular behaviour (counts,
recency, spend, trend, event mix, returns, tickets, ratings). The last three, the "steady
regulars", share every tabular distribution and differ only in the text vocabulary (7 vs 8) or in
the *order* of their events (8 vs 9), so each feature block (tabular, text, journey) has a
planted structure that only it can recover.

Event types follow a per-persona Markov chain. The "impulse" journey is the exact time reversal
``T*_ij = pi_j T_ji / pi_i`` of the "planner" chain: it has the same stationary distribution
``pi``, and since every sequence starts from ``pi`` every step has the same marginal, so
event-type counts have the same expectation and only transitions (bigrams) tell them apart.
Timestamps are drawn independently of the types, so inter-event times match too.

Customers are generated in fixed blocks of :data:`BLOCK_SIZE` customers, each with its own
``SeedSequence(seed, spawn_key=(block,))`` stream, so the tables depend on the seed only, not
on ``chunk_size`` (which only bounds memory: whole blocks are gathered into a chunk and written).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa

from gpuseg.data import schema
from gpuseg.data.synthetic_text import KIND_ID, TOPIC_ID, compose_texts
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import ParquetStreamWriter, write_json
from gpuseg.runtime.manifest import library_versions
from gpuseg.runtime.progress import progress_bar

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1

#: Customers per independent random stream; the unit of determinism.
BLOCK_SIZE = 5000

EVENT_TYPES = (
    "visit",
    "view",
    "add_to_cart",
    "purchase",
    "return",
    "coupon",
    "review",
    "support_ticket",
)
VISIT, VIEW, CART, PURCHASE, RETURN, COUPON, REVIEW, TICKET = range(len(EVENT_TYPES))
CATEGORIES = ("electronics", "home", "fashion", "beauty", "sports", "grocery", "books", "toys")
REGIONS = ("north", "south", "east", "west", "central")
PLANS = ("basic", "plus", "premium")
#: Channels; web/app/store carry shopping events, email/phone only tickets and coupons.
CHANNELS = ("web", "app", "store", "email", "phone")
_TICKET_CHANNELS = (0.30, 0.20, 0.0, 0.35, 0.15)
_COUPON_CHANNELS = (0.20, 0.30, 0.0, 0.50, 0.0)

CUSTOMERS = pa.schema(
    [
        ("customer_id", pa.string()),
        ("signup_date", schema.TIMESTAMP),
        ("age", pa.float64()),
        ("region", pa.string()),
        ("plan", pa.string()),
        ("churned", pa.int8()),
    ]
)
GROUND_TRUTH = pa.schema(
    [("customer_id", pa.string()), ("persona", pa.string()), ("persona_id", pa.int16())]
)

_DAY_US = 86_400 * 1_000_000
_MAX_EVENTS = 1000  # per customer and period; keeps the Markov loop short
_AGE_NULL = 0.05
_ENGAGEMENT_SD = 0.35  # log-normal spread of each customer's activity level
_CHURN_SLOPE = 0.8  # how strongly engagement moves the hold-out activity probability

# The funnel a chain follows when it does not jump off: visit -> view -> cart -> purchase ->
# visit; returns, reviews and tickets lead back to a visit, a coupon to a view.
_FUNNEL_NEXT = np.array([VIEW, CART, PURCHASE, VISIT, VISIT, VIEW, VISIT, VISIT])


@dataclass(frozen=True)
class Persona:
    """Parameters of one persona (all tuples of weights are normalised on use).

    Times are in days relative to ``as_of`` (history before it, hold-out after it).
    """

    name: str
    signup_days: tuple[float, float]  # signed up U(lo, hi) days before as_of
    rate: float  # events per day at full intensity
    gap_shape: float  # gamma shape of the gaps between events (1 = Poisson, >1 = regular)
    stop_frac: tuple[float, float] | None  # activity stops U(lo, hi) * history_days before as_of
    decline_days: tuple[float, float] | None  # intensity decays from U(lo, hi) days before as_of
    decline_tau: float  # e-folding time of that decay, days
    p_active: float  # probability of a purchase in the hold-out window (1 - churn)
    holdout_rate: float  # events per day in the hold-out window when active
    funnel: float  # weight of the funnel in each row of the transition matrix
    noise: tuple[float, ...]  # where the chain jumps when it leaves the funnel, per event type
    reverse: bool  # use the time reversal of the chain (impulse order)
    amount: tuple[float, float]  # log-normal (mu, sigma) of purchase amounts
    categories: tuple[float, ...]
    channels: tuple[float, float, float]  # web, app, store
    age: tuple[float, float]  # mean, sd
    regions: tuple[float, ...]
    plans: tuple[float, float, float]
    ratings: tuple[float, float, float, float, float]  # P(rating = 1..5)
    p_angry: float  # share of tickets written in anger
    topic: str  # text vocabulary, see synthetic_text.TOPICS
    p_topic: float  # share of sentences drawn from the topic vocabulary


_UNIFORM5 = (0.2, 0.2, 0.2, 0.2, 0.2)

_STEADY = Persona(
    name="steady",
    signup_days=(60, 2000),
    rate=0.026,
    gap_shape=1.5,
    stop_frac=None,
    decline_days=None,
    decline_tau=1.0,
    p_active=0.72,
    holdout_rate=0.026,
    funnel=0.8,
    noise=(0.18, 0.16, 0.10, 0.12, 0.04, 0.05, 0.30, 0.05),
    reverse=False,
    amount=(4.0, 0.45),
    categories=(0.16, 0.14, 0.14, 0.10, 0.12, 0.14, 0.10, 0.10),
    channels=(0.40, 0.40, 0.20),
    age=(40, 12),
    regions=_UNIFORM5,
    plans=(0.40, 0.40, 0.20),
    ratings=(0.03, 0.07, 0.20, 0.40, 0.30),
    p_angry=0.10,
    topic="eco",
    p_topic=0.8,
)

#: The nine personas, in persona_id order.
PERSONAS: tuple[Persona, ...] = (
    Persona(
        name="high_value_loyalist",
        signup_days=(300, 2500),
        rate=0.055,
        gap_shape=2.0,
        stop_frac=None,
        decline_days=None,
        decline_tau=1.0,
        p_active=0.93,
        holdout_rate=0.055,
        funnel=0.7,
        noise=(0.27, 0.26, 0.13, 0.19, 0.02, 0.03, 0.08, 0.02),
        reverse=False,
        amount=(4.7, 0.5),
        categories=(0.20, 0.18, 0.14, 0.10, 0.10, 0.08, 0.10, 0.10),
        channels=(0.35, 0.45, 0.20),
        age=(46, 11),
        regions=(0.18, 0.18, 0.22, 0.22, 0.20),
        plans=(0.15, 0.35, 0.50),
        ratings=(0.01, 0.02, 0.07, 0.30, 0.60),
        p_angry=0.05,
        topic="loyal",
        p_topic=0.6,
    ),
    Persona(
        name="at_risk_former_active",
        signup_days=(300, 2000),
        rate=0.04,
        gap_shape=1.5,
        stop_frac=None,
        decline_days=(100, 220),
        decline_tau=35.0,
        p_active=0.25,
        holdout_rate=0.015,
        funnel=0.65,
        noise=(0.30, 0.25, 0.12, 0.12, 0.05, 0.04, 0.08, 0.04),
        reverse=False,
        amount=(4.3, 0.6),
        categories=(0.16, 0.14, 0.16, 0.10, 0.12, 0.12, 0.10, 0.10),
        channels=(0.50, 0.30, 0.20),
        age=(41, 12),
        regions=(0.20, 0.22, 0.18, 0.20, 0.20),
        plans=(0.30, 0.45, 0.25),
        ratings=(0.15, 0.25, 0.30, 0.20, 0.10),
        p_angry=0.30,
        topic="churn",
        p_topic=0.6,
    ),
    Persona(
        name="deal_hunter",
        signup_days=(60, 1800),
        rate=0.042,
        gap_shape=1.0,
        stop_frac=None,
        decline_days=None,
        decline_tau=1.0,
        p_active=0.70,
        holdout_rate=0.042,
        funnel=0.45,
        noise=(0.20, 0.22, 0.10, 0.20, 0.03, 0.20, 0.04, 0.01),
        reverse=False,
        amount=(3.0, 0.45),
        categories=(0.06, 0.10, 0.24, 0.12, 0.06, 0.30, 0.06, 0.06),
        channels=(0.45, 0.45, 0.10),
        age=(35, 10),
        regions=(0.22, 0.20, 0.18, 0.18, 0.22),
        plans=(0.70, 0.25, 0.05),
        ratings=(0.05, 0.10, 0.25, 0.35, 0.25),
        p_angry=0.10,
        topic="deal",
        p_topic=0.7,
    ),
    Persona(
        name="new_customer",
        signup_days=(7, 75),
        rate=0.15,
        gap_shape=1.0,
        stop_frac=None,
        decline_days=None,
        decline_tau=1.0,
        p_active=0.55,
        holdout_rate=0.05,
        funnel=0.6,
        noise=(0.30, 0.27, 0.13, 0.15, 0.02, 0.06, 0.05, 0.02),
        reverse=False,
        amount=(3.9, 0.55),
        categories=(0.14, 0.14, 0.14, 0.12, 0.12, 0.14, 0.10, 0.10),
        channels=(0.30, 0.60, 0.10),
        age=(29, 8),
        regions=(0.20, 0.20, 0.20, 0.20, 0.20),
        plans=(0.60, 0.30, 0.10),
        ratings=(0.05, 0.08, 0.20, 0.35, 0.32),
        p_angry=0.05,
        topic="new",
        p_topic=0.7,
    ),
    Persona(
        name="support_heavy_unhappy",
        signup_days=(90, 1800),
        rate=0.032,
        gap_shape=1.0,
        stop_frac=None,
        decline_days=None,
        decline_tau=1.0,
        p_active=0.45,
        holdout_rate=0.03,
        funnel=0.45,
        noise=(0.20, 0.16, 0.09, 0.15, 0.15, 0.02, 0.06, 0.17),
        reverse=False,
        amount=(4.2, 0.6),
        categories=(0.24, 0.16, 0.14, 0.08, 0.10, 0.08, 0.10, 0.10),
        channels=(0.45, 0.25, 0.30),
        age=(44, 13),
        regions=(0.20, 0.18, 0.20, 0.20, 0.22),
        plans=(0.35, 0.40, 0.25),
        ratings=(0.45, 0.30, 0.15, 0.07, 0.03),
        p_angry=0.70,
        topic="complaint",
        p_topic=0.7,
    ),
    Persona(
        name="dormant",
        signup_days=(500, 2500),
        rate=0.025,
        gap_shape=1.0,
        stop_frac=(0.35, 0.75),
        decline_days=None,
        decline_tau=1.0,
        p_active=0.03,
        holdout_rate=0.02,
        funnel=0.55,
        noise=(0.35, 0.25, 0.10, 0.14, 0.03, 0.05, 0.05, 0.03),
        reverse=False,
        amount=(3.7, 0.6),
        categories=(0.12, 0.14, 0.14, 0.12, 0.12, 0.16, 0.10, 0.10),
        channels=(0.50, 0.20, 0.30),
        age=(50, 14),
        regions=(0.20, 0.20, 0.20, 0.18, 0.22),
        plans=(0.60, 0.30, 0.10),
        ratings=(0.15, 0.20, 0.30, 0.20, 0.15),
        p_angry=0.20,
        topic="dormant",
        p_topic=0.6,
    ),
    # The steady triple: identical tabular parameters by construction (dataclasses.replace).
    replace(_STEADY, name="eco_planner", topic="eco"),
    replace(_STEADY, name="gadget_planner", topic="tech"),
    replace(_STEADY, name="gadget_impulse", topic="tech", reverse=True),
)

PERSONA_NAMES = tuple(p.name for p in PERSONAS)

#: Default persona shares (sum to 1): roughly equal, deliberately not uniform.
DEFAULT_SHARES = (0.10, 0.12, 0.12, 0.10, 0.09, 0.13, 0.11, 0.11, 0.12)


# --------------------------------------------------------------------------------------------
# Markov chains
# --------------------------------------------------------------------------------------------


def stationary_distribution(T: np.ndarray) -> np.ndarray:
    """Stationary distribution ``pi`` (``pi @ T = pi``, sums to 1) of an irreducible chain."""
    k = T.shape[0]
    # Solve (T^T - I) pi = 0 with the normalisation row appended; least squares is exact here.
    A = np.vstack([T.T - np.eye(k), np.ones(k)])
    b = np.zeros(k + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(A, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def time_reversal(T: np.ndarray, pi: np.ndarray | None = None) -> np.ndarray:
    """Time-reversed chain ``T*_ij = pi_j T_ji / pi_i``; it has the same stationary ``pi``."""
    if pi is None:
        pi = stationary_distribution(T)
    R = (T.T * pi[None, :]) / pi[:, None]
    return R / R.sum(axis=1, keepdims=True)


def transition_matrix(persona: Persona) -> np.ndarray:
    """Row-stochastic transition matrix over :data:`EVENT_TYPES` for one persona."""
    k = len(EVENT_TYPES)
    noise = np.asarray(persona.noise, dtype=np.float64)
    noise = noise / noise.sum()
    T = np.zeros((k, k))
    T[np.arange(k), _FUNNEL_NEXT] = persona.funnel
    T += (1.0 - persona.funnel) * noise[None, :]
    if persona.reverse:
        T = time_reversal(T)
    return T


# --------------------------------------------------------------------------------------------
# Vectorised per-persona parameter tables
# --------------------------------------------------------------------------------------------


def _cum(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Cumulative, normalised weight rows with the last column exactly 1."""
    a = np.asarray(rows, dtype=np.float64)
    c = np.cumsum(a / a.sum(axis=-1, keepdims=True), axis=-1)
    c[..., -1] = 1.0
    return c


def _draw(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draws: ``cum`` holds one cumulative row per draw, ``u`` uniforms in [0, 1)."""
    return (cum <= u[:, None]).sum(axis=1).astype(np.int8)


class _Tables:
    """Per-persona parameters as arrays indexed by persona id."""

    def __init__(self, personas: Sequence[Persona], shares: np.ndarray):
        P = personas
        self.shares_cum = _cum([shares])[0]
        self.signup = np.array([p.signup_days for p in P], dtype=np.float64)
        self.rate = np.array([p.rate for p in P])
        self.gap_shape = np.array([p.gap_shape for p in P])
        self.has_stop = np.array([p.stop_frac is not None for p in P])
        self.stop = np.array([p.stop_frac or (0.0, 0.0) for p in P], dtype=np.float64)
        self.has_decline = np.array([p.decline_days is not None for p in P])
        self.decline = np.array([p.decline_days or (0.0, 0.0) for p in P], dtype=np.float64)
        self.tau = np.array([p.decline_tau for p in P])
        self.logit_active = np.log(np.array([p.p_active / (1.0 - p.p_active) for p in P]))
        self.holdout_rate = np.array([p.holdout_rate for p in P])
        Ts = [transition_matrix(p) for p in P]
        self.T = np.stack(Ts)
        self.pi = np.stack([stationary_distribution(T) for T in Ts])
        self.cum_T = _cum(self.T)
        self.cum_pi = _cum(self.pi)
        self.amount = np.array([p.amount for p in P], dtype=np.float64)
        self.cum_categories = _cum([p.categories for p in P])
        self.cum_channels = _cum([p.channels for p in P])
        self.age = np.array([p.age for p in P], dtype=np.float64)
        self.cum_regions = _cum([p.regions for p in P])
        self.cum_plans = _cum([p.plans for p in P])
        self.cum_ratings = _cum([p.ratings for p in P])
        self.p_angry = np.array([p.p_angry for p in P])
        self.topic = np.array([TOPIC_ID[p.topic] for p in P], dtype=np.int64)
        self.p_topic = np.array([p.p_topic for p in P])
        self.cum_ticket_ch = _cum([_TICKET_CHANNELS])[0]
        self.cum_coupon_ch = _cum([_COUPON_CHANNELS])[0]


# --------------------------------------------------------------------------------------------
# One block of customers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    as_of_us: int
    history_days: int
    holdout_days: int
    id_width: int
    names: tuple[str, ...]


def _sorted_fractions(rng: np.random.Generator, counts: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """For each customer, ``counts[c]`` increasing points in (0, 1), customer-major.

    Gaps are gamma(``shape[c]``) renewals normalised to the window (Dirichlet spacings): shape 1
    gives uniform order statistics (Poisson-like), larger shapes more regular spacing.
    """
    ext = counts + 1
    owner = np.repeat(np.arange(len(counts)), ext)
    gaps = rng.standard_gamma(shape[owner])
    csum = np.cumsum(gaps)
    ends = np.cumsum(ext) - 1
    starts = ends - counts
    before = np.where(starts > 0, csum[np.maximum(starts - 1, 0)], 0.0)
    within = csum - before[owner]
    frac = within / within[ends][owner]
    keep = np.ones(len(owner), dtype=bool)
    keep[ends] = False
    return frac[keep]


def _warp(u: np.ndarray, s: np.ndarray, d: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Map operational time ``u`` to days: flat intensity on [s, d], then exp(-(t-d)/tau)."""
    flat = d - s
    tail = np.clip(1.0 - (u - flat) / tau, 1e-12, None)
    return np.where(u <= flat, s + u, d - tau * np.log(tail))


def _markov(
    rng: np.random.Generator,
    lengths: np.ndarray,
    offsets: np.ndarray,
    persona: np.ndarray,
    tb: _Tables,
) -> np.ndarray:
    """Event types of every customer's sequence, simulated step by step across customers."""
    total = int(lengths.sum())
    u = rng.random(total)
    state = np.empty(total, dtype=np.int8)
    order = np.argsort(-lengths, kind="stable")  # longest first: step t uses a prefix
    off_sorted = offsets[order]
    pers_sorted = persona[order]
    # n_longer[t] = number of customers whose sequence has a step t (length > t).
    n_longer = np.searchsorted(-lengths[order], -np.arange(int(lengths.max(initial=0))), "left")
    for t, k in enumerate(n_longer):
        idx = off_sorted[:k] + t
        if t == 0:
            cum = tb.cum_pi[pers_sorted[:k]]  # first state from pi: every step has marginal pi
        else:
            cum = tb.cum_T[pers_sorted[:k], state[idx - 1]]
        state[idx] = _draw(cum, u[idx])
    return state


def _last_before(mask: np.ndarray, first_of_owner: np.ndarray) -> np.ndarray:
    """Index of the latest earlier-or-same row with ``mask`` of the same customer, else -1."""
    idx = np.where(mask, np.arange(len(mask)), -1)
    np.maximum.accumulate(idx, out=idx)
    idx[idx < first_of_owner] = -1
    return idx


def _activity_window(rng: np.random.Generator, c: SimpleNamespace, start: np.ndarray, length: float,
                     tb: _Tables) -> None:
    """Set ``c.s``, ``c.d``, ``c.tau``, ``c.intensity``: activity from ``start`` (days before the
    window's end at 0, of ``length`` days), flat until ``d``, then decaying, stopped for dormants."""
    n, persona = len(c.persona), c.persona
    c.s = start
    stop = -length * (tb.stop[persona, 0] + np.diff(tb.stop[persona], axis=1)[:, 0] * rng.random(n))
    e = np.where(tb.has_stop[persona], np.minimum(np.maximum(stop, c.s + 30.0), 0.0), 0.0)
    dec = -(tb.decline[persona, 0] + np.diff(tb.decline[persona], axis=1)[:, 0] * rng.random(n))
    c.d = np.where(tb.has_decline[persona], np.clip(dec, c.s, e), e)
    c.tau = tb.tau[persona]
    c.intensity = (c.d - c.s) + c.tau * (1.0 - np.exp(-(e - c.d) / c.tau))


def _activity(rng: np.random.Generator, n: int, tb: _Tables, st: _Settings) -> SimpleNamespace:
    """Persona, activity window (days relative to as_of), event counts and churn of each customer."""
    H, HD = float(st.history_days), float(st.holdout_days)
    c = SimpleNamespace()
    c.persona = _draw(np.broadcast_to(tb.shares_cum, (n, len(tb.shares_cum))), rng.random(n)).astype(np.int64)
    persona = c.persona
    lo, hi = tb.signup[persona, 0], tb.signup[persona, 1]
    c.signup = -(lo + (hi - lo) * rng.random(n))
    z = rng.standard_normal(n)
    c.z = z  # kept: a later period reuses each customer's engagement
    engagement = np.exp(_ENGAGEMENT_SD * z)
    _activity_window(rng, c, np.maximum(c.signup, -H), H, tb)
    n_hist = rng.poisson(tb.rate[persona] * engagement * c.intensity)
    c.n_hist = np.clip(n_hist, 1, _MAX_EVENTS)  # everyone did something before as_of
    logit = tb.logit_active[persona] + _CHURN_SLOPE * z
    c.active = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    n_hold = np.where(c.active, 1 + rng.poisson(tb.holdout_rate[persona] * engagement * HD), 0)
    c.n_hold = np.minimum(n_hold, _MAX_EVENTS)
    return c


def _event_times(rng: np.random.Generator, c: SimpleNamespace, tb: _Tables, st: _Settings) -> SimpleNamespace:
    """Each event's owner, position and time in microseconds from as_of (independent of its type)."""
    n = len(c.persona)
    frac = _sorted_fractions(rng, c.n_hist, tb.gap_shape[c.persona])
    owner_h = np.repeat(np.arange(n), c.n_hist)
    t_hist = _warp(frac * c.intensity[owner_h], c.s[owner_h], c.d[owner_h], c.tau[owner_h])
    t_hist_us = np.minimum(np.floor(t_hist * _DAY_US).astype(np.int64), -1)
    frac = _sorted_fractions(rng, c.n_hold, np.ones(n))
    hold_us = int(float(st.holdout_days) * _DAY_US)
    t_hold_us = 1 + np.floor(frac * (hold_us - 1)).astype(np.int64)  # in (as_of, as_of + HD]
    ev = SimpleNamespace()
    ev.lengths = c.n_hist + c.n_hold
    ev.offsets = np.concatenate([[0], np.cumsum(ev.lengths)[:-1]])
    ev.total = int(ev.lengths.sum())
    ev.owner = np.repeat(np.arange(n), ev.lengths)
    pos = np.arange(ev.total) - ev.offsets[ev.owner]
    ev.in_hold = pos >= c.n_hist[ev.owner]
    ev.t_us = np.empty(ev.total, dtype=np.int64)
    ev.t_us[~ev.in_hold] = t_hist_us
    ev.t_us[ev.in_hold] = t_hold_us
    return ev


def _event_types(rng: np.random.Generator, c: SimpleNamespace, ev: SimpleNamespace, tb: _Tables) -> None:
    """Markov-chain event types per persona; every active hold-out customer buys at least once."""
    n = len(c.persona)
    ev.etype = _markov(rng, ev.lengths, ev.offsets, c.persona, tb)
    bought = np.bincount(ev.owner[ev.in_hold & (ev.etype == PURCHASE)], minlength=n) > 0
    force = c.active & ~bought
    j = (rng.random(n) * c.n_hold).astype(np.int64)  # uniform position: keeps 8 vs 9 symmetric
    ev.etype[(ev.offsets + c.n_hist + j)[force]] = PURCHASE
    c.churned = np.bincount(ev.owner[ev.in_hold & (ev.etype == PURCHASE)], minlength=n) == 0


def _kept(kept: np.ndarray | None, drawn: np.ndarray) -> np.ndarray:
    """``kept`` where it is set (>= 0), else ``drawn``."""
    return drawn if kept is None else np.where(kept >= 0, kept, drawn)


def _event_details(rng: np.random.Generator, c: SimpleNamespace, ev: SimpleNamespace, tb: _Tables) -> None:
    """Amounts (returns refund the latest purchase), categories and channels of the events."""
    n, total, etype, owner = len(c.persona), ev.total, ev.etype, ev.owner
    ev.persona = c.persona[owner]
    first_row = ev.offsets[owner]
    mu, sigma = tb.amount[ev.persona, 0], tb.amount[ev.persona, 1]
    raw_amount = np.round(np.exp(mu + sigma * rng.standard_normal(total)) + 0.5, 2)
    is_purchase = etype == PURCHASE
    is_return = etype == RETURN
    last_buy = _last_before(is_purchase, first_row)
    amount = np.where(is_purchase, raw_amount, np.nan)
    # A return refunds the customer's latest purchase (or a typical one if it predates history).
    refund = np.where(last_buy >= 0, amount[np.maximum(last_buy, 0)], raw_amount)
    ev.amount = np.where(is_return, -refund, amount)
    ev.monetary = is_purchase | is_return

    favourite = _draw(tb.cum_categories[c.persona], rng.random(n))
    # a later period of the same persona keeps the customer's tastes (drawn all the same, so that
    # the random stream, and one-period data, do not change); -1 or absent: the new draw
    favourite = c.favourite = _kept(getattr(c, "keep_favourite", None), favourite)
    category = np.where(
        rng.random(total) < 0.5,
        favourite[owner],
        _draw(tb.cum_categories[ev.persona], rng.random(total)),
    )
    follows_buy = (is_return | (etype == REVIEW)) & (last_buy >= 0)
    ev.category = np.where(follows_buy, category[np.maximum(last_buy, 0)], category)
    ev.has_category = np.isin(etype, (VIEW, CART, PURCHASE, RETURN, REVIEW))

    preferred = c.preferred = _kept(getattr(c, "keep_preferred", None), _draw(tb.cum_channels[c.persona], rng.random(n)))
    channel = np.where(
        rng.random(total) < 0.7,
        preferred[owner],
        _draw(tb.cum_channels[ev.persona], rng.random(total)),
    )
    channel = np.where((etype == REVIEW) & (channel == 2), 0, channel)  # reviews are online
    u_ch = rng.random(total)
    channel = np.where(etype == TICKET, _draw(np.broadcast_to(tb.cum_ticket_ch, (total, 5)), u_ch), channel)
    ev.channel = np.where(etype == COUPON, _draw(np.broadcast_to(tb.cum_coupon_ch, (total, 5)), u_ch), channel)


def _event_texts(rng: np.random.Generator, ev: SimpleNamespace, tb: _Tables) -> SimpleNamespace:
    """One text per review or support ticket, at the event's time, with a rating for reviews."""
    tx = SimpleNamespace()
    tx.rows = np.flatnonzero((ev.etype == REVIEW) | (ev.etype == TICKET))
    t_persona = ev.persona[tx.rows]
    tx.is_review = ev.etype[tx.rows] == REVIEW
    tx.rating = _draw(tb.cum_ratings[t_persona], rng.random(len(tx.rows))).astype(np.float64) + 1
    angry = rng.random(len(tx.rows)) < tb.p_angry[t_persona]
    kind = np.where(
        tx.is_review,
        np.select([tx.rating >= 4, tx.rating == 3], [KIND_ID["pos"], KIND_ID["neu"]], KIND_ID["neg"]),
        np.where(angry, KIND_ID["angry"], KIND_ID["ticket"]),
    )
    tx.texts = compose_texts(rng, kind, tb.topic[t_persona], tb.p_topic[t_persona])
    return tx


def _customer_ids(first: int, n: int, st: _Settings) -> pa.Array:
    # 1-based, zero-padded ids sort as strings in generation order.
    return pa.array([f"C{i:0{st.id_width}d}" for i in range(first + 1, first + n + 1)], pa.string())


def _event_tables(ids: pa.Array, ev: SimpleNamespace, tx: SimpleNamespace, st: _Settings) -> dict:
    """The events and texts tables of one block (no random draws)."""
    ts = pa.array(st.as_of_us + ev.t_us, type=schema.TIMESTAMP)
    ev_ids = ids.take(pa.array(ev.owner))
    events = pa.table(
        {
            "customer_id": ev_ids,
            "timestamp": ts,
            "event_type": pa.array(EVENT_TYPES).take(pa.array(ev.etype)),
            "amount": pa.array(ev.amount, mask=~ev.monetary, type=pa.float64()),
            "category": pa.array(CATEGORIES).take(pa.array(ev.category, mask=~ev.has_category)),
            "channel": pa.array(CHANNELS).take(pa.array(ev.channel)),
        },
        schema=schema.EVENTS,
    )
    text_idx = pa.array(tx.rows)
    text_table = pa.table(
        {
            "customer_id": ev_ids.take(text_idx),
            "timestamp": ts.take(text_idx),
            "source": pa.array(np.where(tx.is_review, "review", "ticket"), type=pa.string()),
            "text": tx.texts,
            "rating": pa.array(tx.rating, mask=~tx.is_review, type=pa.float64()),
        },
        schema=schema.TEXTS,
    )
    return {"events": events, "texts": text_table}


def _block_tables(rng: np.random.Generator, first: int, c: SimpleNamespace, ev: SimpleNamespace,
                  tx: SimpleNamespace, tb: _Tables, st: _Settings) -> dict:
    """The block's Arrow tables (the customers' own attributes are drawn last)."""
    n, persona = len(c.persona), c.persona
    ids = _customer_ids(first, n, st)
    names = pa.array(st.names, type=pa.string())
    tables = _event_tables(ids, ev, tx, st)
    age = np.clip(np.round(tb.age[persona, 0] + tb.age[persona, 1] * rng.standard_normal(n)), 18, 90)
    signup_us = st.as_of_us + np.floor(c.signup * _DAY_US).astype(np.int64)
    customers = pa.table(
        {
            "customer_id": ids,
            "signup_date": pa.array(signup_us, type=schema.TIMESTAMP),
            "age": pa.array(age, mask=rng.random(n) < _AGE_NULL, type=pa.float64()),
            "region": pa.array(REGIONS).take(pa.array(_draw(tb.cum_regions[persona], rng.random(n)))),
            "plan": pa.array(PLANS).take(pa.array(_draw(tb.cum_plans[persona], rng.random(n)))),
            "churned": pa.array(c.churned.astype(np.int8)),
        },
        schema=CUSTOMERS,
    )
    truth = pa.table(
        {
            "customer_id": ids,
            "persona": names.take(pa.array(persona)),
            "persona_id": pa.array(persona.astype(np.int16)),
        },
        schema=GROUND_TRUTH,
    )
    return {"customers": customers, **tables, "ground_truth": truth}


def _block(rng: np.random.Generator, first: int, n: int, tb: _Tables, st: _Settings) -> dict:
    """Generate ``n`` customers starting at global index ``first``; returns Arrow tables.

    The steps draw from ``rng`` in a fixed order (customers, times, types, details, texts, the
    customers' attributes): same seed, same bytes.
    """
    c = _activity(rng, n, tb, st)
    ev = _event_times(rng, c, tb, st)
    _event_types(rng, c, ev, tb)
    _event_details(rng, c, ev, tb)
    tx = _event_texts(rng, ev, tb)
    tables = _block_tables(rng, first, c, ev, tx, tb, st)
    tables["stats"] = {
        "persona_counts": np.bincount(c.persona, minlength=len(st.names)),
        "persona_churned": np.bincount(c.persona, weights=c.churned, minlength=len(st.names)),
    }
    return tables


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserInputError(
            f"The '{name}' parameter of generate_synthetic must be an int in the range "
            f"[{low}, inf). Got {value!r} instead."
        )
    return int(value)


def _parse_as_of(as_of: Any) -> np.datetime64:
    try:
        if isinstance(as_of, (_dt.date, _dt.datetime, np.datetime64, str)):
            value = np.datetime64(as_of).astype("datetime64[us]")
            if not np.isnat(value):
                return value
    except ValueError:
        pass
    raise UserInputError(
        "The 'as_of' parameter of generate_synthetic must be an ISO date such as '2025-01-01' "
        f"(or a date/datetime). Got {as_of!r} instead."
    )


def resolve_shares(persona_shares: Mapping[str, float] | Sequence[float] | None) -> np.ndarray:
    """Persona shares as a normalised array in persona order.

    Parameters
    ----------
    persona_shares : mapping of persona name to weight, sequence of 9 weights, or None
        Relative weights; personas missing from a mapping get weight 0. None gives
        :data:`DEFAULT_SHARES`.

    Returns
    -------
    ndarray of float64, shape (9,)
    """
    if persona_shares is None:
        w = np.array(DEFAULT_SHARES, dtype=np.float64)
    elif isinstance(persona_shares, Mapping):
        unknown = sorted(set(persona_shares) - set(PERSONA_NAMES))
        if unknown:
            raise UserInputError(
                f"The 'persona_shares' parameter of generate_synthetic has unknown personas "
                f"{unknown}; expected names among {list(PERSONA_NAMES)}."
            )
        w = np.array([float(persona_shares.get(n, 0.0)) for n in PERSONA_NAMES])
    else:
        w = np.asarray(list(persona_shares), dtype=np.float64)
        if w.shape != (len(PERSONAS),):
            raise UserInputError(
                f"The 'persona_shares' parameter of generate_synthetic must be a mapping of "
                f"persona name to weight or a sequence of {len(PERSONAS)} weights. "
                f"Got {len(w)} weights instead."
            )
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise UserInputError(
            "The 'persona_shares' parameter of generate_synthetic must hold finite, non-negative "
            f"weights with a positive sum. Got {w.tolist()} instead."
        )
    return w / w.sum()


GENERATOR = "gpuseg.data.synthetic"
MANIFEST = "generation.json"


def generated_files(out_dir: str | Path) -> list[Path] | None:
    """The files of a dataset this generator wrote into ``out_dir``, or None when there is none.

    A generated set is recognised by its own manifest (``generation.json`` naming this generator
    and its files), never by file names alone: a user's ``customers.parquet`` is not ours.
    """
    out = Path(out_dir)
    try:
        meta = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR or not isinstance(meta.get("files"), dict):
        return None
    files = [out / str(name) for name in meta["files"].values()]
    return files + [out / MANIFEST]


def check_generation_target(out_dir: str | Path) -> None:
    """Refuse to generate into a folder holding files this generator did not write.

    Generating needs a new or empty folder, or one holding only a previous generated set (which
    is then replaced). Hidden files are ignored; leftovers of a killed run (``.*.tmp``) are removed.

    Raises
    ------
    UserInputError
        Naming the folder, the foreign files and ``data=custom`` (exit code 2).
    """
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise UserInputError(f"'{out}' is a file, not a folder: point paths.data_dir at a new or empty folder",
                             config_key="paths.data_dir")
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    present = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    ours = set(generated_files(out) or [])
    foreign = [p.name for p in present if p not in ours]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserInputError(
            f"'{out}' holds files gpuseg did not generate ({shown}); gpuseg never overwrites them. "
            "To segment your own files use data=custom (or another data config) with "
            "paths.data_dir pointing at them; to generate synthetic data, point paths.data_dir at a new "
            "or empty folder", config_key="data")


def generate_synthetic(
    out_dir: str | Path,
    *,
    n_customers: int = 5000,
    seed: int = 0,
    as_of: str | _dt.date | np.datetime64 = "2025-01-01",
    history_days: int = 730,
    holdout_days: int = 90,
    chunk_size: int = 50_000,
    persona_shares: Mapping[str, float] | Sequence[float] | None = None,
    periods: int = 1,
    period_days: int = 365,
    mover_share: float = 0.3,
    transitions: Mapping[str, str] | None = None,
    amount_drift: float = 0.1,
    progress: bool = False,
) -> dict:
    """Write the synthetic customers, events, texts and ground truth tables.

    Parameters
    ----------
    out_dir : path-like
        Folder to write into (created if missing).
    n_customers : int, default 5000
        Number of customers.
    seed : int, default 0
        Seed; the same seed gives byte-identical tables, whatever ``chunk_size``.
    as_of : str or date, default "2025-01-01"
        Reference date: history runs from ``as_of - history_days`` to ``as_of``; the hold-out
        window ``(as_of, as_of + holdout_days]`` holds the events that define ``churned``.
    history_days : int, default 730
        Length of the history, days (at least 90).
    holdout_days : int, default 90
        Length of the hold-out window, days (at least 1).
    chunk_size : int, default 50000
        Customers generated and written together; bounds memory. Rounded up to a multiple of
        :data:`BLOCK_SIZE`; it does not change the data.
    persona_shares : mapping or sequence, optional
        Relative persona weights (see :func:`resolve_shares`).
    periods : int, default 1
        Number of periods the same customers are followed over (see
        :mod:`gpuseg.data.synthetic_periods`). With 1 (the default) the other period parameters
        are ignored and the tables are those of the one-period generator.
    period_days : int, default 365
        Length of each period after the first, days (at least 90). Period ``p`` ends
        ``(periods - p) * period_days`` days before ``as_of``.
    mover_share : float, default 0.3
        Probability that a customer of a persona with a planted transition moves at each boundary
        (``new_customer`` always moves).
    transitions : mapping of persona name to persona name, optional
        The planted transitions; None gives
        :data:`gpuseg.data.synthetic_periods.DEFAULT_TRANSITIONS`.
    amount_drift : float, default 0.1
        Planted drift: purchase amounts of period ``p`` are ``(1 + amount_drift) ** (p - 1)``
        times those of period 1.
    progress : bool, default False
        Show a progress bar (only on a terminal).

    Returns
    -------
    dict
        ``paths`` (table name -> Path, plus ``generation``), ``rows`` (table name -> row count)
        and ``out_dir``.

    Notes
    -----
    ``churned`` is 1 exactly when a customer has no purchase in the hold-out window of
    ``events.parquet``. ``ground_truth.parquet`` holds each customer's persona; the pipeline
    never reads it. With ``periods > 1`` it also holds ``persona_<p>`` and ``persona_id_<p>``
    for every period and ``moved``, ``persona`` is the last period's, and ``generation.json``
    lists every period's end under ``period_as_of`` (the ``data.as_of`` to segment it at).
    """
    n_customers = _check_int("n_customers", n_customers, 1)
    seed = _check_int("seed", seed, 0)
    history_days = _check_int("history_days", history_days, 90)
    holdout_days = _check_int("holdout_days", holdout_days, 1)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    as_of64 = _parse_as_of(as_of)
    shares = resolve_shares(persona_shares)
    periods = _check_int("periods", periods, 1)
    plan = None
    if periods > 1:
        from gpuseg.data import synthetic_periods as sp  # it builds on this module's steps

        plan = sp.period_plan(periods=periods, period_days=_check_int("period_days", period_days, 90),
                              as_of_us=int(as_of64.astype(np.int64)), shares=shares,
                              transitions=transitions, mover_share=mover_share, amount_drift=amount_drift)

    out = Path(out_dir)
    check_generation_target(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {t: out / f"{t}.parquet" for t in ("customers", "events", "texts", "ground_truth")}
    schemas = {
        "customers": CUSTOMERS,
        "events": schema.EVENTS,
        "texts": schema.TEXTS,
        "ground_truth": GROUND_TRUTH if plan is None else plan.truth_schema(),
    }
    tb = _Tables(PERSONAS, shares)
    st = _Settings(
        as_of_us=int(as_of64.astype(np.int64)),
        history_days=history_days,
        holdout_days=holdout_days,
        id_width=max(7, len(str(n_customers))),
        names=PERSONA_NAMES,
    )
    n_blocks = math.ceil(n_customers / BLOCK_SIZE)
    per_chunk = max(1, math.ceil(chunk_size / BLOCK_SIZE))
    counts = np.zeros(len(PERSONAS))
    churned = np.zeros(len(PERSONAS))
    period_counts = np.zeros((periods, len(PERSONAS)))
    moves = np.zeros((periods - 1, len(PERSONAS), len(PERSONAS)))
    logger.info("generating %d synthetic customers (seed %d) into %s", n_customers, seed, out)

    writers = {t: ParquetStreamWriter(paths[t], schemas[t]) for t in paths}
    with (
        writers["customers"],
        writers["events"],
        writers["texts"],
        writers["ground_truth"],
        progress_bar(progress, total=n_customers, unit="cust", desc="generate") as bar,
    ):
        for chunk_start in range(0, n_blocks, per_chunk):
            parts: dict[str, list[pa.Table]] = {t: [] for t in paths}
            for b in range(chunk_start, min(chunk_start + per_chunk, n_blocks)):
                first = b * BLOCK_SIZE
                n = min(BLOCK_SIZE, n_customers - first)
                if plan is None:
                    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(b,)))
                    res = _block(rng, first, n, tb, st)
                else:
                    res = sp.periods_block(seed, b, first, n, plan, st)
                    period_counts += res["stats"]["period_counts"]
                    moves += res["stats"]["moves"]
                for t in paths:
                    parts[t].append(res[t])
                counts += res["stats"]["persona_counts"]
                churned += res["stats"]["persona_churned"]
                bar.update(n)
            for t in paths:
                writers[t].write(pa.concat_tables(parts[t]))
            del parts

    rows = {t: writers[t].rows for t in paths}
    day = np.timedelta64(1, "D")
    meta = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "schema_version": schema.SCHEMA_VERSION,
        "parameters": {
            "n_customers": n_customers,
            "seed": seed,
            "as_of": str(as_of64),
            "history_days": history_days,
            "holdout_days": holdout_days,
            "chunk_size": chunk_size,
            "block_size": BLOCK_SIZE,
            "persona_shares": dict(zip(PERSONA_NAMES, shares.tolist(), strict=True)),
        },
        "as_of": str(as_of64),
        "seed": seed,
        "history_start": str(as_of64 - history_days * day),
        "holdout_end": str(as_of64 + holdout_days * day),
        "personas": [
            {
                "persona_id": i,
                "name": p.name,
                "share": float(shares[i]),
                "customers": int(counts[i]),
                "churn_rate": float(churned[i] / counts[i]) if counts[i] else None,
                "topic": p.topic,
                "journey": "impulse" if p.reverse else "planner",
            }
            for i, p in enumerate(PERSONAS)
        ],
        "event_types": list(EVENT_TYPES),
        "rows": rows,
        "files": {t: p.name for t, p in paths.items()},
        "versions": library_versions(),
    }
    if plan is not None:  # one-period manifests stay as they were
        meta["parameters"].update(periods=periods, period_days=plan.period_days, mover_share=plan.mover_share,
                                  amount_drift=plan.amount_drift)
        meta["history_start"] = str(np.datetime64(plan.ends_us[0], "us") - history_days * day)
        meta.update(sp.periods_metadata(plan, history_days, period_counts, moves))
    gen_path = write_json(out / MANIFEST, meta)
    logger.info("synthetic data written: %s", rows)
    return {"out_dir": out, "paths": {**paths, "generation": gen_path}, "rows": rows}
