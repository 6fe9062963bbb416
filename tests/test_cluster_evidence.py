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
from gpuseg.cluster.selection import business_separation, knee_point, select_k
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


def test_full_data_metrics_are_the_same_in_row_chunks(blobs, monkeypatch):
    # at scale the indices walk the matrix in chunks (no float64 copy of it): chunks of 7 rows
    # must give scikit-learn's figures too
    from gpuseg.cluster import metrics

    x, _, noisy = blobs
    monkeypatch.setattr(metrics._chunks, "__defaults__", (7,))
    xt, lt = torch.tensor(x), torch.tensor(noisy)
    assert calinski_harabasz(xt, lt) == pytest.approx(skm.calinski_harabasz_score(x, noisy), rel=1e-9)
    assert davies_bouldin(xt, lt) == pytest.approx(skm.davies_bouldin_score(x, noisy), rel=1e-6)


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


def _sk_fit(k, data, seed):
    return torch.tensor(KMeans(k, n_init=1, random_state=seed).fit(data.numpy()).cluster_centers_,
                        dtype=torch.float32)


def test_business_separation_figures():
    values = np.array([0, 0, 1, 1, 1, np.nan, 0, 1.0])
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    sep = business_separation(values, labels, 3)
    np.testing.assert_allclose(sep["by_segment"], [1 / 3, 1.0, 0.5])
    known = np.isfinite(values)
    overall = values[known].mean()
    counts = np.array([3, 2, 2])
    spread = np.sqrt((counts * (np.array(sep["by_segment"]) - overall) ** 2).sum() / counts.sum())
    assert sep["overall"] == pytest.approx(overall) and sep["spread"] == pytest.approx(spread)
    assert sep["range"] == pytest.approx(2 / 3)
    # eta is the correlation ratio: between-segment over total spread
    assert sep["eta"] == pytest.approx(spread / values[known].std())
    assert 0 <= sep["eta"] <= 1


def test_prefer_rule_stays_in_the_range_and_ranks_business_separation(blobs):
    x, y, _ = blobs
    # a value that only differs between planted groups 0-1 and the rest: ranked with the indices
    value = np.where(y < 2, 100.0, 10.0)
    result = select_k(torch.tensor(x), range(3, 10), _sk_fit, n_bootstrap=2, prefer=(5, 8),
                      business={"value": value})
    assert result["rule"] == "prefer" and result["k"] == 5
    assert "value" in result["rule_text"] and "k=5 won" in result["reason"]
    assert result["criteria"]["davies_bouldin"] == "lower is better"
    assert result["criteria"]["value_spread"] == "higher is better"
    pool = [c for c in result["candidates"] if c["in_pool"]]
    assert pool and all(5 <= c["k"] <= 8 and c["meets_min_stability"] for c in pool)
    for c in result["candidates"]:
        assert len(c["business"]["value"]["by_segment"]) == c["k"]
        assert c["value_spread"] == c["business"]["value"]["spread"]
    # the business spread is one of the ranked criteria: its ranks follow the spreads
    spreads = {c["k"]: c["value_spread"] for c in pool}
    ranks = {c["k"]: c["ranks"]["value_spread"] for c in pool}
    assert sorted(spreads, key=lambda k: (-spreads[k], k)) == sorted(ranks, key=ranks.get)
    winner = next(c for c in pool if c["k"] == result["k"])
    assert winner["mean_rank"] == pytest.approx(np.mean(list(winner["ranks"].values())))


def test_prefer_rule_leaves_the_range_for_clear_structure():
    # three tight blobs: every split into 5-8 reproduces far worse than k=3 (stability 1.0)
    x, _ = make_blobs(600, centers=3, n_features=4, cluster_std=1.0, random_state=5)
    result = select_k(torch.tensor(x, dtype=torch.float32), range(2, 9), _sk_fit, n_bootstrap=2)
    assert result["k"] == 3, result["reason"]
    assert "outside the preferred range" in result["reason"]
    assert result["stability_floor"] > 0.6
    assert not any(c["meets_min_stability"] for c in result["candidates"] if c["in_prefer"])
    assert result["business"] is None and "evidence alone" in result["rule_text"]


def test_prefer_rule_without_a_stable_k_says_so():
    # no structure and a floor nothing reaches: the range decides, and the reason says the split is weak
    u = np.random.default_rng(0).random((500, 3)).astype(np.float32)
    result = select_k(torch.tensor(u), range(3, 10), _sk_fit, n_bootstrap=2, min_stability=0.99)
    assert 5 <= result["k"] <= 8
    assert "no k reached the stability floor" in result["reason"]
    with pytest.raises(ValueError, match="'prefer' parameter"):
        select_k(torch.tensor(u), [3, 4], _sk_fit, prefer=(6, 4))
