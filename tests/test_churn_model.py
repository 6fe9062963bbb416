"""Churn propensity model and metrics (gpuseg.value.churn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICES
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from gpuseg.runtime.errors import UserInputError
from gpuseg.value import ChurnModel, binary_metrics, calibration_table, risk_tier, roc_auc

torch.set_num_threads(1)


def make_data(n=3000, seed=0, nonlinear=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)) * np.array([1.0, 10.0, 0.1, 1.0, 1.0]) + np.array([0, 50, 0, 0, 0])
    z = 1.5 * X[:, 0] - 0.2 * (X[:, 1] - 50) + 8 * X[:, 2]
    if nonlinear:
        z = 2.5 * (np.abs(X[:, 3]) - 0.8) + 0.5 * X[:, 0]
    p = 1 / (1 + np.exp(-z))
    return X, (rng.random(n) < p).astype(int), p


def test_roc_auc_and_calibration_match_references():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500), 1)  # many ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    table = calibration_table([0, 1, 1, 0, 1], [0.05, 0.15, 0.95, 1.0, 0.5], n_bins=4)
    assert table["count"] == [2, 0, 1, 2]
    assert table["bin_lower"] == [0.0, 0.25, 0.5, 0.75] and table["bin_upper"][-1] == 1.0
    assert table["mean_predicted"][0] == pytest.approx(0.1) and table["observed_rate"][0] == 0.5
    assert np.isnan(table["observed_rate"][1]) and table["observed_rate"][3] == 0.5
    tiers = risk_tier([0.0, 0.3, 0.31, 0.7, 0.71, 1.0])
    assert tiers.tolist() == ["low", "low", "medium", "medium", "high", "high"]
    assert risk_tier([0.5], thresholds=(0.1, 0.4)).tolist() == ["high"]
    with pytest.raises(UserInputError, match="0/1 labels"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(UserInputError, match="increasing"):
        risk_tier([0.5], thresholds=(0.7, 0.3))
    with pytest.raises(UserInputError, match="probabilities"):
        calibration_table([0, 1], [0.1, 1.2])


@pytest.mark.parametrize("device", DEVICES)
def test_logistic_matches_sklearn_and_is_calibrated(device):
    X, y, p_true = make_data()
    model = ChurnModel(hidden=0, l2=1e-4, epochs=60, lr=0.05, batch_size=512, device=device,
                       random_state=0).fit(X, y)
    p = model.churn_probability(X)
    ref = LogisticRegression(C=1e4, max_iter=2000).fit((X - X.mean(0)) / X.std(0), y)
    p_ref = ref.predict_proba((X - X.mean(0)) / X.std(0))[:, 1]
    assert np.abs(p - p_ref).max() < 0.05
    assert roc_auc(y, p) == pytest.approx(roc_auc(y, p_true), abs=0.01)
    cal = calibration_table(y, p)
    counts = np.array(cal["count"])
    gap = np.abs(np.array(cal["mean_predicted"]) - np.array(cal["observed_rate"]))[counts >= 100]
    assert gap.max() < 0.08


def test_mlp_beats_logistic_on_a_nonlinear_target_with_holdout():
    X, y, _ = make_data(n=4000, seed=1, nonlinear=True)
    lin = ChurnModel(hidden=0, epochs=30, lr=0.02, holdout_fraction=0.25, device="cpu").fit(X, y)
    mlp = ChurnModel(hidden=16, epochs=30, lr=0.02, holdout_fraction=0.25, device="cpu").fit(X, y)
    assert mlp.validation_["n"] == 1000  # stratified 25 %
    assert mlp.validation_["positive_rate"] == pytest.approx(y.mean(), abs=0.002)
    assert mlp.validation_["roc_auc"] > lin.validation_["roc_auc"] + 0.1
    assert mlp.validation_["roc_auc"] > 0.75
    assert 1 <= mlp.best_epoch_ <= 30 and len(mlp.history_) == 30
    assert mlp.history_[mlp.best_epoch_ - 1]["val_loss"] == min(h["val_loss"] for h in mlp.history_)
    assert sum(mlp.validation_["calibration"]["count"]) == 1000


def test_same_seed_same_result_and_save_load(tmp_path):
    X, y, _ = make_data(n=1500, seed=2)
    kw = dict(hidden=8, epochs=5, holdout_fraction=0.2, device="cpu")
    a = ChurnModel(random_state=3, **kw).fit(X, y)
    b = ChurnModel(random_state=3, **kw).fit(X, y)
    c = ChurnModel(random_state=4, **kw).fit(X, y)
    np.testing.assert_array_equal(a.churn_probability(X), b.churn_probability(X))
    assert not np.array_equal(a.churn_probability(X), c.churn_probability(X))
    path = a.save(tmp_path / "churn.safetensors")
    assert path.exists() and (tmp_path / "churn.safetensors.json").exists()
    loaded = ChurnModel.load(path, device="cpu")
    np.testing.assert_array_equal(loaded.churn_probability(X), a.churn_probability(X))
    assert loaded.validation_["roc_auc"] == a.validation_["roc_auc"]
    metrics = binary_metrics(y, a.churn_probability(X))
    assert set(metrics) == {"n", "positive_rate", "roc_auc", "log_loss", "brier", "calibration"}


def test_bad_input_is_a_clear_error():
    X, y, _ = make_data(n=200)
    with pytest.raises(UserInputError, match=r"'hidden' parameter of ChurnModel must be an int in the range \[0, inf\)"):
        ChurnModel(hidden=-1).fit(X, y)
    with pytest.raises(UserInputError, match="'holdout_fraction'"):
        ChurnModel(holdout_fraction=1.0).fit(X, y)
    with pytest.raises(UserInputError, match="same number of rows"):
        ChurnModel(device="cpu").fit(X, y[:-1])
    bad = X.copy()
    bad[7, 1] = np.nan
    with pytest.raises(UserInputError, match=r"finite.*rows \[7\]"):
        ChurnModel(device="cpu").fit(bad, y)
    with pytest.raises(UserInputError, match="two classes"):
        ChurnModel(device="cpu").fit(X, np.zeros(200, int))
    with pytest.raises(UserInputError, match="not fitted"):
        ChurnModel().predict_proba(X)
    model = ChurnModel(epochs=1, device="cpu").fit(X, y)
    with pytest.raises(UserInputError, match="expecting 5 features"):
        model.predict_proba(X[:, :3])


def test_logistic_picks_its_penalty_on_the_hold_out():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 200))  # two informative columns among 200
    y = (X[:, 0] + X[:, 1] + rng.normal(0, 1.0, 300) > 0).astype(int)
    model = ChurnModel(device="cpu", holdout_fraction=0.3).fit(X, y)
    assert [r["l2"] for r in model.history_] == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    assert model.l2_ > 1e-3  # with 200 columns and 210 rows, the exact fit without shrinkage overfits
    best = min(model.history_, key=lambda r: r["val_loss"])
    assert model.l2_ == best["l2"]
    # without a hold-out there is nothing to choose on: the given penalty is used
    assert ChurnModel(device="cpu", l2=0.05).fit(X, y).l2_ == 0.05


def test_a_large_float32_matrix_is_scored_without_a_float64_copy():
    """``churn_probability`` converts a batch at a time: its peak is far below one float64 copy of X."""
    import tracemalloc

    rng = np.random.default_rng(3)
    X, y, _ = make_data(n=500)
    model = ChurnModel(device="cpu").fit(X.astype(np.float32), y)
    big = (rng.normal(size=(200_000, 5)) * X.std(axis=0) + X.mean(axis=0)).astype(np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        batched = model.churn_probability(big, batch_size=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the output is 1.6 MB (float64 per row); one float64 copy of the input alone would be 8 MB
    assert peak < 2 * batched.nbytes < big.nbytes * 2, peak
    # the same scores as a float64 copy in the same batches, to the bit (float32 -> float64 is exact)
    np.testing.assert_array_equal(batched, model.churn_probability(big.astype(np.float64), batch_size=4096))
    # and as the chunks the profile job used to feed it (the batches are the same)
    chunks = [model.churn_probability(big[lo:lo + 65_536]) for lo in range(0, len(big), 65_536)]
    np.testing.assert_array_equal(model.churn_probability(big), np.concatenate(chunks))
    # other batch sizes differ only by float32 rounding in the network's matrix products
    np.testing.assert_allclose(model.churn_probability(big, batch_size=7), batched, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(model.predict_proba(big[:4096])[:, 1], batched[:4096])


def test_non_finite_rows_are_named_across_batches():
    """The batches of ``churn_probability`` name the same first five bad rows as a check of all of X."""
    X, y, _ = make_data(n=200)
    model = ChurnModel(device="cpu").fit(X, y)
    bad = X.copy()
    bad[[3, 7, 12, 13, 20, 40], 2] = [np.nan, np.inf, np.nan, -np.inf, np.nan, np.nan]
    expected = r"The 'X' parameter must be finite \(impute NaN first\); non-finite values in rows \[3, 7, 12, 13, 20\]\."
    with pytest.raises(UserInputError, match=expected):
        ChurnModel(device="cpu").fit(bad, y)
    for batch_size in (5, 8, 10_000):
        with pytest.raises(UserInputError, match=expected):
            model.churn_probability(bad, batch_size=batch_size)
    with pytest.raises(UserInputError, match=r"non-finite values in rows \[5, 25\]\."):
        model.predict(bad[15:])  # rows of the X given: 20 and 40 of bad
