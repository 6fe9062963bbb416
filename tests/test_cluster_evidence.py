"""Metrics, k selection, Ward macro segments and confidence: checked against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICES
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from gpuseg.cluster.confidence import (
    calibrated_confidence,
    margin,
    match_labels,
    outlier_thresholds,
)
from gpuseg.cluster.hierarchy import choose_n_macro, cut_tree, ward_linkage
from gpuseg.cluster.metrics import (
    adjusted_rand_index,
    calinski_harabasz,
    davies_bouldin,
    silhouette,
)
from gpuseg.cluster.selection import knee_point, select_k
from gpuseg.runtime.logistic import fit_logistic


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(1500, centers=5, n_features=6, cluster_std=1.2, random_state=3)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(len(y)) < 0.15, rng.integers(0, 5, len(y)), y)
    return x.astype(np.float32), y, noisy


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_match_scikit_learn(blobs, device):
    x, y, noisy = blobs
    xt, lt = torch.tensor(x, device=device), torch.tensor(noisy, device=device)
    assert adjusted_rand_index(torch.tensor(y), torch.tensor(noisy)) == pytest.approx(
        skm.adjusted_rand_score(y, noisy), abs=1e-12)
    assert calinski_harabasz(xt, lt) == pytest.approx(skm.calinski_harabasz_score(x, noisy), rel=1e-5)
    assert davies_bouldin(xt, lt) == pytest.approx(skm.davies_bouldin_score(x, noisy), rel=1e-5)
    assert silhouette(xt, lt, sample_size=None) == pytest.approx(skm.silhouette_score(x, noisy), rel=1e-5)


def test_ari_is_label_permutation_invariant():
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, torch.tensor([5, 5, 3, 3, 9, 9])) == 1.0
    assert adjusted_rand_index(a, torch.tensor([0, 1, 0, 1, 0, 1])) < 0.0


def test_select_k_finds_the_planted_k_and_records_evidence(blobs):
    x, y, _ = blobs

    def fit(k, data, seed):
        return torch.tensor(KMeans(k, n_init=2, random_state=seed).fit(data.numpy()).cluster_centers_,
                            dtype=torch.float32)

    result = select_k(torch.tensor(x), range(2, 9), fit, seed=0, n_bootstrap=2)
    assert result["k"] == 5
    assert [c["k"] for c in result["candidates"]] == list(range(2, 9))
    for c in result["candidates"]:
        assert {"silhouette", "calinski_harabasz", "davies_bouldin", "stability", "inertia", "min_share"} <= set(c)
    best = next(c for c in result["candidates"] if c["k"] == 5)
    assert best["stability"] > 0.95
    assert "mean rank" in result["rule_text"]


def test_min_share_sets_aside_tiny_segments(blobs):
    x, _, _ = blobs

    def fit(k, data, seed):
        return torch.tensor(KMeans(k, n_init=1, random_state=seed).fit(data.numpy()).cluster_centers_,
                            dtype=torch.float32)

    result = select_k(torch.tensor(x), [3, 5, 7], fit, min_share=0.19, n_bootstrap=0, rule="silhouette")
    eligible = {c["k"]: c["eligible"] for c in result["candidates"]}
    assert eligible[7] is False and result["k"] in (3, 5)
    with pytest.raises(ValueError, match="'rule' parameter"):
        select_k(torch.tensor(x), [3], fit, rule="best")


def test_knee_of_a_convex_curve():
    ks = list(range(1, 11))
    inertia = [100, 50, 20, 15, 13, 12, 11, 10.5, 10, 9.8]
    assert knee_point(ks, inertia) == 3


def test_ward_on_weighted_centres_matches_scipy_on_repeated_points():
    rng = np.random.default_rng(1)
    centres = np.concatenate([rng.normal(m, 0.5, (12, 3)) for m in (0, 6, 12)])
    weights = rng.integers(1, 5, len(centres))
    ours = ward_linkage(centres, weights.astype(float))
    expanded = linkage(np.repeat(centres, weights, axis=0), "ward")
    labels_scipy = fcluster(expanded, 3, "maxclust")[np.cumsum(weights) - 1]
    assert skm.adjusted_rand_score(cut_tree(ours, 3), labels_scipy) == 1.0
    unweighted = ward_linkage(centres, np.ones(len(centres)))
    np.testing.assert_allclose(np.sort(unweighted[:, 2]), np.sort(linkage(centres, "ward")[:, 2]), rtol=1e-9)
    assert choose_n_macro(unweighted, 2, 8) == 3


def test_cut_tree_nests_micro_in_macro():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(40, 4))
    tree = ward_linkage(centres, np.ones(40))
    cuts = {n: cut_tree(tree, n) for n in (1, 2, 4, 7, 13, 40)}
    for n, labels in cuts.items():
        assert len(np.unique(labels)) == n and labels[0] == 0
    # nested: each group of a finer cut lies inside one group of every coarser cut
    for coarse, fine in [(1, 2), (2, 4), (4, 7), (7, 13), (13, 40), (2, 13)]:
        for group in np.unique(cuts[fine]):
            assert len(np.unique(cuts[coarse][cuts[fine] == group])) == 1, (coarse, fine, group)
    with pytest.raises(ValueError):
        cut_tree(tree, 41)


def test_confidence_calibration_and_outliers():
    rng = np.random.default_rng(3)
    m = rng.random(5000)
    truth = 1 / (1 + np.exp(-(-2 + 6 * m)))
    y = rng.random(5000) < truth
    (b,), a = fit_logistic(m[:, None], y, l2=0.0)
    assert a == pytest.approx(-2, abs=0.3) and b == pytest.approx(6, abs=0.6)
    conf = calibrated_confidence(m, a, b)
    assert conf.min() >= 0 and conf.max() <= 1
    np.testing.assert_allclose(margin(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 4.0])), [1.0, 0.0, 0.5])
    labels = np.repeat([0, 1], 100)
    distances = np.concatenate([np.arange(100), 10 * np.arange(100)]).astype(float)
    thr = outlier_thresholds(labels, distances, 3, 0.95)
    assert thr[0] == pytest.approx(94.05) and thr[1] == pytest.approx(940.5) and np.isinf(thr[2])
    assert (distances > thr[labels]).sum() == 10
    ref = np.array([0, 0, 1, 1, 2])
    assert (match_labels(ref, np.array([2, 2, 0, 0, 1]), 3, 3) == ref).all()
