"""Yardsticks for the journey encoder: next-event baselines, a logistic regression, and scores.

* :class:`UnigramBaseline` always predicts the most frequent next event type.
* :class:`MarkovBaseline` predicts the most frequent successor of the current event type
  (first-order Markov chain; unseen states fall back to the unigram).
* :func:`kmeans_labels` clusters embeddings for scoring them against known groups (the ROC
  AUC and the adjusted Rand index are in :mod:`gpuseg.runtime.metrics`).
"""

from __future__ import annotations

import numpy as np

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.journey.sequences import Sequences
from gpuseg.runtime.errors import UserInputError


def step_pairs(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """(current, next) event-type codes at every step that has a next step, flat."""
    types = seqs.categorical[..., 0]
    valid = np.arange(seqs.max_len - 1)[None, :] < (seqs.lengths - 1)[:, None]
    return types[:, :-1][valid].astype(np.int64), types[:, 1:][valid].astype(np.int64)


class UnigramBaseline:
    """Predict the most frequent next event type of the training sequences."""

    def fit(self, seqs: Sequences) -> UnigramBaseline:
        """Count next event types over the training steps."""
        _, nxt = step_pairs(seqs)
        if len(nxt) == 0:
            raise UserInputError("no training sequence has two events: cannot fit the unigram baseline")
        self.counts_ = np.bincount(nxt, minlength=seqs.vocab_sizes[0])
        self.prediction_ = int(np.argmax(self.counts_))
        return self

    def predict_next(self, seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Predicted and actual next types at every step with a next step."""
        _, nxt = step_pairs(seqs)
        return np.full(len(nxt), self.prediction_, dtype=np.int64), nxt


class MarkovBaseline:
    """First-order Markov chain over event types: predict the most frequent successor."""

    def fit(self, seqs: Sequences) -> MarkovBaseline:
        """Count transitions ``current -> next`` over the training steps."""
        cur, nxt = step_pairs(seqs)
        if len(nxt) == 0:
            raise UserInputError("no training sequence has two events: cannot fit the Markov baseline")
        v = int(seqs.vocab_sizes[0])
        self.transitions_ = np.bincount(cur * v + nxt, minlength=v * v).reshape(v, v)
        fallback = int(np.argmax(self.transitions_.sum(axis=0)))
        self.table_ = np.where(self.transitions_.sum(axis=1) > 0, self.transitions_.argmax(axis=1), fallback)
        return self

    def predict_next(self, seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Predicted and actual next types at every step with a next step."""
        cur, nxt = step_pairs(seqs)
        return self.table_[np.minimum(cur, len(self.table_) - 1)], nxt


def accuracy(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Share of equal entries (NaN when empty)."""
    return float(np.mean(predicted == actual)) if len(actual) else float("nan")


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
