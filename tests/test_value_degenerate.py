"""BTYD fits on awkward data: a very heavy customer, extreme parameters, degenerate fits.

Each test reproduces something the models once got wrong silently: a customer with thousands of
repeat purchases sent BG/NBD to a ~ 1e4..1e9 and every prediction to NaN; too few repeat buyers,
an infinite expected spend or an unidentified model went unreported.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from conftest import DEVICES
from test_btyd import simulate_bgnbd, simulate_gamma_gamma

from gpuseg.runtime.errors import UserInputError
from gpuseg.value import BetaGeoModel, DegenerateFitError, GammaGammaModel, value_fit_problem
from gpuseg.value.btyd import (
    PARAM_BOUND,
    _expected_while_alive,
    _expected_while_alive_quadrature,
    _hyp2f1_series,
)

torch.set_num_threads(1)


def _mp_while_alive(t, r, alpha, a, b, x, T):
    """FHL 2005 eq. 10's numerator in 50 (25) digit arithmetic, by one of two independent routes.

    For ``a < 1e3`` the Euler-transformed formula, ``(c / (a-1)) (1 - (1-z)^(a-1) 2F1(a+b-1-r, a-1;
    c; z))`` with ``c = a+b+x-1`` and mpmath's hyp2f1, or the plain series for huge ``b``
    (``a = 1``, a removable singularity, is
    replaced by ``1 + 1e-25``). For larger ``a`` the defining integral ``E[(1 - (1 + p t / (alpha
    + T))^-(r+x)) / p]`` over ``p ~ Beta(a, b+x)``, concentrated within 20 sd of its mean.
    """
    with mpmath.workdps(50 if a < 1e3 else 25):
        r, alpha, a, b, x, T, t = (mpmath.mpf(float(v)) for v in (r, alpha, a, b, x, T, t))
        if a < 1e3:
            if a == 1:
                a += mpmath.mpf("1e-25")
            z = t / (alpha + T + t)
            c = a + b + x - 1
            A, B = a + b - 1 - r, a - 1
            if A < 1e4:
                hyp = mpmath.hyp2f1(A, B, c, z)
            else:  # mpmath gives up on huge A and c, where the plain series is quick
                hyp, term, k = mpmath.mpf(1), mpmath.mpf(1), 0
                while k < 50 or abs(term) > mpmath.mpf("1e-45") * abs(hyp):
                    term *= (A + k) * (B + k) / ((c + k) * (k + 1)) * z
                    hyp += term
                    k += 1
            return c / (a - 1) * (1 - (1 - z) ** (a - 1) * hyp)
        beta, n, u = b + x, r + x, t / (alpha + T)
        mean = a / (a + beta)
        sd = mpmath.sqrt(a * beta / ((a + beta) ** 2 * (a + beta + 1)))
        log_norm = mpmath.loggamma(a + beta) - mpmath.loggamma(a) - mpmath.loggamma(beta)

        def integrand(p):
            g = (1 - (1 + p * u) ** -n) / p
            return g * mpmath.exp(log_norm + (a - 1) * mpmath.log(p) + (beta - 1) * mpmath.log1p(-p))

        return mpmath.quad(integrand, [mean + k * sd for k in (-20, -6, -2, 0, 2, 6, 20)])


def mp_conditional(t, r, alpha, a, b, x, tx, T):
    """FHL 2005 eq. 10 (expected purchases in the next t given x, t_x, T), high precision."""
    num = _mp_while_alive(t, r, alpha, a, b, x, T)
    with mpmath.workdps(50):
        r, alpha, a, b, x, tx, T = (mpmath.mpf(float(v)) for v in (r, alpha, a, b, x, tx, T))
        den = 1 + (a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x) if x > 0 else 0)
        return float(num / den)


@pytest.fixture(scope="module")
def heavy_sample():
    """A BG/NBD population with hardly any drop-out, plus one customer with 2,500 repeat purchases.

    Before the fix, BetaGeoModel fitted a ~ 4e3, b ~ 8e6 here and predicted NaN for all 2,501.
    """
    rng = np.random.default_rng(0)
    n = 2500
    T = rng.uniform(52, 78, n)
    x, tx, _ = simulate_bgnbd(n, 0.5, 10.0, 1e-3, 1e4, T, rng)
    return np.append(x, 2500.0), np.append(tx, 77.0), np.append(T, 78.0)


@pytest.mark.parametrize("device", DEVICES)
def test_heavy_customer_gives_finite_predictions_and_parameters_inside_the_bounds(device, heavy_sample):
    x, tx, T = heavy_sample
    model = BetaGeoModel(time_unit="W", device=device).fit(x, tx, T)
    # on the fitting scale (alpha in units of the mean T) every parameter is well inside its bounds
    scaled = np.array([model.params_["r"], model.params_["alpha"] / T.mean(), model.params_["a"],
                       model.params_["b"]])
    assert (scaled > 10 / PARAM_BOUND).all() and (scaled < PARAM_BOUND / 10).all(), model.params_
    assert model.params_["a"] < 100, model.params_  # no drift along the unidentified ridge
    pred = model.conditional_expected_number_of_purchases_up_to_time(39.0, x, tx, T)
    assert np.isfinite(pred).all() and (pred >= 0).all()
    alive = model.conditional_probability_alive(x, tx, T)
    assert np.isfinite(alive).all() and ((alive >= 0) & (alive <= 1)).all()
    assert np.isfinite(model.expected_number_of_purchases_up_to_time([0.0, 39.0, 520.0])).all()
    assert model.degenerate_ is None and model.fit_notes_ == []
    assert value_fit_problem(model) is None
    # the predictions are the exact formula's, the heavy customer's included
    for i in (0, int(np.argmax(x[:-1])), x.size - 1):
        ref = mp_conditional(39.0, *model.params_.values(), x[i], tx[i], T[i])
        assert pred[i] == pytest.approx(ref, rel=1e-9), i
    # the others' total moves by a few percent at most with the heavy customer in the fit
    alone = BetaGeoModel(time_unit="W", device=device).fit(x[:-1], tx[:-1], T[:-1])
    rest = alone.conditional_expected_number_of_purchases_up_to_time(39.0, x[:-1], tx[:-1], T[:-1])
    assert abs(pred[:-1].sum() / rest.sum() - 1) < 0.05


@pytest.mark.parametrize("params", [
    {"r": 0.382, "alpha": 5.87, "a": 4340.0, "b": 8.0e6},  # the fit the heavy sample used to get
    {"r": 1.165, "alpha": 156.0, "a": 5.9e4, "b": 1.2e8},
    {"r": 3.0, "alpha": 100.0, "a": 1e6, "b": 1e6},
    {"r": 1.0, "alpha": 10.0, "a": 1e-6, "b": 1e6},
    {"r": 0.2, "alpha": 0.05, "a": 0.3, "b": 0.4},  # t >> alpha + T: z near 1
    {"r": 1.0, "alpha": 10.0, "a": 1.0, "b": 3.0},  # a = 1: eq. 10's 1 / (a - 1)
])
def test_predictions_at_extreme_parameters_match_high_precision(params):
    model = BetaGeoModel(time_unit="W", device="cpu")
    model.params_ = dict(params)
    x = np.array([0.0, 1.0, 5.0, 60.0, 2500.0])
    T = np.array([0.5, 30.0, 78.0, 78.0, 78.0])
    tx = np.where(x > 0, 0.9 * T, 0.0)
    for t in (1.0, 39.0, 500.0):
        ours = model.conditional_expected_number_of_purchases_up_to_time(t, x, tx, T)
        ref = [mp_conditional(t, *params.values(), *row) for row in zip(x, tx, T, strict=True)]
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-300)
    new = model.expected_number_of_purchases_up_to_time([1.0, 39.0])
    np.testing.assert_allclose(new, [mp_conditional(t, *params.values(), 0, 0, 0) for t in (1.0, 39.0)],
                               rtol=1e-9)


def test_quadrature_agrees_with_the_series():
    rng = np.random.default_rng(7)
    x = torch.tensor(np.concatenate([rng.integers(0, 20, 300), [150, 2500]]), dtype=torch.float64)
    T = torch.tensor(rng.uniform(1, 78, x.numel()), dtype=torch.float64)
    t = torch.full_like(x, 13.0)
    for pr in ({"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
               {"r": 2.0, "alpha": 30.0, "a": 5.5, "b": 0.7},
               {"r": 0.5, "alpha": 2.0, "a": 15.0, "b": 40.0}):
        r, alpha, a, b = pr.values()
        z = t / (alpha + T + t)
        f, ok = _hyp2f1_series(torch.full_like(x, a + b - 1 - r), torch.full_like(x, a - 1), a + b + x - 1, z, 5000)
        assert bool(ok.all())
        series = (a + b + x - 1) / (a - 1) * (1 - (1 - z) ** (a - 1) * f)
        quad = _expected_while_alive_quadrature(pr, t, x, T)
        np.testing.assert_allclose(quad.numpy(), series.numpy(), rtol=1e-10)
        np.testing.assert_allclose(_expected_while_alive(pr, t, x, T).numpy(), series.numpy(), rtol=1e-12)


def _few_repeat_buyers(n=1200, k=7, seed=3):
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    x[:k] = rng.integers(1, 4, k)
    T = rng.uniform(30, 60, n)
    tx = np.where(x > 0, T * rng.uniform(0.2, 1.0, n), 0.0)
    return x, tx, T


def test_too_few_repeat_buyers_is_degenerate_and_predictions_say_so(tmp_path):
    x, tx, T = _few_repeat_buyers()
    model = BetaGeoModel(device="cpu").fit(x, tx, T)
    reason = "too few repeat buyers (7 of 1,200 customers bought more than once; at least 10 needed)"
    assert model.degenerate_ == reason
    assert value_fit_problem(model) == f"BetaGeoModel: {reason}"
    for call in (lambda m: m.conditional_expected_number_of_purchases_up_to_time(30, x, tx, T),
                 lambda m: m.conditional_probability_alive(x, tx, T),
                 lambda m: m.expected_number_of_purchases_up_to_time(30)):
        with pytest.raises(DegenerateFitError, match="degenerate: too few repeat buyers") as err:
            call(model)
        assert err.value.reason == reason and isinstance(err.value, UserInputError)
    # the caller who has read the reason may still compute them: finite, never NaN
    pred = model.conditional_expected_number_of_purchases_up_to_time(30, x, tx, T, allow_degenerate=True)
    assert np.isfinite(pred).all()
    # the verdict travels with the saved model
    loaded = BetaGeoModel.load(model.save(tmp_path / "bg.json"), device="cpu")
    assert loaded.degenerate_ == reason
    with pytest.raises(DegenerateFitError):
        loaded.conditional_probability_alive(x, tx, T)
    # the threshold is a setting; no repeat buyer at all is degenerate too, not an exception
    assert BetaGeoModel(device="cpu", min_repeat_buyers=5).fit(x, tx, T).degenerate_ is None
    none = BetaGeoModel(device="cpu").fit(np.zeros(50), np.zeros(50), T[:50])
    assert none.degenerate_.startswith("too few repeat buyers (0 of 50 customers")
    with pytest.raises(UserInputError, match="min_repeat_buyers"):
        BetaGeoModel(min_repeat_buyers=0).fit(x, tx, T)


def test_non_finite_predictions_raise_instead_of_returning_nan():
    x, tx, T = _few_repeat_buyers(k=50)
    model = BetaGeoModel(device="cpu").fit(x, tx, T)
    assert model.degenerate_ is None
    model.params_ = {**model.params_, "r": math.nan}  # as a corrupted or hand-edited model file
    with pytest.raises(DegenerateFitError, match=r"not finite for 1,200 of 1,200 customers") as err:
        model.conditional_expected_number_of_purchases_up_to_time(30, x, tx, T, allow_degenerate=True)
    assert err.value.reason == "non-finite predictions for 1,200 customers"
    assert "index 0: t=30" in str(err.value)
    # customers without a history still get NaN, documented, and no error
    model.params_["r"] = 0.5
    pred = model.conditional_expected_number_of_purchases_up_to_time(30, np.append(x, np.nan),
                                                                     np.append(tx, np.nan), np.append(T, np.nan))
    assert np.isnan(pred[-1]) and np.isfinite(pred[:-1]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_gamma_gamma_degenerate_cases(device, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 8, 3000).astype(float)
    good = GammaGammaModel(device=device).fit(x, simulate_gamma_gamma(x, 6.25, 3.74, 15.44, rng))
    assert good.degenerate_ is None and abs(good.frequency_correlation_) < 0.1
    cases = {
        # too few repeat buyers with a positive spend
        "too few repeat buyers with a positive monetary value (7 of 3,000 customers, 7 repeat "
        "buyers; at least 10 needed)": (np.where(np.arange(3000) < 7, 3.0, 0.0), rng.uniform(5, 20, 3000)),
        # spend heterogeneity Gamma(q < 1): no finite mean spend
        "<= 1: the expected spend per purchase is infinite": (x, simulate_gamma_gamma(x, 2.0, 0.7, 10.0, rng)),
        # spend grows with frequency
        "frequency and monetary value are correlated (Spearman 0.9": (
            x, np.where(x > 0, 5.0 * x * rng.uniform(0.8, 1.25, x.size), 0.0)),
        # everyone spends the same: the likelihood grows without bound as p, q -> inf
        "parameter p = 1e+06 is at its upper bound (1e+06) and the likelihood still rises": (
            x, np.where(x > 0, 10.0, 0.0)),
    }
    for reason, (freq, spend) in cases.items():
        spend = np.where(freq > 0, spend, 0.0)
        gg = GammaGammaModel(device=device).fit(freq, spend)
        assert gg.degenerate_ is not None and reason in gg.degenerate_, (reason, gg.degenerate_, gg.params_)
        assert value_fit_problem(good, gg) == f"GammaGammaModel: {gg.degenerate_}"
        with pytest.raises(DegenerateFitError, match="GammaGammaModel fit is degenerate"):
            gg.conditional_expected_average_profit(freq, spend)
    # the check of the correlation is a setting; q <= 1 stays degenerate whatever it is
    corr_x, corr_m = cases["frequency and monetary value are correlated (Spearman 0.9"]
    assert GammaGammaModel(device=device, max_correlation=1.0).fit(corr_x, corr_m).degenerate_ is None
    # lifetime value refuses a degenerate purchase model too, and survives save / load
    bx, btx, bT = _few_repeat_buyers(n=3000)
    bgf = BetaGeoModel(device=device).fit(bx, btx, bT)
    with pytest.raises(DegenerateFitError, match="BetaGeoModel fit is degenerate"):
        good.customer_lifetime_value(bgf, bx, btx, bT, np.zeros(3000))
    q_low = GammaGammaModel(device=device).fit(*cases["<= 1: the expected spend per purchase is infinite"])
    loaded = GammaGammaModel.load(q_low.save(tmp_path / "gg.json"), device="cpu")
    assert loaded.degenerate_ == q_low.degenerate_ and loaded.max_correlation == 0.5
    with pytest.raises(UserInputError, match="at least one customer with frequency > 0"):
        GammaGammaModel().fit([0, 0, 1], [0.0, 0.0, 0.0])
