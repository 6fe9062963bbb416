"""Tests of the synthetic data generator: contract, determinism, labels and planted structure.

The separability tests are the point of the dataset: tabular aggregates must tell the six base
personas apart but not the steady triple; text must separate eco from gadget but not planner from
impulse; event transitions must separate planner from impulse while event counts must not.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gpuseg.data import schema
from gpuseg.data.synthetic import (
    CUSTOMERS,
    EVENT_TYPES,
    GROUND_TRUTH,
    PERSONA_NAMES,
    PERSONAS,
    generate_synthetic,
    resolve_shares,
    stationary_distribution,
    time_reversal,
    transition_matrix,
)
from gpuseg.runtime.errors import UserInputError

N = 4000
AS_OF = np.datetime64("2025-01-01", "us")
TABLES = ("customers", "events", "texts", "ground_truth")


def _read(out):
    return {t: pq.read_table(out / f"{t}.parquet") for t in TABLES}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    result = generate_synthetic(out, n_customers=N, seed=7, chunk_size=2000)
    return out, result, _read(out)


@pytest.fixture(scope="module")
def per_customer(data):
    """Per-customer numpy aggregates, in customers-table order, plus the persona labels."""
    _, _, t = data
    ids = t["customers"]["customer_id"].to_numpy(zero_copy_only=False)
    truth = t["ground_truth"]
    assert truth["customer_id"].equals(t["customers"]["customer_id"])
    persona = truth["persona_id"].to_numpy().astype(int)
    ev = t["events"]
    id_set = t["customers"]["customer_id"].combine_chunks()
    cust = pc.index_in(ev["customer_id"], value_set=id_set).to_numpy()
    ts = ev["timestamp"].cast(pa.int64()).to_numpy()
    etype = pc.index_in(ev["event_type"], value_set=pa.array(EVENT_TYPES)).to_numpy()
    amount = ev["amount"].fill_null(0.0).to_numpy()
    hist = ts <= AS_OF.astype(np.int64)
    n, k = len(ids), len(EVENT_TYPES)
    counts = np.zeros((n, k))
    np.add.at(counts, (cust[hist], etype[hist]), 1)
    spend = np.bincount(cust[hist], weights=amount[hist], minlength=n)
    day = 86_400e6
    last = np.full(n, -np.inf)
    np.maximum.at(last, cust[hist], ts[hist] / day)
    first = np.full(n, np.inf)
    np.minimum.at(first, cust[hist], ts[hist] / day)
    asof_day = AS_OF.astype(np.int64) / day
    recent = hist & (ts > (AS_OF - np.timedelta64(90, "D")).astype(np.int64))
    prior = hist & ~recent & (ts > (AS_OF - np.timedelta64(180, "D")).astype(np.int64))
    n_recent = np.bincount(cust[recent], minlength=n)
    n_prior = np.bincount(cust[prior], minlength=n)
    tabular = np.column_stack(
        [
            np.log1p(counts),
            np.log1p(np.abs(spend)),
            np.log1p(asof_day - last),
            np.log1p(asof_day - first),
            np.log1p(n_recent) - np.log1p(n_prior),
        ]
    )
    # First-order transitions within each customer's time-ordered history (rows are sorted).
    same = cust[1:] == cust[:-1]
    pair = hist[1:] & hist[:-1] & same
    bigrams = np.zeros((n, k * k))
    np.add.at(bigrams, (cust[1:][pair], (etype[:-1] * k + etype[1:])[pair]), 1)
    tx = t["texts"]
    tcust = pc.index_in(tx["customer_id"], value_set=id_set).to_numpy()
    docs = [[] for _ in range(n)]
    for c, text in zip(tcust, tx["text"].to_pylist(), strict=True):
        docs[c].append(text)
    return {
        "persona": persona,
        "tabular": tabular,
        "counts": counts,
        "bigrams": bigrams,
        "docs": [" ".join(d) for d in docs],
        "has_text": np.array([len(d) > 0 for d in docs]),
    }


def _cv_accuracy(X, y, pipeline=None):
    model = pipeline or make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return cross_val_score(model, X, y, cv=5, scoring="accuracy").mean()


def _ids(*names):
    return [PERSONA_NAMES.index(n) for n in names]


BASE = _ids(
    "high_value_loyalist",
    "at_risk_former_active",
    "deal_hunter",
    "new_customer",
    "support_heavy_unhappy",
    "dormant",
)
ECO, GADGET_PLAN, GADGET_IMP = _ids("eco_planner", "gadget_planner", "gadget_impulse")


# ------------------------------------------------------------------------------------------
# Contract
# ------------------------------------------------------------------------------------------


def test_schemas_and_files(data):
    out, result, t = data
    assert t["events"].schema.equals(schema.EVENTS)
    assert t["texts"].schema.equals(schema.TEXTS)
    assert t["customers"].schema.equals(CUSTOMERS)
    assert t["ground_truth"].schema.equals(GROUND_TRUTH)
    assert result["rows"] == {k: v.num_rows for k, v in t.items()}
    assert result["rows"]["customers"] == N
    for name in (*TABLES, "generation"):
        assert result["paths"][name].exists()
    meta = json.loads((out / "generation.json").read_text())
    assert meta["seed"] == 7 and meta["as_of"].startswith("2025-01-01")
    assert meta["rows"] == result["rows"]
    assert [p["name"] for p in meta["personas"]] == list(PERSONA_NAMES)
    assert sum(p["customers"] for p in meta["personas"]) == N
    assert abs(sum(p["share"] for p in meta["personas"]) - 1) < 1e-9
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporaries


def test_ids_and_referential_integrity(data):
    _, _, t = data
    ids = t["customers"]["customer_id"]
    assert pc.count_distinct(ids).as_py() == N
    assert ids.equals(t["ground_truth"]["customer_id"])
    assert pc.all(pc.equal(pc.utf8_length(ids), 8)).as_py()  # "C" + 7 digits
    for table in ("events", "texts"):
        assert pc.all(pc.is_in(t[table]["customer_id"], value_set=ids.combine_chunks())).as_py()
    # Every customer acted before as_of; about 5 % of ages are missing.
    ev_ids = t["events"].filter(pc.less_equal(t["events"]["timestamp"], pa.scalar(AS_OF)))
    assert pc.count_distinct(ev_ids["customer_id"]).as_py() == N
    assert 0.03 < t["customers"]["age"].null_count / N < 0.07
    assert ids[0].as_py() == "C0000001"
    # Nobody acts before signing up.
    first = ev_ids.group_by("customer_id").aggregate([("timestamp", "min")])
    signup = dict(zip(*(t["customers"][c].to_pylist() for c in ("customer_id", "signup_date")), strict=True))
    assert all(signup[c] <= ts for c, ts in zip(*(first[c].to_pylist() for c in ("customer_id", "timestamp_min")), strict=True))


def test_sorted_within_chunks(data):
    _, _, t = data
    for table in ("events", "texts"):
        cid = t[table]["customer_id"].to_numpy(zero_copy_only=False)
        ts = t[table]["timestamp"].cast(pa.int64()).to_numpy()
        assert np.all(cid[1:] >= cid[:-1])
        same = cid[1:] == cid[:-1]
        assert np.all(ts[1:][same] >= ts[:-1][same])


def test_event_values(data):
    _, _, t = data
    ev = t["events"]
    types = ev["event_type"].to_numpy(zero_copy_only=False)
    amount = ev["amount"].to_numpy(zero_copy_only=False).astype(float)
    assert set(types) == set(EVENT_TYPES)
    assert np.all(amount[types == "purchase"] > 0)
    assert np.all(amount[types == "return"] < 0)
    monetary = np.isin(types, ["purchase", "return"])
    assert np.all(np.isnan(amount[~monetary]))
    category = ev["category"].is_null().to_numpy(zero_copy_only=False)
    assert np.all(category[np.isin(types, ["visit", "coupon", "support_ticket"])])
    assert not np.any(category[np.isin(types, ["purchase", "return", "view"])])
    ts = ev["timestamp"].cast(pa.int64()).to_numpy()
    start = (AS_OF - np.timedelta64(730, "D")).astype(np.int64)
    end = (AS_OF + np.timedelta64(90, "D")).astype(np.int64)
    assert ts.min() >= start and ts.max() <= end
    assert np.mean(ts > AS_OF.astype(np.int64)) > 0.02  # the hold-out window has events
    # Scale targets: about 20 events and 1 text per customer.
    assert 15 < ev.num_rows / N < 27
    assert 0.7 < t["texts"].num_rows / N < 1.4


def test_texts_match_review_and_ticket_events(data):
    _, _, t = data
    ev, tx = t["events"], t["texts"]
    mask = pc.is_in(ev["event_type"], value_set=pa.array(["review", "support_ticket"]))
    src = ev.filter(mask)
    assert src.num_rows == tx.num_rows
    assert src["customer_id"].equals(tx["customer_id"])
    assert src["timestamp"].equals(tx["timestamp"])
    kind = np.where(src["event_type"].to_numpy(zero_copy_only=False) == "review", "review", "ticket")
    assert np.array_equal(kind, tx["source"].to_numpy(zero_copy_only=False))
    rating = tx["rating"].to_numpy(zero_copy_only=False).astype(float)
    is_review = kind == "review"
    assert np.all(np.isnan(rating[~is_review]))
    assert set(np.unique(rating[is_review])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    texts = tx["text"].to_pylist()
    assert all(len(x) > 3 for x in texts)
    # Realistic duplicates: a few short texts recur across many customers, but not most texts.
    _, freq = np.unique(texts, return_counts=True)
    assert freq.max() > 20
    assert len(freq) > 0.3 * len(texts)


def test_ratings_follow_persona_tone(data, per_customer):
    _, _, t = data
    tx = t["texts"].filter(pc.equal(t["texts"]["source"], "review"))
    gt = dict(zip(*(t["ground_truth"][c].to_pylist() for c in ("customer_id", "persona")), strict=True))
    persona = np.array([gt[c] for c in tx["customer_id"].to_pylist()])
    rating = tx["rating"].to_numpy()
    assert rating[persona == "high_value_loyalist"].mean() > 4.2
    assert rating[persona == "support_heavy_unhappy"].mean() < 2.3
    words = " ".join(tx.filter(pa.array(persona == "deal_hunter"))["text"].to_pylist()).lower()
    assert any(w in words for w in ("discount", "sale", "coupon", "promo"))


# ------------------------------------------------------------------------------------------
# Determinism and parameters
# ------------------------------------------------------------------------------------------


def test_same_seed_identical_whatever_chunk_size(tmp_path):
    a = generate_synthetic(tmp_path / "a", n_customers=11_000, seed=3, chunk_size=50_000)
    b = generate_synthetic(tmp_path / "b", n_customers=11_000, seed=3, chunk_size=5000)
    for name in TABLES:
        assert _read(tmp_path / "a")[name].equals(_read(tmp_path / "b")[name])
        # Byte-identical files when written the same way.
    c = generate_synthetic(tmp_path / "c", n_customers=11_000, seed=3, chunk_size=50_000)
    for name in TABLES:
        assert a["paths"][name].read_bytes() == c["paths"][name].read_bytes()
    generate_synthetic(tmp_path / "d", n_customers=11_000, seed=4, chunk_size=50_000)
    for name in ("events", "texts", "ground_truth"):
        assert not _read(tmp_path / "a")[name].equals(_read(tmp_path / "d")[name])
    assert b["rows"] == a["rows"]


def test_parameters_change_the_data(tmp_path):
    r = generate_synthetic(
        tmp_path,
        n_customers=1500,
        seed=1,
        as_of="2024-06-30",
        history_days=365,
        holdout_days=30,
        persona_shares={"dormant": 1.0},
    )
    t = _read(tmp_path)
    assert set(t["ground_truth"]["persona"].to_pylist()) == {"dormant"}
    ts = t["events"]["timestamp"].cast(pa.int64()).to_numpy()
    as_of = np.datetime64("2024-06-30", "us")
    assert ts.min() >= (as_of - np.timedelta64(365, "D")).astype(np.int64)
    assert ts.max() <= (as_of + np.timedelta64(30, "D")).astype(np.int64)
    assert r["rows"]["customers"] == 1500
    assert t["customers"]["churned"].to_numpy().mean() > 0.9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_customers": 0}, "n_customers"),
        ({"n_customers": 2.5}, "n_customers"),
        ({"seed": -1}, "seed"),
        ({"history_days": 10}, "history_days"),
        ({"holdout_days": 0}, "holdout_days"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"as_of": "not a date"}, "as_of"),
        ({"persona_shares": {"whale": 1.0}}, "persona_shares"),
        ({"persona_shares": [1, 2]}, "persona_shares"),
        ({"persona_shares": {"dormant": -1.0}}, "persona_shares"),
    ],
)
def test_bad_parameters_are_named(tmp_path, kwargs, match):
    with pytest.raises(UserInputError, match=match):
        generate_synthetic(tmp_path, **kwargs)


def test_resolve_shares():
    assert np.allclose(resolve_shares(None).sum(), 1)
    s = resolve_shares({"dormant": 2, "deal_hunter": 2})
    assert s[PERSONA_NAMES.index("dormant")] == 0.5 and s[0] == 0


# ------------------------------------------------------------------------------------------
# Markov chains
# ------------------------------------------------------------------------------------------


def test_time_reversal_keeps_stationary_distribution():
    planner = transition_matrix(PERSONAS[GADGET_PLAN])
    impulse = transition_matrix(PERSONAS[GADGET_IMP])
    pi = stationary_distribution(planner)
    assert np.allclose(pi @ planner, pi) and np.allclose(pi @ impulse, pi)
    assert np.allclose(impulse, time_reversal(planner))
    assert np.allclose(time_reversal(impulse), planner)  # reversal is an involution
    v, w = EVENT_TYPES.index("visit"), EVENT_TYPES.index("view")
    assert planner[v, w] > 0.7 and impulse[v, w] < 0.2  # the orders really differ
    # The eco and gadget planners share every tabular parameter.
    eco, gadget = PERSONAS[ECO], PERSONAS[GADGET_PLAN]
    assert {k: v for k, v in vars(eco).items() if k not in ("name", "topic")} == {
        k: v for k, v in vars(gadget).items() if k not in ("name", "topic")
    }


# ------------------------------------------------------------------------------------------
# Labels and planted structure
# ------------------------------------------------------------------------------------------


def test_churn_label_matches_holdout_purchases(data, per_customer):
    _, _, t = data
    ev = t["events"]
    after = pc.greater(ev["timestamp"], pa.scalar(AS_OF))
    buys = ev.filter(pc.and_(after, pc.equal(ev["event_type"], "purchase")))
    buyers = set(buys["customer_id"].to_pylist())
    ids = t["customers"]["customer_id"].to_pylist()
    expected = np.array([0 if c in buyers else 1 for c in ids], dtype=np.int8)
    churned = t["customers"]["churned"].to_numpy()
    assert np.array_equal(churned, expected)
    persona = per_customer["persona"]
    rate = {p: churned[persona == i].mean() for i, p in enumerate(PERSONA_NAMES)}
    assert rate["dormant"] > 0.85 and rate["high_value_loyalist"] < 0.2
    assert rate["at_risk_former_active"] > rate["high_value_loyalist"] + 0.4
    assert 0.2 < churned.mean() < 0.6


def test_at_risk_activity_declines(per_customer):
    trend = per_customer["tabular"][:, -1]  # log(recent 90 d) - log(prior 90 d)
    persona = per_customer["persona"]
    at_risk = trend[persona == PERSONA_NAMES.index("at_risk_former_active")].mean()
    loyal = trend[persona == PERSONA_NAMES.index("high_value_loyalist")].mean()
    assert at_risk < -0.5 and abs(loyal) < 0.2


def test_tabular_separates_base_personas_but_not_the_steady_triple(per_customer):
    X, y = per_customer["tabular"], per_customer["persona"]
    base = np.isin(y, BASE)
    assert _cv_accuracy(X[base], y[base]) > 0.8
    # The triple merged into one class is also distinct from the base personas.
    merged = np.where(np.isin(y, BASE), y, -1)
    assert _cv_accuracy(X, merged) > 0.8
    triple = np.isin(y, [ECO, GADGET_PLAN, GADGET_IMP])
    assert _cv_accuracy(X[triple], y[triple]) < 0.42  # chance is 1/3


def test_text_separates_eco_from_gadget_but_not_planner_from_impulse(per_customer):
    y, docs, has = per_customer["persona"], np.array(per_customer["docs"]), per_customer["has_text"]

    def acc(a, b):
        keep = np.isin(y, [a, b]) & has
        model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=2000))
        return _cv_accuracy(docs[keep], y[keep], model)

    assert acc(ECO, GADGET_PLAN) > 0.8
    assert acc(GADGET_PLAN, GADGET_IMP) < 0.62  # chance is 1/2


def test_transitions_separate_planner_from_impulse_but_counts_do_not(per_customer):
    y = per_customer["persona"]
    keep = np.isin(y, [GADGET_PLAN, GADGET_IMP])
    bigrams = np.log1p(per_customer["bigrams"][keep])
    counts = np.log1p(per_customer["counts"][keep])
    assert _cv_accuracy(bigrams, y[keep]) > 0.85
    assert _cv_accuracy(counts, y[keep]) < 0.62
    # And the planners with different text have the same transitions.
    keep = np.isin(y, [ECO, GADGET_PLAN])
    assert _cv_accuracy(np.log1p(per_customer["bigrams"][keep]), y[keep]) < 0.62
