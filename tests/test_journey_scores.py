"""Next-event scores: smoothed Markov baseline, log-loss, same targets for every model, Markov start."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_journey_model import TINY, two_direction_sequences

from gpuseg.journey import JourneyEncoder, MarkovBaseline, Sequences, UnigramBaseline
from gpuseg.journey.baselines import (
    MARKOV_PRIORS,
    log_loss,
    next_event_scores,
    step_pairs,
    top_k_hits,
)
from gpuseg.runtime.artifacts import ArtifactError


def _seqs(rows: list[list[int]], vocab: int = 6) -> Sequences:
    """Sequences of hand-written event-type codes (>= 3), one list per customer."""
    L = max(len(r) for r in rows)
    cat = np.zeros((len(rows), L, 1), dtype=np.int16)
    for i, r in enumerate(rows):
        cat[i, :len(r), 0] = r
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    return Sequences(customer_ids=pa.array([f"c{i}" for i in range(len(rows))]), lengths=lengths,
                     n_events=lengths, categorical=cat, continuous=np.zeros((len(rows), L, 3), np.float32),
                     categorical_names=["event_type"],
                     continuous_names=["log_amount", "log_gap_hours", "log_hours_to_as_of"], vocab_sizes=[vocab])


def test_smoothed_markov_by_hand_and_tuned_on_validation():
    train = _seqs([[3, 4, 3, 4], [3, 4, 5]])  # 3->4 three times, 4->3 once, 4->5 once; never 5->x
    m = MarkovBaseline(prior=1.0).fit(train)
    u = UnigramBaseline().fit(train)
    # unigram: counts of next types (3: 1, 4: 3, 5: 1) + 0.5 each, <pad> excluded
    assert u.proba_[4] == pytest.approx(3.5 / (5 + 0.5 * 5)) and u.proba_[0] == 0
    assert m.table_proba_[3, 4] == pytest.approx((3 + u.proba_[4]) / 4)
    assert m.table_proba_[5] == pytest.approx(u.proba_)  # unseen state: the unigram
    assert np.allclose(m.table_proba_.sum(1), 1)
    test = _seqs([[5, 3, 5]])  # 3->5 never seen in training: still a finite log-loss
    assert np.isfinite(log_loss(*m.predict_proba_next(test)))
    # tuned: the prior with the lowest validation log-loss, one of the grid
    val = _seqs([[3, 5, 4, 5], [4, 4, 3, 3]])
    tuned = MarkovBaseline().fit(train, val)
    assert tuned.prior_ in MARKOV_PRIORS
    best = min(MARKOV_PRIORS, key=lambda p: log_loss(*MarkovBaseline(prior=p).fit(train).predict_proba_next(val)))
    assert tuned.prior_ == best
    assert log_loss(*tuned.predict_proba_next(val)) <= log_loss(*m.predict_proba_next(val))


class _Oracle:
    """A 'model' that predicts the Markov chain's table, in the encoder's output order."""

    def __init__(self, markov):
        self.markov = markov

    def predict_proba_next(self, seqs):
        return self.markov.predict_proba_next(seqs)


class _Shuffled(_Oracle):
    def predict_proba_next(self, seqs):
        proba, actual = super().predict_proba_next(seqs)
        return proba[::-1], actual[::-1]


def test_scores_use_the_same_targets_and_flag_short_sequences():
    seqs, _ = two_direction_sequences(n=200)
    train, val, test = seqs.subset(np.arange(120)), seqs.subset(np.arange(120, 150)), seqs.subset(np.arange(150, 200))
    markov = MarkovBaseline().fit(train, val)
    scores = next_event_scores(_Oracle(markov), train, test, val)
    assert scores["accuracy"]["model"] == scores["accuracy"]["markov"]
    assert scores["log_loss"]["model"] == pytest.approx(scores["log_loss"]["markov"])
    assert scores["log_loss"]["markov"] < scores["log_loss"]["unigram"]
    assert not scores["model_beats_markov"]["log_loss"] and not scores["too_short"]
    assert {v["verdict"] for v in scores["versus_markov"].values()} == {"tie"}
    assert scores["n_steps"] == int(np.sum(np.maximum(test.lengths - 1, 0)))
    top = scores["top_k_accuracy"]
    assert top["model"] == top["markov"] >= scores["accuracy"]["markov"] and top["k"] == min(5, test.vocab_sizes[0])
    with pytest.raises(RuntimeError, match="different next-event targets"):
        next_event_scores(_Shuffled(markov), train, test, val)
    short = _seqs([[3], [4, 3], [5], [3], [4]])
    out = next_event_scores(_Oracle(MarkovBaseline().fit(train)), train, short)
    assert out["too_short"] and "too short" in out["note"] and out["mean_length"] == pytest.approx(1.2)
    assert not scores["trivial"]


def test_a_single_next_event_is_flagged_trivial():
    """A shop whose only event is a purchase (Chinook): accuracy 1 for everyone says nothing."""
    one = _seqs([[3] * n for n in (4, 6, 5, 7, 3, 8)], vocab=4)
    out = next_event_scores(_Oracle(MarkovBaseline().fit(one)), one, one)
    assert out["accuracy"]["markov"] == out["accuracy"]["unigram"] == 1.0
    assert out["trivial"] and "say nothing about the encoder" in out["note"] and not out["too_short"]


def test_encoder_probabilities_line_up_with_the_baselines_and_start_at_markov(tmp_path):
    seqs, _ = two_direction_sequences(n=160)
    rows = np.arange(len(seqs))
    train, val = rows[rows % 5 != 0], rows[rows % 5 == 0]
    # a vanishing learning rate keeps the start: the head is the smoothed Markov chain
    enc = JourneyEncoder(**{**TINY, "epochs": 1, "lr": 1e-12}).fit(seqs, train_rows=train, validation_rows=val)
    markov = MarkovBaseline().fit(seqs.subset(train), seqs.subset(val))
    proba, actual = enc.predict_proba_next(seqs)
    m_proba, m_actual = markov.predict_proba_next(seqs)
    assert np.array_equal(actual, m_actual) and np.array_equal(actual, step_pairs(seqs)[1])
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    assert np.abs(proba - m_proba).max() < 1e-4
    assert enc.best_epoch_ in (0, 1)
    pred, actual2 = enc.predict_next(seqs)
    assert np.array_equal(pred, proba.argmax(1)) and np.array_equal(actual2, actual)
    # without the Markov start the untrained head is nowhere near the chain
    cold = JourneyEncoder(**{**TINY, "epochs": 1, "lr": 1e-12}, markov_init=False).fit(
        seqs, train_rows=train, validation_rows=val)
    assert np.abs(cold.predict_proba_next(seqs)[0] - m_proba).max() > 0.1


def test_trained_encoder_beats_the_smoothed_markov_on_log_loss():
    seqs, _ = two_direction_sequences(n=360)
    rows = np.arange(len(seqs))
    train, val, test = rows[rows % 4 > 1], rows[rows % 4 == 1], rows[rows % 4 == 0]
    enc = JourneyEncoder(**{**TINY, "epochs": 12, "batch_size": 16, "lr": 0.02}).fit(
        seqs, train_rows=train, validation_rows=val)
    scores = next_event_scores(enc, seqs.subset(train), seqs.subset(test), seqs.subset(val))
    assert scores["model_beats_markov"] == {"accuracy": True, "log_loss": True}
    assert scores["log_loss"]["model"] < scores["log_loss"]["markov"] - 0.2
    assert scores["versus_markov"]["accuracy"]["verdict"] == "win"
    assert scores["versus_markov"]["log_loss"]["verdict"] == "win"
    assert scores["versus_markov"]["log_loss"]["difference"] < 0


def test_version_one_encoder_files_are_refused_with_a_remedy(tmp_path):
    import json

    seqs, _ = two_direction_sequences(n=80)
    JourneyEncoder(**{**TINY, "epochs": 1}).fit(seqs).save(tmp_path / "enc")
    meta = tmp_path / "enc.json"
    doc = json.loads(meta.read_text())
    doc["schema_version"] = 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="schema_version 1.*schema_version 3"):
        JourneyEncoder.load(tmp_path / "enc")


def test_top_k_hits_counts_the_actual_code_among_the_k_most_likely():
    proba = np.array([[0.0, 0.5, 0.3, 0.2], [0.0, 0.1, 0.2, 0.7], [0.0, 0.45, 0.35, 0.2]])
    actual = np.array([3, 1, 3])
    assert top_k_hits(proba, actual, 1).tolist() == [False, False, False]
    assert top_k_hits(proba, actual, 2).tolist() == [False, False, False]
    assert top_k_hits(proba, actual, 3).tolist() == [True, True, True]
    assert top_k_hits(proba, np.array([1, 3, 2]), 1).tolist() == [True, True, False]
    # k above the number of codes means every step is a hit
    assert top_k_hits(proba, actual, 10).all() and len(top_k_hits(proba[:0], actual[:0])) == 0


def test_network_share_is_the_validation_best_and_survives_save_and_load(tmp_path):
    from gpuseg.journey.model import NETWORK_SHARES

    seqs, _ = two_direction_sequences(n=240)
    rows = np.arange(len(seqs))
    train, val, test = rows[rows % 4 > 1], rows[rows % 4 == 1], rows[rows % 4 == 0]
    enc = JourneyEncoder(**{**TINY, "epochs": 3, "batch_size": 16, "lr": 0.02}).fit(
        seqs, train_rows=train, validation_rows=val)
    share = enc.network_share_
    assert share in NETWORK_SHARES and enc.train_info_["network_share"] == share
    mixed, actual = enc.predict_proba_next(seqs.subset(test))
    markov_table = enc.net_.markov_proba.numpy()
    assert np.allclose(markov_table.sum(1)[1:], 1.0, atol=1e-5)
    enc.net_.network_share.fill_(1.0)
    network, _ = enc.predict_proba_next(seqs.subset(test))
    chain = markov_table[step_pairs(seqs.subset(test))[0]]
    assert np.allclose(mixed, share * network + (1 - share) * chain, atol=1e-6)
    # the tuned share is the one with the lowest validation log-loss, recomputed here
    v_net, v_actual = enc.predict_proba_next(seqs.subset(val))
    v_chain = markov_table[step_pairs(seqs.subset(val))[0]]
    losses = {s: log_loss(s * v_net + (1 - s) * v_chain, v_actual) for s in NETWORK_SHARES}
    assert losses[share] == pytest.approx(min(losses.values()))
    enc.net_.network_share.fill_(share)
    enc.save(tmp_path / "enc")
    again = JourneyEncoder.load(tmp_path / "enc")
    assert again.network_share_ == share
    assert np.allclose(again.predict_proba_next(seqs.subset(test))[0], mixed, atol=1e-6)
