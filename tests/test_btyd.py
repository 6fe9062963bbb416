"""BG/NBD and Gamma-Gamma in torch (gpuseg.value.btyd) and the BTYD summary (gpuseg.value.summary)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import DEVICES
from scipy import special

from gpuseg.data.schema import EVENTS
from gpuseg.runtime.errors import UserInputError
from gpuseg.value import BetaGeoModel, GammaGammaModel, btyd_summary, holdout_by_frequency
from gpuseg.value.btyd import bgnbd_log_likelihood, check_rft, gamma_gamma_log_likelihood

torch.set_num_threads(1)

CDNOW = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # lifetimes' CDNOW weekly fit


def simulate_bgnbd(n, r, alpha, a, b, T, rng, horizon=0.0):
    """Simulate BG/NBD customers: calibration (x, t_x) over (0, T] and purchases in (T, T+horizon]."""
    lam = rng.gamma(r, 1 / alpha, n)
    p = rng.beta(a, b, n)
    t = np.zeros(n)
    x = np.zeros(n)
    tx = np.zeros(n)
    future = np.zeros(n)
    alive = np.ones(n, bool)
    while alive.any():
        t = t + rng.exponential(1 / lam)
        alive &= t < T + horizon
        in_cal = alive & (t < T)
        x += in_cal
        tx = np.where(in_cal, t, tx)
        future += alive & (t >= T)
        alive &= rng.random(n) >= p  # drop out just after a purchase
    return x, tx, future


def simulate_gamma_gamma(x, p, q, v, rng):
    """Mean of x spends, each Gamma(p, rate nu), nu ~ Gamma(q, rate v)."""
    nu = rng.gamma(q, 1 / v, x.size)
    total = rng.gamma(np.maximum(p * x, 1e-9), 1 / nu)  # sum of x Gamma(p, nu) draws
    return np.where(x > 0, total / np.maximum(x, 1), 0.0)


def numpy_bgnbd_ll(r, alpha, a, b, x, tx, T):
    """FHL 2005 eq. 6 written directly with scipy (no log-sum-exp tricks)."""
    like = (special.beta(a, b + x) / special.beta(a, b)
            * special.gamma(r + x) * alpha**r / special.gamma(r) / (alpha + T) ** (r + x))
    drop = np.where(x > 0, special.beta(a + 1, b + x - 1) / special.beta(a, b)
                    * special.gamma(r + x) * alpha**r / special.gamma(r) / (alpha + tx) ** (r + x), 0.0)
    return np.log(like + drop)


def scipy_conditional(t, r, alpha, a, b, x, tx, T):
    """FHL 2005 eq. 10 with scipy's hyp2f1 (the lifetimes formula)."""
    z = t / (alpha + T + t)
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
    num = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    den = 1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x)
    return num / den


@pytest.fixture(scope="module")
def cdnow_like():
    rng = np.random.default_rng(0)
    n = 5000
    T = rng.uniform(52, 78, n)
    x, tx, future = simulate_bgnbd(n, *CDNOW.values(), T, rng, horizon=39.0)
    return x, tx, T, future


def test_log_likelihood_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 12, 200).astype(float)
    T = rng.uniform(5, 60, 200)
    tx = np.where(x > 0, rng.uniform(0, 1, 200) * T, 0.0)
    for params in ([0.243, 4.414, 0.793, 2.426], [2.0, 30.0, 1.5, 0.7]):
        ours = bgnbd_log_likelihood(*(torch.tensor(v, dtype=torch.float64) for v in params),
                                    *(torch.tensor(v) for v in (x, tx, T))).numpy()
        np.testing.assert_allclose(ours, numpy_bgnbd_ll(*params, x, tx, T), rtol=1e-10)
    # Gamma-Gamma against scipy's gamma density of the sum of x spends
    m = rng.uniform(1, 50, 200)
    xs = np.maximum(x, 1)
    p, q, v = 3.0, 4.0, 20.0
    gg = gamma_gamma_log_likelihood(*(torch.tensor(t, dtype=torch.float64) for t in (p, q, v)),
                                    torch.tensor(xs), torch.tensor(m)).numpy()
    # marginal density of the mean: integrate nu out of Gamma(px, rate x nu) x Gamma(q, rate v)
    ref = (special.gammaln(p * xs + q) - special.gammaln(p * xs) - special.gammaln(q)
           + q * np.log(v) + p * xs * np.log(xs) + (p * xs - 1) * np.log(m)
           - (p * xs + q) * np.log(v + xs * m))
    np.testing.assert_allclose(gg, ref, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_bgnbd_recovers_cdnow_parameters_and_predicts_holdout(device, cdnow_like):
    x, tx, T, future = cdnow_like
    model = BetaGeoModel(time_unit="W", device=device).fit(x, tx, T)
    est = model.params_
    for name, tol in (("r", 0.10), ("alpha", 0.15), ("a", 0.25), ("b", 0.30)):
        assert abs(est[name] - CDNOW[name]) / CDNOW[name] < tol, (name, est)
    # a maximum: no better than the fit at the true parameters, and a stationary point
    true_ll = numpy_bgnbd_ll(*CDNOW.values(), x, tx, T).sum()
    assert model.log_likelihood_ >= true_ll
    np.testing.assert_allclose(model.log_likelihood_, numpy_bgnbd_ll(*est.values(), x, tx, T).sum(),
                               rtol=1e-10)
    theta = torch.tensor([est[k] for k in ("r", "alpha", "a", "b")], dtype=torch.float64,
                         requires_grad=True)
    ll = bgnbd_log_likelihood(*theta, *(torch.tensor(v) for v in (x, tx, T))).mean()
    ll.backward()
    assert theta.grad.abs().max() < 1e-4
    # hold-out: predictions from the calibration period against the simulated next 39 weeks
    pred = model.conditional_expected_number_of_purchases_up_to_time(39.0, x, tx, T)
    assert abs(pred.sum() / future.sum() - 1) < 0.08
    groups = holdout_by_frequency(x, pred, future)
    assert [g["frequency"] for g in groups] == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert sum(g["n_customers"] for g in groups) == x.size
    assert groups[-1]["mean_actual"] > groups[1]["mean_actual"] > groups[0]["mean_actual"]
    for g in groups:
        assert abs(g["mean_predicted"] - g["mean_actual"]) < 0.35 * g["mean_actual"] + 0.1, g
    # same numbers again (determinism)
    again = BetaGeoModel(time_unit="W", device=device).fit(x, tx, T)
    assert again.params_ == pytest.approx(est, rel=1e-9)


def test_predictions_match_scipy_formulas():
    model = BetaGeoModel(time_unit="W", device="cpu")
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.integers(0, 15, 300), [0, 60, 150]]).astype(float)
    T = np.concatenate([rng.uniform(1, 78, 300), [0.5, 78, 78]])
    tx = np.where(x > 0, rng.uniform(0.2, 1, x.size) * T, 0.0)
    for params in (CDNOW, {"r": 1.3, "alpha": 12.0, "a": 2.5, "b": 4.0}):
        model.params_ = dict(params)
        for t in (1.0, 13.0, 39.0, 200.0):
            ours = model.conditional_expected_number_of_purchases_up_to_time(t, x, tx, T)
            ref = scipy_conditional(t, *params.values(), x, tx, T)
            np.testing.assert_allclose(ours, ref, rtol=1e-8)
        ts = np.array([0.0, 1.0, 10.0, 52.0, 500.0])
        r, alpha, a, b = params.values()
        z = ts / (alpha + ts)
        ref = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + ts)) ** r * special.hyp2f1(r, b, a + b - 1, z))
        np.testing.assert_allclose(model.expected_number_of_purchases_up_to_time(ts), ref,
                                   rtol=1e-8, atol=1e-14)
        alive = model.conditional_probability_alive(x, tx, T)
        ref = 1 / (1 + (x > 0) * a / (b + x - 1 + (x == 0)) * ((alpha + T) / (alpha + tx)) ** (r + x))
        np.testing.assert_allclose(alive, ref, rtol=1e-12)
        assert (alive[x == 0] == 1).all()


def test_inconsistent_history_is_a_clear_error():
    model = BetaGeoModel(device="cpu")
    with pytest.raises(UserInputError, match=r"'recency' .*must not exceed T.*index 2") as err:
        model.fit([1, 2, 3], [1.0, 2.0, 9.0], [5.0, 5.0, 5.0])
    assert "index 2: frequency=3, recency=9, T=5" in str(err.value)
    with pytest.raises(UserInputError, match=r"'frequency' .*non-negative.*index 1"):
        model.fit([1, -2, 3], [1.0, 0.0, 2.0], [5.0, 5.0, 5.0])
    with pytest.raises(UserInputError, match=r"'frequency' .*whole numbers.*index 0"):
        model.fit([1.5, 2, 3], [1.0, 2.0, 2.0], [5.0, 5.0, 5.0])
    with pytest.raises(UserInputError, match=r"'recency' .*must be 0 where frequency is 0.*index 1"):
        model.fit([1, 0, 3], [1.0, 2.0, 2.0], [5.0, 5.0, 5.0])
    with pytest.raises(UserInputError, match=r"'T' .*NaN where the other columns are not.*index 0"):
        model.fit([1, 0, 3], [1.0, 0.0, 2.0], [np.nan, 5.0, 5.0])
    with pytest.raises(UserInputError, match="same length"):
        model.fit([1, 0], [1.0, 0.0, 2.0], [5.0, 5.0, 5.0])
    with pytest.raises(UserInputError, match="not fitted"):
        model.conditional_probability_alive([1], [1.0], [2.0])
    with pytest.raises(UserInputError, match="penalizer_coef"):
        BetaGeoModel(penalizer_coef=-1).fit([1], [1.0], [2.0])
    with pytest.raises(UserInputError, match="monetary_value' parameter must be non-negative"):
        GammaGammaModel().fit([1, 2], [3.0, -1.0])


def test_customers_without_history_are_left_out(cdnow_like, tmp_path):
    x, tx, T, _ = cdnow_like
    x, tx, T = x[:1500], tx[:1500], T[:1500]
    nan = np.full(3, np.nan)
    with_nan = [np.concatenate([v, nan]) for v in (x, tx, T)]
    a = BetaGeoModel(time_unit="W", device="cpu").fit(x, tx, T)
    b = BetaGeoModel(time_unit="W", device="cpu").fit(*with_nan)
    assert b.n_customers_ == 1500 and b.params_ == pytest.approx(a.params_, rel=1e-9)
    pred = b.conditional_expected_number_of_purchases_up_to_time(10, *with_nan)
    assert np.isnan(pred[-3:]).all() and np.isfinite(pred[:-3]).all()
    assert np.isnan(b.conditional_probability_alive(*with_nan)[-3:]).all()
    # save / load as JSON
    path = b.save(tmp_path / "bgnbd.json")
    c = BetaGeoModel.load(path, device="cpu")
    assert c.params_ == b.params_ and c.time_unit == "W"
    np.testing.assert_array_equal(
        c.conditional_expected_number_of_purchases_up_to_time(10, *with_nan), pred)


@pytest.mark.parametrize("device", DEVICES)
def test_gamma_gamma_recovers_parameters_and_clv(device, cdnow_like):
    x, tx, T, _ = cdnow_like
    rng = np.random.default_rng(3)
    true = {"p": 6.25, "q": 3.74, "v": 15.44}  # lifetimes' CDNOW Gamma-Gamma fit
    m = simulate_gamma_gamma(x, *true.values(), rng)
    gg = GammaGammaModel(device=device).fit(x, m)
    assert gg.n_customers_ == int((x > 0).sum())
    for name in true:
        assert abs(gg.params_[name] - true[name]) / true[name] < 0.25, gg.params_
    p, q, v = (gg.params_[k] for k in ("p", "q", "v"))
    profit = gg.conditional_expected_average_profit(x, m)
    np.testing.assert_allclose(profit, p * (v + x * m) / (p * x + q - 1), rtol=1e-12)
    assert profit[x == 0] == pytest.approx(p * v / (q - 1))
    # shrinkage: the expected spend lies between the observed mean and the population mean
    rep = x > 0
    lo = np.minimum(m[rep], p * v / (q - 1))
    hi = np.maximum(m[rep], p * v / (q - 1))
    assert ((profit[rep] >= lo - 1e-9) & (profit[rep] <= hi + 1e-9)).all()
    bgf = BetaGeoModel(time_unit="W", device=device).fit(x, tx, T)
    clv0 = gg.customer_lifetime_value(bgf, x, tx, T, m, time=6, discount_rate=0.0)
    n6 = bgf.conditional_expected_number_of_purchases_up_to_time(6 * 4.345, x, tx, T)
    np.testing.assert_allclose(clv0, n6 * profit, rtol=1e-9)
    clv = gg.customer_lifetime_value(bgf, x, tx, T, m, time=6, discount_rate=0.05)
    assert (clv <= clv0 + 1e-12).all() and (clv[rep] < clv0[rep]).all()


def test_gamma_gamma_save_load(tmp_path, cdnow_like):
    x = cdnow_like[0][:2000]
    m = simulate_gamma_gamma(x, 6.25, 3.74, 15.44, np.random.default_rng(4))
    gg = GammaGammaModel(device="cpu").fit(x, m)
    again = GammaGammaModel.load(gg.save(tmp_path / "gg.json"), device="cpu")
    assert again.params_ == gg.params_
    with pytest.raises(UserInputError, match="not a BetaGeoModel"):
        BetaGeoModel.load(tmp_path / "gg.json")


def _day(d: str, hour: int = 0) -> np.datetime64:
    return (np.datetime64(d) + np.timedelta64(hour, "h")).astype("datetime64[us]")


def test_btyd_summary_by_hand(tmp_path):
    rows = [  # customer, time, type, amount
        ("a", _day("2024-01-01", 9), "purchase", 10.0),
        ("a", _day("2024-01-01", 15), "purchase", 5.0),  # same day: one occasion of 15
        ("a", _day("2024-01-05", 1), "purchase", 20.0),
        ("a", _day("2024-01-05", 2), "purchase", -20.0),  # a return: never a purchase
        ("a", _day("2024-01-08", 0), "order", 40.0),  # plays the purchase role below
        ("a", _day("2024-01-09", 0), "view", None),
        ("a", _day("2024-01-20", 0), "purchase", 7.0),  # at as_of: hold-out
        ("a", _day("2024-01-25", 0), "purchase", 7.0),
        ("a", _day("2024-01-25", 3), "purchase", 7.0),
        ("b", _day("2024-01-10", 12), "purchase", None),  # one occasion, spend unknown
        ("c", _day("2024-01-22", 0), "purchase", 3.0),  # first seen in the hold-out
        ("d", _day("2024-01-21", 0), "view", None),
        ("zz", _day("2024-01-02", 0), "purchase", 3.0),  # not a known customer
        ("b", _day("2024-02-01", 0), "purchase", 3.0),  # at holdout_end: outside
    ]
    cols = list(zip(*rows, strict=True))
    table = pa.table({
        "customer_id": list(cols[0]), "timestamp": pa.array(cols[1], pa.timestamp("us")),
        "event_type": list(cols[2]), "amount": pa.array(cols[3], pa.float64()),
        "category": pa.nulls(len(rows), pa.string()), "channel": pa.nulls(len(rows), pa.string()),
    }, schema=EVENTS)
    path = tmp_path / "events.parquet"
    pq.write_table(table, path, row_group_size=4)
    roles = {"purchase": ["purchase", "order"]}
    out = btyd_summary(path, ["d", "c", "b", "a"], "2024-01-20", roles=roles,
                       holdout_end="2024-02-01", batch_size=3)
    got = {c: out[c].to_pylist() for c in out.column_names}
    assert got["customer_id"] == ["d", "c", "b", "a"]
    nan = float("nan")
    np.testing.assert_array_equal(got["frequency"], [nan, nan, 0, 2])
    np.testing.assert_array_equal(got["recency"], [nan, nan, 0, 7])
    np.testing.assert_array_equal(got["T"], [nan, nan, 10, 19])
    np.testing.assert_array_equal(got["monetary_value"], [nan, nan, 0, 30])  # (20 + 40) / 2
    assert got["holdout_purchases"] == [0, 1, 0, 2]
    meta = out.schema.metadata
    assert meta[b"holdout_length"] == b"12.0" and meta[b"time_unit"] == b"D"
    weekly = btyd_summary(path, ["a", "b"], "2024-01-20", roles=roles, time_unit="W")
    assert "holdout_purchases" not in weekly.column_names
    np.testing.assert_allclose(weekly["T"].to_numpy(), [19 / 7, 10 / 7])
    # default roles: the "order" event is no purchase any more
    assert btyd_summary(path, ["a"], "2024-01-20")["frequency"].to_pylist() == [1]
    # the summary feeds the models straight away
    x, tx, T = (out[c].to_numpy() for c in ("frequency", "recency", "T"))
    assert check_rft(x, tx, T)[3].tolist() == [False, False, True, True]
    with pytest.raises(UserInputError, match="holdout_end"):
        btyd_summary(path, ["a"], "2024-01-20", holdout_end="2024-01-19")
    with pytest.raises(UserInputError, match="time_unit"):
        btyd_summary(path, ["a"], "2024-01-20", time_unit="M")
    with pytest.raises(UserInputError, match="unique"):
        btyd_summary(path, ["a", "a"], "2024-01-20")


def test_holdout_groups_and_math():
    groups = holdout_by_frequency([0, 0, 1, 9, np.nan], [0.5, 0.1, 1.0, 4.0, 1.0], [0, 1, 2, 3, 0],
                                  max_group=2)
    assert [(g["frequency"], g["n_customers"]) for g in groups] == [("0", 2), ("1", 1), ("2+", 1)]
    assert groups[0]["mean_predicted"] == pytest.approx(0.3) and groups[0]["sum_actual"] == 1
    assert math.isclose(groups[2]["mean_actual"], 3.0)
