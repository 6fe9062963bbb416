"""Yardsticks for the journey encoder: next-event baselines, scores, and a k-means helper.

* :class:`UnigramBaseline` predicts the (smoothed) frequency of each next event type.
* :class:`MarkovBaseline` is a first-order Markov chain over event types, smoothed towards the
  unigram with a pseudo-count that can be tuned on validation customers (a fair, strong
  baseline: raw transition counts give zero probability, hence infinite log-loss, to any
  unseen transition).
* :func:`next_event_scores` scores a model and both baselines on exactly the same held-out
  steps: accuracy and log-loss.
* :func:`kmeans_labels` clusters embeddings for scoring them against known groups (the ROC
  AUC and the adjusted Rand index are in :mod:`gpuseg.runtime.metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.journey.sequences import Sequences
from gpuseg.runtime.errors import UserInputError

#: pseudo-counts tried when the Markov chain's smoothing is tuned on validation customers
MARKOV_PRIORS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: below this mean sequence length (events per customer) a sequence model has next to nothing to use
SHORT_SEQUENCES = 2.0
#: the ranking metric next to top-1 accuracy: is the actual next event among the k most likely
TOP_K = 5
_EPS = 1e-12


def step_pairs(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """(current, next) event-type codes at every step that has a next step, flat.

    The order (customer by customer, step by step) is the one every ``predict_*`` method of
    this package returns, so predictions of different models line up entry by entry.
    """
    types = seqs.categorical[..., 0]
    valid = np.arange(seqs.max_len - 1)[None, :] < (seqs.lengths - 1)[:, None]
    return types[:, :-1][valid].astype(np.int64), types[:, 1:][valid].astype(np.int64)


def _targets(seqs: Sequences, what: str) -> tuple[np.ndarray, np.ndarray]:
    cur, nxt = step_pairs(seqs)
    if len(nxt) == 0:
        raise UserInputError(f"no training sequence has two events: cannot fit the {what} baseline")
    return cur, nxt


class UnigramBaseline:
    """Predict the next event type from its frequency over the training steps.

    Parameters
    ----------
    alpha : float, default 0.5
        Additive smoothing per code (the padding code excluded), so unseen types keep a
        small probability.
    """

    def __init__(self, alpha: float = 0.5):
        self.alpha = alpha

    def fit(self, seqs: Sequences) -> UnigramBaseline:
        """Count next event types over the training steps."""
        _, nxt = _targets(seqs, "unigram")
        self.counts_ = np.bincount(nxt, minlength=seqs.vocab_sizes[0])
        smoothed = self.counts_ + float(self.alpha)
        smoothed[0] = 0.0  # <pad> is never a target
        self.proba_ = smoothed / smoothed.sum()
        self.prediction_ = int(np.argmax(self.counts_))
        return self

    def predict_proba_next(self, seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Next-type probabilities (n_steps, n_types) and actual next types, in step order."""
        _, nxt = step_pairs(seqs)
        return np.broadcast_to(self.proba_, (len(nxt), len(self.proba_))), nxt

    def predict_next(self, seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Predicted and actual next types at every step with a next step."""
        _, nxt = step_pairs(seqs)
        return np.full(len(nxt), self.prediction_, dtype=np.int64), nxt


class MarkovBaseline:
    """First-order Markov chain over event types, smoothed towards the unigram.

    ``P(next | current) = (count(current, next) + prior * P_unigram(next)) / (count(current) + prior)``:
    a state seen often follows its own counts, a rare or unseen one falls back to the unigram.

    Parameters
    ----------
    prior : float or None, default None
        Pseudo-count of the unigram prior. None tunes it on the ``validation`` sequences given
        to :meth:`fit` (lowest log-loss over :data:`MARKOV_PRIORS`), else uses 1.
    """

    def __init__(self, prior: float | None = None):
        self.prior = prior

    def fit(self, seqs: Sequences, validation: Sequences | None = None) -> MarkovBaseline:
        """Count transitions ``current -> next`` over the training steps (and tune the prior)."""
        cur, nxt = _targets(seqs, "Markov")
        v = int(seqs.vocab_sizes[0])
        self.transitions_ = np.bincount(cur * v + nxt, minlength=v * v).reshape(v, v).astype(np.float64)
        self.unigram_ = UnigramBaseline().fit(seqs).proba_
        priors = [float(self.prior)] if self.prior is not None else [1.0]
        if self.prior is None and validation is not None and (validation.lengths > 1).any():
            priors = list(MARKOV_PRIORS)
        best = None
        for prior in priors:
            self.table_proba_ = self._table(prior)
            score = log_loss(*self.predict_proba_next(validation)) if len(priors) > 1 else 0.0
            if best is None or score < best[0]:
                best = (score, prior)
        self.prior_ = best[1]
        self.table_proba_ = self._table(self.prior_)
        self.table_ = self.table_proba_.argmax(axis=1)
        return self

    def _table(self, prior: float) -> np.ndarray:
        counts = self.transitions_ + prior * self.unigram_[None, :]
        return counts / counts.sum(axis=1, keepdims=True)

    def predict_proba_next(self, seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Next-type probabilities (n_steps, n_types) and actual next types, in step order."""
        cur, nxt = step_pairs(seqs)
        return self.table_proba_[np.minimum(cur, len(self.table_proba_) - 1)], nxt

    def predict_next(self, seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Predicted and actual next types at every step with a next step."""
        cur, nxt = step_pairs(seqs)
        return self.table_[np.minimum(cur, len(self.table_) - 1)], nxt


def accuracy(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Share of equal entries (NaN when empty)."""
    return float(np.mean(predicted == actual)) if len(actual) else float("nan")


def top_k_hits(proba: np.ndarray, actual: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per step, whether the actual code is among the ``k`` most probable ones (bool, shape (n,)).

    Ties at the k-th probability are broken by code order (``argpartition``), as top-1 accuracy
    breaks them by ``argmax``.
    """
    proba = np.asarray(proba)
    if not len(actual):
        return np.zeros(0, dtype=bool)
    k = min(int(k), proba.shape[1])
    top = np.argpartition(-proba, k - 1, axis=1)[:, :k]
    return (top == np.asarray(actual)[:, None]).any(axis=1)


def log_loss(proba: np.ndarray, actual: np.ndarray) -> float:
    """Mean negative log-probability (nats) of the actual codes (NaN when empty).

    Parameters
    ----------
    proba : ndarray, shape (n, n_codes)
        Predicted distribution per step.
    actual : ndarray of int, shape (n,)
        The code that happened at each step.
    """
    if not len(actual):
        return float("nan")
    p = np.asarray(proba)[np.arange(len(actual)), np.asarray(actual)]
    return float(-np.mean(np.log(np.clip(p.astype(np.float64), _EPS, 1.0))))


def next_event_scores(model, train: Sequences, test: Sequences,
                      validation: Sequences | None = None) -> dict[str, Any]:
    """Accuracy and log-loss of ``model`` and of both baselines on the same held-out steps.

    Parameters
    ----------
    model : object with ``predict_proba_next(seqs) -> (proba, actual)``
        Typically a fitted :class:`~gpuseg.journey.model.JourneyEncoder`.
    train : Sequences
        The baselines are fitted on these (the model's training customers).
    test : Sequences
        Held-out customers; every step with a next step is one target.
    validation : Sequences, optional
        Tunes the Markov chain's smoothing (never the test customers).

    Returns
    -------
    dict
        ``accuracy``, ``top_k_accuracy`` (the actual next event among the :data:`TOP_K` most
        likely; with ``k``) and ``log_loss`` ({model, unigram, markov}), ``n_steps``, ``n_customers``
        (test customers with a next step), ``mean_length`` (events per test customer with
        events), ``markov_prior``, ``model_beats_markov`` ({accuracy, log_loss}) and
        ``too_short`` with a ``note`` when sequences are too short for a sequence model to
        show anything, ``trivial`` (with a ``note``) when every held-out next event is the same
        one, and ``versus_markov``: per metric the model-minus-Markov difference,
        its paired standard error and a ``win``/``tie``/``loss`` verdict at two standard errors.

    Raises
    ------
    RuntimeError
        When the model's targets differ from the baselines' (they must score the same steps).
    """
    proba, actual = model.predict_proba_next(test)
    unigram = UnigramBaseline().fit(train)
    markov = MarkovBaseline().fit(train, validation)
    u_proba, u_actual = unigram.predict_proba_next(test)
    m_proba, m_actual = markov.predict_proba_next(test)
    if not (np.array_equal(actual, u_actual) and np.array_equal(actual, m_actual)):
        raise RuntimeError("the model and the baselines were scored on different next-event targets")
    acc = {"model": accuracy(np.asarray(proba).argmax(1), actual) if len(actual) else float("nan"),
           "unigram": accuracy(*unigram.predict_next(test)), "markov": accuracy(*markov.predict_next(test))}
    top_k = {"k": min(TOP_K, int(np.asarray(proba).shape[1])), "model": _mean(top_k_hits(proba, actual)),
             "unigram": _mean(top_k_hits(u_proba, actual)), "markov": _mean(top_k_hits(m_proba, actual))}
    ll = {"model": log_loss(proba, actual), "unigram": log_loss(u_proba, actual),
          "markov": log_loss(m_proba, actual)}
    has = test.lengths > 0
    mean_length = float(test.lengths[has].mean()) if has.any() else 0.0
    result: dict[str, Any] = {
        "accuracy": acc, "top_k_accuracy": top_k, "log_loss": ll, "n_steps": int(len(actual)),
        "n_customers": int(np.sum(test.lengths > 1)), "mean_length": mean_length,
        "markov_prior": float(markov.prior_),
        "model_beats_markov": {"accuracy": bool(acc["model"] > acc["markov"]),
                               "log_loss": bool(ll["model"] < ll["markov"])},
        "too_short": bool(mean_length < SHORT_SEQUENCES),
        "versus_markov": _paired_verdicts(proba, m_proba, actual),
    }
    notes = []
    if result["too_short"]:
        notes.append(f"mean sequence length {mean_length:.2f} events: most customers have no next event, "
                     "too short for a sequence model to beat the baselines meaningfully")
    # one outcome (a shop whose only event is a purchase): every predictor is right every time
    result["trivial"] = bool(len(actual) and len(np.unique(actual)) == 1)
    if result["trivial"]:
        notes.append(f"every one of the {len(actual)} held-out next events is the same event: any predictor "
                     "gets it right, so these next-event figures say nothing about the encoder")
    if notes:
        result["note"] = "; ".join(notes)
    return result


def _mean(hits: np.ndarray) -> float:
    return float(np.mean(hits)) if len(hits) else float("nan")


def _paired_verdicts(proba: np.ndarray, m_proba: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    """Model minus Markov per step (hit, top-k hit, log-probability), with 2-standard-error verdicts.

    A difference within two standard errors of the paired per-step differences is a ``tie``:
    a gap of a few steps in tens of thousands is no win.
    """
    out: dict[str, Any] = {}
    if not len(actual):
        return out
    idx = np.arange(len(actual))
    hits = (np.asarray(proba).argmax(1) == actual).astype(np.float64) - (m_proba.argmax(1) == actual)
    top_hits = top_k_hits(proba, actual).astype(np.float64) - top_k_hits(m_proba, actual)
    logs = (np.log(np.clip(np.asarray(proba)[idx, actual].astype(np.float64), _EPS, 1.0))
            - np.log(np.clip(m_proba[idx, actual], _EPS, 1.0)))
    for name, diff, sign in (("accuracy", hits, 1.0), ("top_k_accuracy", top_hits, 1.0), ("log_loss", -logs, -1.0)):
        mean, se = float(diff.mean()), float(diff.std() / np.sqrt(len(diff)))
        better = sign * mean > 2 * se
        worse = sign * mean < -2 * se
        out[name] = {"difference": mean, "standard_error": se,
                     "verdict": "win" if better else "loss" if worse else "tie"}
    return out


def kmeans_labels(X: np.ndarray, k: int, *, seed: int = 0, n_init: int = 4, standardize: bool = True) -> np.ndarray:
    """k-means labels (gpuseg's own MiniBatchKMeans on CPU, best of ``n_init`` seedings).

    With ``standardize`` every column is z-scored first, so that each embedding dimension
    counts alike whatever its scale.
    """
    X = np.asarray(X, dtype=np.float64)
    if standardize:
        std = X.std(0)
        X = (X - X.mean(0)) / np.where(std > 0, std, 1.0)
    model = MiniBatchKMeans(k, n_init=n_init, random_state=seed, device="cpu")
    return np.asarray(model.fit_predict(X.astype(np.float32)), dtype=np.int64)
