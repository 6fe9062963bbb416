"""Segment profiles: lifts, value concentration, c-TF-IDF words, journey n-grams, persona rules."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuseg.evaluation import match_report
from gpuseg.profile import (
    DEFAULT_RULES,
    assign_personas,
    distinctive_words,
    distinctive_words_by_source,
    journey_ngrams,
    lifts_by_segment,
    representatives,
    segment_lifts,
    segment_means,
    segment_sizes,
    top_event_types,
    validate_rules,
    value_concentration,
)
from gpuseg.profile.naming import name_segments
from gpuseg.profile.personas import fallback_name
from gpuseg.runtime.errors import UserInputError

# ----------------------------------------------------------------------------- lifts


def test_segment_lifts_exact_numbers():
    feats = pa.table({"customer_id": ["a", "b", "c", "d"], "x": [1.0, 2.0, 3.0, 10.0],
                      "y": [5.0, 5.0, 5.0, 5.0], "r": [float("nan"), 2.0, 4.0, 6.0]})
    seg = np.array([0, 0, 1, 1])
    t = segment_lifts(feats, seg)
    rows = {(r["segment"], r["feature"]): r for r in t.to_pylist()}
    std = math.sqrt(12.5)  # population std of x: mean 4, squared deviations 9, 4, 1, 36
    assert rows[(0, "x")]["mean"] == 1.5 and rows[(0, "x")]["population_mean"] == 4.0
    assert rows[(0, "x")]["lift_z"] == pytest.approx((1.5 - 4) / std)
    assert rows[(1, "x")]["lift_z"] == pytest.approx((6.5 - 4) / std)
    assert rows[(0, "y")]["lift_z"] == 0.0  # constant feature: no lift
    # NaN left out: population of r is {2, 4, 6}; segment 0 has only 2
    assert rows[(0, "r")]["mean"] == 2.0
    assert rows[(0, "r")]["lift_z"] == pytest.approx((2 - 4) / math.sqrt(8 / 3))
    # sorted by |lift| within a segment
    seg0 = [r for r in t.to_pylist() if r["segment"] == 0]
    assert [r["feature"] for r in seg0] == ["r", "x", "y"]
    assert lifts_by_segment(t)[1]["x"] == pytest.approx(2.5 / std)


def test_segment_lifts_errors_name_the_parameter():
    feats = pa.table({"x": [1.0, 2.0]})
    with pytest.raises(UserInputError, match="'segments'.*3 labels.*2 rows"):
        segment_lifts(feats, np.array([0, 1, 1]))
    with pytest.raises(UserInputError, match="'columns'.*missing"):
        segment_lifts(feats, np.array([0, 1]), columns=["nope"])
    with pytest.raises(UserInputError, match="non-negative"):
        segment_lifts(feats, np.array([0, -1]))


def test_sizes_value_concentration_means_representatives():
    seg = np.array([0, 0, 0, 1, 2, 2])
    sizes = segment_sizes(seg, n_segments=4).to_pydict()
    assert sizes["size"] == [3, 1, 2, 0] and sum(sizes["share"]) == pytest.approx(1.0)
    vc = value_concentration(np.array([1.0, 1.0, 1.0, 7.0, np.nan, 0.0]), seg).to_pydict()
    assert vc["value_share"] == pytest.approx([0.3, 0.7, 0.0])
    assert vc["concentration"][1] == pytest.approx(0.7 / (1 / 6))
    m = segment_means(np.array([1.0, 0.0, np.nan, 1.0, np.nan, np.nan]), seg)
    assert m[0] == 0.5 and m[1] == 1.0 and np.isnan(m[2])
    reps = representatives(np.array([0.5, 0.1, 0.3, 2.0, 0.2, 0.2]), seg, n=2)
    assert reps == {0: [1, 2], 1: [3], 2: [4, 5]}


# ----------------------------------------------------------------------------- words


def test_c_tf_idf_unique_word_ranks_first():
    texts = ["great price great deal", "price discount deal", "cheap deal price",
             "slow delivery broken item", "broken refund delivery", "item delivery broken",
             "the delivery", "a price"]
    seg = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    words = distinctive_words(texts, seg, n_segments=4, top_n=3, min_df=2)
    assert words[0][0][0] == "deal"  # in segment 0 only, the most frequent there
    assert words[1][0][0] == "broken"  # as frequent as "delivery", which segment 2 also uses
    assert "the" not in {w for w, _ in words[2]}  # stop word
    assert words[3] == []  # no texts
    # min_df: 'great' is in one text only
    assert "great" not in {w for w, _ in words[0]}
    # c-TF-IDF formula on one value: tf('deal', 0) = 3/10, A = (10 + 9 + 3) / 3, f('deal') = 3
    score = dict(distinctive_words(texts, seg, top_n=10)[0])["deal"]
    assert score == pytest.approx(3 / 10 * math.log(1 + (22 / 3) / 3))


def test_distinctive_words_by_source_compares_within_source():
    texts = ["love sale sale", "love sale", "late refund", "late refund", "love quality",
             "late delivery", "quality love", "delivery late"]
    sources = ["review", "review", "ticket", "ticket", "review", "ticket", "review", "ticket"]
    seg = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = distinctive_words_by_source(texts, sources, seg, top_n=2)
    assert set(out) == {"review", "ticket"}
    assert out["review"][0][0][0] == "sale" and out["review"][1][0][0] == "quality"
    assert out["ticket"][0][0][0] == "refund" and out["ticket"][1][0][0] == "delivery"
    with pytest.raises(UserInputError, match="'top_n'"):
        distinctive_words(texts, seg, top_n=0)


# ----------------------------------------------------------------------------- n-grams


def test_journey_ngrams_over_representation():
    vocab = ["<pad>", "view", "cart", "buy", "coupon"]
    # segment 0 goes view->cart->buy; segment 1 buys with coupons; padded with 0
    seqs = np.array([[1, 2, 3, 1, 2, 3], [1, 2, 3, 0, 0, 0], [1, 2, 3, 1, 0, 0],
                     [4, 3, 4, 3, 1, 0], [4, 3, 4, 3, 0, 0], [4, 3, 1, 2, 0, 0]])
    seg = np.array([0, 0, 0, 1, 1, 1])
    grams = journey_ngrams(seqs, seg, n=2, top_n=2, min_count=2, vocab=vocab)
    assert grams[0][0][0] in {("view", "cart"), ("cart", "buy")}
    assert grams[1][0][0] in {("coupon", "buy"), ("buy", "coupon")}
    assert all(r > 1 for _, _, r in grams[0] + grams[1])
    # counts: ('coupon', 'buy') occurs 5 times in segment 1, never across padding
    counts = {g: c for g, c, _ in journey_ngrams(seqs, seg, n=2, top_n=10, min_count=1, vocab=vocab)[1]}
    assert counts[("coupon", "buy")] == 5 and ("buy", "<pad>") not in counts
    # the same result from a list of sequences
    as_list = [row[row != 0] for row in seqs]
    assert journey_ngrams(as_list, seg, n=2, top_n=2, min_count=2, vocab=vocab) == grams
    tri = journey_ngrams(seqs, seg, n=3, top_n=1, min_count=1, vocab=vocab)
    assert len(tri[0][0][0]) == 3
    events = top_event_types(seqs, seg, vocab=vocab, top_n=2)
    assert events[1][0][0] in {"coupon", "buy"} and events[1][0][2] > 1
    with pytest.raises(UserInputError, match="'n'"):
        journey_ngrams(seqs, seg, n=0)


# ----------------------------------------------------------------------------- personas


def test_persona_rules_name_segments():
    lifts = {
        0: {"monetary_sum": 2.0, "frequency": 1.5, "recency_days": -0.7, "tenure_days": 0.4},
        1: {"recency_days": 2.1, "frequency": -0.8, "monetary_sum": -0.5, "tenure_days": 0.5},
        2: {"n_tickets": 2.0, "mean_rating": -1.4, "recency_days": -0.1},
        3: {"weird_feature": 3.0, "other": -2.0},
        4: {"tenure_days": -2.0, "frequency": -0.7},
        5: {"share_event_discount": 1.5, "monetary_mean": -1.0},  # alternative feature name
    }
    out = assign_personas(lifts)
    assert out[0].name == "High-value loyalists" and out[0].rule == "High-value loyalists"
    assert out[0].score == pytest.approx(np.mean([1.2, 1.0, 0.7]))
    assert out[1].name == "Dormant customers"
    assert out[2].name == "Unhappy support-heavy customers"
    assert out[3].name == "Segment 3: high weird feature / low other" and out[3].rule is None
    assert out[4].name == "New customers"
    assert out[5].name == "Price-sensitive deal hunters"
    assert "loyalty" in out[0].action
    # configurable actions and rules
    custom = assign_personas(lifts, rules=[{"name": "Odd", "conditions": [
        {"feature": "weird_feature", "op": ">", "value": 1}], "action": "look"}],
        actions={"Odd": "investigate", "fallback": "nothing"})
    assert custom[3] == ("Odd", "Odd", 2.0, "investigate")
    assert custom[0].name.startswith("Segment 0:") and custom[0].action == "nothing"
    assert fallback_name(7, {}) == "Segment 7: average on every feature"


def test_rule_validation_is_clear():
    assert len(validate_rules(DEFAULT_RULES)) == len(DEFAULT_RULES)
    with pytest.raises(UserInputError, match="rule 0 .*'X'.* op '>>'"):
        validate_rules([{"name": "X", "conditions": [{"feature": "f", "op": ">>", "value": 1}]}])
    with pytest.raises(UserInputError, match="non-empty list 'conditions'"):
        validate_rules([{"name": "X", "conditions": []}])
    with pytest.raises(UserInputError, match="non-numeric 'value'"):
        validate_rules([{"name": "X", "conditions": [{"feature": "f", "op": "<", "value": "a"}]}])


def test_match_report():
    seg = np.array([0, 0, 0, 1, 1, 2, 2])
    truth = np.array(["loyal", "loyal", "dormant", "dormant", "dormant", "eco", "tech"])
    names = {0: "High-value loyalists", 1: "New customers", 2: "Steady regulars"}
    rep = match_report(names, seg, truth, {"High-value loyalists": "loyal", "New customers": "new",
                                           "Steady regulars": ["eco", "tech"]})
    rows = {r["segment"]: r for r in rep["segments"]}
    assert rows[0]["match"] and rows[0]["majority_share"] == pytest.approx(2 / 3)
    assert not rows[1]["match"] and rows[1]["majority_persona"] == "dormant"
    assert rows[2]["match"]
    assert rep["n_matched"] == 2 and rep["match_rate"] == pytest.approx(2 / 3)


def _hand_made_events(tmp_path):
    """Three behaviours written by hand, not by the generator: loyal, lapsed and brand-new buyers."""
    from gpuseg.data.schema import EVENTS

    as_of = np.datetime64("2024-06-01", "D")
    rows = []
    for i in range(30):
        rows += [(f"loyal{i}", as_of - 7 - 35 * j, 100.0 + i) for j in range(20)]        # often, lately, a lot
        rows += [(f"lapsed{i}", as_of - 540 - 30 * j, 20.0) for j in range(2)]           # long ago, little
        rows += [(f"new{i}", as_of - 5 - 10 * j, 30.0) for j in range(2)]                # just arrived
    ids, days, amounts = zip(*rows, strict=True)
    table = pa.table({"customer_id": list(ids),
                      "timestamp": pa.array(np.array(days, dtype="datetime64[D]").astype("datetime64[us]")),
                      "event_type": ["purchase"] * len(rows), "amount": list(amounts),
                      "category": pa.nulls(len(rows), pa.string()), "channel": pa.nulls(len(rows), pa.string())},
                     schema=EVENTS)
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    customers = [f"{kind}{i}" for kind in ("loyal", "lapsed", "new") for i in range(30)]
    return path, customers, np.repeat([0, 1, 2], 30)


def test_default_rules_name_behaviours_they_describe(tmp_path):
    """The default rules name what the RFM+ features show, on data the generator never made."""
    from gpuseg.features.rfm import compute_rfm_features

    path, customers, seg = _hand_made_events(tmp_path)
    feats = compute_rfm_features(path, customers, as_of="2024-06-01")
    named = assign_personas(lifts_by_segment(segment_lifts(feats, seg)))
    assert named[0].name == "High-value loyalists"
    assert named[1].name in ("Dormant customers", "At-risk former actives")
    assert named[2].name == "New customers"


def test_fallback_names_read_categorical_attributes_once():
    lifts = {"Partner=Yes": 1.2, "Partner=No": -1.2, "tenure": 0.8, "Contract=Two year": -0.5}
    assert fallback_name(1, lifts) == "Segment 1: Partner: Yes / high tenure"
    assert fallback_name(2, {"attr_region=North": -2.0, "Contract=Two year": 1.0}) == \
        "Segment 2: rarely region: North / Contract: Two year"


def test_a_persona_name_that_contradicts_its_churn_is_reported():
    from gpuseg.profile.personas import PersonaAssignment, churn_contradictions

    named = {0: PersonaAssignment("Dormant customers", "Dormant customers", 1.0, "act"),
             1: PersonaAssignment("High-value loyalists", "High-value loyalists", 1.0, "act"),
             2: PersonaAssignment("Segment 2: high x", None, 0.0, "act")}
    found = churn_contradictions(named, None, [0.05, 0.10, 0.9], overall_rate=0.3)
    assert len(found) == 1 and "segment 0" in found[0] and "Dormant customers" in found[0]
    # loyalists churning more than average are reported too; the fallback name implies nothing
    other = churn_contradictions(named, None, [0.6, 0.5, 0.9], overall_rate=0.3)
    assert len(other) == 1 and "High-value loyalists" in other[0]
    with pytest.raises(UserInputError, match="churn 'up'"):
        validate_rules([{"name": "X", "conditions": [{"feature": "f", "op": ">", "value": 1}], "churn": "up"}])


def test_a_segment_without_history_before_as_of_is_named_for_that():
    from gpuseg.jobs.profile import _without_history

    features = pa.table({"customer_id": list("abcdef"), "n_events": [0.0, 0.0, 3.0, 5.0, 4.0, 0.0]})
    labels = np.array([0, 0, 0, 1, 1, 1])
    notes: list[str] = []
    out = _without_history(features, labels, 2, "2024-06-01", notes)
    assert out == {0: pytest.approx(2 / 3)} and len(notes) == 1 and "67%" in notes[0]
    # such segments keep their fixed name, told apart when there are two
    named = name_segments({0: {"recency_days": 2.0}, 1: {"recency_days": 2.0, "tenure_days": 1.0},
                           2: {"monetary_sum": 2.0}},
                          fixed={0: ("No activity before 2024-06-01", ["x"]),
                                 1: ("No activity before 2024-06-01", ["y"])})
    assert named[0].name.startswith("No activity before 2024-06-01") and named[0].source == "fixed"
    assert named[1].name == "No activity before 2024-06-01, long-standing"
    assert len({n.name for n in named.values()}) == 3


# ------------------------------------------------------------------- distinct names, actions

_STEADY = {"recency_days": 0.1, "frequency": 0.0, "monetary_sum": 0.1, "monetary_mean": 0.0,
           "tenure_days": 0.0, "trend_activity": 0.0, "n_tickets": 0.0, "n_returns": 0.0}


def test_segments_that_match_one_rule_get_distinct_names_from_their_next_feature():
    lifts = {0: {**_STEADY, "monetary_sum": 0.45},
             1: {**_STEADY, "share_category_electronics": 1.4},
             2: {**_STEADY, "share_channel_app": 0.9}}
    named = name_segments(lifts)
    assert named[0].name == "Steady regulars, high spend"
    assert named[1].name == "Steady regulars, electronics"
    assert named[2].name == "Steady regulars, via app"
    assert all(n.rule == "Steady regulars" and n.source == "rule" for n in named.values())
    assert "electronics share 1.4 sd above average" in named[1].evidence
    # identical segments still never share a name
    same = name_segments({0: _STEADY, 1: _STEADY, 2: _STEADY})
    assert len({n.name for n in same.values()}) == 3
    # a word they use is a tie-breaker too
    worded = name_segments({0: _STEADY, 1: _STEADY}, words={0: ["battery"], 1: ["garden"]})
    assert {n.name for n in worded.values()} == {'Steady regulars, say "battery"', 'Steady regulars, say "garden"'}


def test_names_never_contradict_the_observed_churn():
    loyal = {"monetary_sum": 2.0, "frequency": 1.5, "recency_days": -0.7}
    dormant = {"recency_days": 2.1, "frequency": -0.8}
    big = {"monetary_mean": 1.6, "frequency": -0.5}
    lifts = {0: loyal, 1: dormant, 2: big, 3: _STEADY}
    rates = {0: 0.62, 1: 0.05, 2: 0.60, 3: 0.31}
    named = name_segments(lifts, churn_rate=rates, overall_churn=0.3)
    # loyalists that churn twice the base rate are not called loyal: the next rule that fits (VIP) is
    # barred for the same reason, so the name is described from the features
    assert "loyal" not in named[0].name.lower() and "VIP" not in named[0].name
    assert named[0].name == "High spend, frequent buyers, high churn" and named[0].source == "described"
    assert "dormant" not in named[1].name.lower()
    # a name that implies nothing about churn says it when churn is far above the base rate
    assert named[2].name == "Big-ticket occasional buyers, high churn"
    assert named[3].name == "Steady regulars" and "churn 31% vs 30% overall" in named[3].evidence
    # without churn labels the rules stand
    plain = name_segments(lifts)
    assert plain[0].name == "High-value loyalists" and plain[1].name == "Dormant customers"
    # steady regulars churning far above the base rate are not steady
    assert "Steady" not in name_segments({0: _STEADY}, churn_rate={0: 0.6}, overall_churn=0.3)[0].name
    with pytest.raises(UserInputError, match="churn_tolerance"):
        name_segments(lifts, churn_tolerance=0.5)


def test_described_names_lead_with_the_value_tier_and_never_say_segment():
    lifts = {0: {"n_returns": 0.7, "frequency": 0.46, "monetary_sum": 0.3}}
    named = name_segments(lifts, value_ratio={0: 2.0})
    assert named[0].name == "High value, frequent returns" and named[0].source == "described"
    assert "expected value per customer 2.0x the average" in named[0].evidence
    assert name_segments({0: {"x": 0.1}})[0].name == "Average customers"
    assert not name_segments({0: {"odd_feature": 2.0}})[0].name.startswith("Segment")


def test_configured_names_are_kept_and_automatic_ones_avoid_them():
    named = name_segments({0: _STEADY, 1: {**_STEADY, "tenure_days": 0.4}},
                          overrides={0: "Weekend gardeners", 1: "Weekend gardeners x"})
    assert named[0].name == "Weekend gardeners" and named[0].source == "config"
    auto = name_segments({0: _STEADY, 1: {**_STEADY, "tenure_days": 0.4}}, overrides={1: "Steady regulars"})
    assert auto[1].name == "Steady regulars" and auto[0].name != "Steady regulars"


def test_every_segment_gets_an_action_with_its_evidence():
    from gpuseg.profile.actions import next_best_action

    cases = [
        ({"n_tickets": 1.2, "mean_rating": -1.0}, {}, "service recovery", "tickets 1.2 sd above average"),
        ({"recency_days": 1.6, "frequency": -0.8}, {}, "win-back", "recency 1.6 sd above average"),
        ({"recency_days": -0.2}, {"churn_rate": 0.45, "overall_churn": 0.3}, "retention offer",
         "churn 45% vs 30% overall (1.5x)"),
        ({"monetary_sum": 1.4}, {"value": 700.0, "overall_value": 350.0}, "VIP care",
         "expected value per customer 700 vs 350 average (2.0x)"),
        ({"tenure_days": -1.5}, {}, "onboarding", "tenure 1.5 sd below average"),
        ({"n_returns": 1.3}, {}, "returns reduction", "returns 1.3 sd above average"),
        ({"share_event_coupon": 1.0}, {}, "targeted promotions", "coupon share 1.0 sd above average"),
        ({"frequency": 0.6, "monetary_mean": -0.9}, {}, "basket growth", "basket value 0.9 sd below average"),
        ({"monetary_mean": 1.5, "frequency": -0.4}, {}, "upsell", "basket value 1.5 sd above average"),
    ]
    for lifts, figures, kind, evidence in cases:
        action = next_best_action(lifts, **figures)
        assert action.kind == kind and evidence in action.evidence, (lifts, action)
    # long gaps of a segment that kept buying (churn 0% of a 22% base, as on Chinook) are no lapse
    regular = next_best_action({"recency_days": 1.8, "frequency": -1.7}, churn_rate=0.0, overall_churn=0.22)
    assert regular.kind != "win-back", regular
    quiet = next_best_action({"x": 0.3}, churn_rate=0.3, overall_churn=0.3)
    assert quiet.kind == "nurture" and quiet.text
    assert quiet.evidence == ["no play fits: its strongest difference is x 0.3 sd above average",
                              "churn 30% vs 30% overall (1.0x)"]
    assert next_best_action({}).evidence == ["no play fits: no feature differs from the average"]
    assert "no default action" not in quiet.text.lower()
