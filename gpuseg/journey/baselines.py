"""Yardsticks for the journey encoder: next-event baselines, a logistic regression, and scores.

* :class:`UnigramBaseline` always predicts the most frequent next event type.
* :class:`MarkovBaseline` predicts the most frequent successor of the current event type
  (first-order Markov chain; unseen states fall back to the unigram).
* :func:`fit_logistic` / :func:`roc_auc` / :func:`adjusted_rand_index` / :func:`kmeans_labels`
  score the label head and the embeddings without scikit-learn (a dev-only dependency).
"""

from __future__ import annotations

import numpy as np
import torch

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.cluster import metrics as cluster_metrics
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


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fit_logistic(X: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, max_iter: int = 200):
    """L2-regularised logistic regression (L-BFGS in float64 torch) on standardised columns.

    Returns
    -------
    callable
        ``predict_proba(X_new) -> ndarray`` applying the same standardisation.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mean = np.nanmean(X, axis=0)
    std = np.nanstd(X, axis=0)
    std[~np.isfinite(std) | (std < 1e-12)] = 1.0
    mean[~np.isfinite(mean)] = 0.0

    def prep(A):
        Z = (np.asarray(A, dtype=np.float64) - mean) / std
        return torch.from_numpy(np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0))

    Xt, yt = prep(X), torch.from_numpy(y)
    w = torch.zeros(Xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w + b, yt) + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), b.detach()

    def predict_proba(A: np.ndarray) -> np.ndarray:
        return torch.sigmoid(prep(A) @ w_ + b_).numpy()

    return predict_proba


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (1 = same partition, about 0 = chance)."""
    _, a = np.unique(np.asarray(a), return_inverse=True)
    _, b = np.unique(np.asarray(b), return_inverse=True)
    return cluster_metrics.adjusted_rand_index(torch.as_tensor(a), torch.as_tensor(b))


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
