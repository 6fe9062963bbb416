"""Buy-till-you-die customer value models in torch: BG/NBD (purchase counts) and Gamma-Gamma (spend).

Both are fitted by maximum likelihood on float64 tensors (CPU or CUDA), with the parameters
optimised on the log scale by L-BFGS, and follow the API of the ``lifetimes`` package:

* :class:`BetaGeoModel` (Fader, Hardie & Lee 2005, "Counting your customers the easy way"):
  ``fit(frequency, recency, T)`` -> ``params_`` ``{r, alpha, a, b}``; conditional and
  unconditional expected purchases, probability alive.
* :class:`GammaGammaModel` (Fader, Hardie & Lee 2005, "RFM and CLV"):
  ``fit(frequency, monetary_value)`` -> ``params_`` ``{p, q, v}``; conditional expected average
  profit and customer lifetime value on top of a fitted :class:`BetaGeoModel`.

Data conventions (as ``lifetimes``): ``frequency`` is the number of *repeat* purchase occasions,
``recency`` the time between the first and the last purchase occasion (0 when frequency is 0),
``T`` the time between the first purchase and the end of the observation period, all in the
model's ``time_unit`` (``"D"`` days or ``"W"`` weeks; the unit only labels the numbers and sets
the month length used by :meth:`GammaGammaModel.customer_lifetime_value`). ``monetary_value`` is
the mean spend per repeat occasion.

Customers whose ``frequency``, ``recency`` and ``T`` are all NaN (no purchase before the cut-off,
see :func:`gpuseg.value.summary.btyd_summary`) are left out of the fit and get NaN predictions.
Any other inconsistency (negative or non-integer frequency, recency > T, recency != 0 with
frequency 0, a NaN in only some of the columns) is a :class:`UserInputError` naming the parameter
and the first offending indexes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import read_json, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TIME_UNITS = ("D", "W")
#: Periods per month (30 days), as ``lifetimes.utils.customer_lifetime_value`` counts them.
PERIODS_PER_MONTH = {"D": 30.0, "W": 4.345}
_MAX_SERIES_TERMS = 100_000
_SHOWN = 5


# ----------------------------------------------------------------------------------- validation
def _as_array(name: str, values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserInputError(
            f"The '{name}' parameter must be an array of numbers. Got {type(values).__name__} "
            "instead."
        ) from None
    arr = np.atleast_1d(arr)
    if arr.ndim != 1:
        raise UserInputError(f"The '{name}' parameter must be 1-dimensional. Got shape {arr.shape}.")
    return arr


def _fail(name: str, bad: np.ndarray, what: str, values: dict[str, np.ndarray]) -> None:
    idx = np.flatnonzero(bad)
    if idx.size == 0:
        return
    rows = [", ".join(f"{k}={v[i]:g}" for k, v in values.items()) for i in idx[:_SHOWN]]
    raise UserInputError(
        f"The '{name}' parameter {what}: {idx.size} customer(s), first at index "
        f"{', '.join(str(i) for i in idx[:_SHOWN])}.",
        rows=[f"index {i}: {r}" for i, r in zip(idx[:_SHOWN], rows, strict=True)],
    )


def check_rft(frequency: Any, recency: Any, T: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check BTYD inputs and return them as float64 arrays plus the mask of usable customers.

    Parameters
    ----------
    frequency, recency, T : array-like of shape (n_customers,)
        Repeat purchase occasions, time from first to last occasion, time from first occasion
        to the end of the observation period. A customer with all three NaN has no history and
        is masked out.

    Returns
    -------
    frequency, recency, T : ndarray of float64
    observed : ndarray of bool
        True for customers with a history (all three finite).

    Raises
    ------
    UserInputError
        On different lengths, a NaN in only some columns, infinite or negative values, a
        non-integer frequency, recency > T, or recency != 0 with frequency 0.
    """
    x = _as_array("frequency", frequency)
    tx = _as_array("recency", recency)
    tt = _as_array("T", T)
    if not (x.shape == tx.shape == tt.shape):
        raise UserInputError(
            "The 'frequency', 'recency' and 'T' parameters must have the same length. Got "
            f"{x.size}, {tx.size} and {tt.size}."
        )
    vals = {"frequency": x, "recency": tx, "T": tt}
    nan = np.isnan(x) | np.isnan(tx) | np.isnan(tt)
    observed = ~(np.isnan(x) & np.isnan(tx) & np.isnan(tt))
    for name, v in vals.items():
        _fail(name, observed & np.isnan(v), "is NaN where the other columns are not (a customer "
              "without history must have NaN frequency, recency and T)", vals)
        _fail(name, np.isinf(v), "must be finite", vals)
        _fail(name, ~nan & (v < 0), "must be non-negative", vals)
    ok = ~nan
    _fail("frequency", ok & (x != np.round(x)), "must hold whole numbers of repeat purchases", vals)
    _fail("recency", ok & (tx > tt), "must not exceed T (the last purchase cannot come after the "
          "end of the observation period)", vals)
    _fail("recency", ok & (x == 0) & (tx != 0), "must be 0 where frequency is 0 (recency is the "
          "time from the first to the last purchase)", vals)
    return x, tx, tt, observed


def _check_time_unit(time_unit: str) -> str:
    if time_unit not in TIME_UNITS:
        raise UserInputError(
            f"The 'time_unit' parameter must be one of {TIME_UNITS}. Got {time_unit!r} instead."
        )
    return time_unit


def _check_nonneg(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise UserInputError(f"The '{name}' parameter must be a float >= 0. Got {value!r} instead.")
    return float(value)


# ------------------------------------------------------------------------------------ numerics
def _lbfgs(
    nll: Callable[[torch.Tensor], torch.Tensor], start: np.ndarray, device: torch.device, max_iter: int, tol: float
) -> tuple[np.ndarray, float, int]:
    """Minimise ``nll(log_params)`` with L-BFGS (strong Wolfe); returns params, value, iterations."""
    theta = torch.tensor(np.log(start), dtype=torch.float64, device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nll(theta)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        value = float(nll(theta))
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    return theta.detach().exp().cpu().numpy(), value, n_iter


def hyp2f1_euler(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Gauss hypergeometric 2F1(a, b; c; z) for 0 <= z < 1 by its power series, elementwise.

    Used on the Euler-transformed BG/NBD terms, whose ``a`` and ``b`` are small and ``c`` large,
    so the terms shrink about like ``z**k``; the loop stops when the largest term is below 1e-16
    of its sum.
    """
    a, b, c, z = torch.broadcast_tensors(a, b, c, z)
    term = torch.ones_like(z)
    total = torch.ones_like(z)
    for k in range(_MAX_SERIES_TERMS):
        term = term * (a + k) * (b + k) / ((c + k) * (k + 1)) * z
        total = total + term
        if k % 16 == 0 and bool((term.abs() <= 1e-16 * total.abs()).all()):
            break
    else:  # pragma: no cover - needs z within 1e-5 of 1
        log.warning("hypergeometric series did not converge in %d terms", _MAX_SERIES_TERMS)
    return total


# ------------------------------------------------------------------------------------- BG/NBD
def bgnbd_log_likelihood(
    r: torch.Tensor, alpha: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    x: torch.Tensor, tx: torch.Tensor, T: torch.Tensor,
) -> torch.Tensor:
    """Per-customer BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6), differentiable.

    Parameters
    ----------
    r, alpha, a, b : Tensor (scalars)
        Model parameters.
    x, tx, T : Tensor of shape (n,)
        Frequency, recency and T (float64).

    Returns
    -------
    Tensor of shape (n,)
    """
    lg = torch.lgamma
    a1 = lg(r + x) - lg(r) + r * torch.log(alpha)
    a2 = lg(a + b) + lg(b + x) - lg(b) - lg(a + b + x)
    a3 = -(r + x) * torch.log(alpha + T)
    # the "dropped out after the last purchase" term exists only for repeat buyers
    repeat = x > 0
    bx1 = torch.where(repeat, b + x - 1, torch.ones_like(x))
    a4 = torch.log(a) - torch.log(bx1) - (r + x) * torch.log(alpha + tx)
    a4 = torch.where(repeat, a4, torch.full_like(a4, -math.inf))
    return a1 + a2 + torch.logaddexp(a3, a4)


class _JsonModel:
    """Save/load of a fitted BTYD model as JSON: its settings, parameters and fit statistics."""

    #: constructor arguments saved with the model, in file order
    _setting_names: tuple[str, ...] = ()
    param_names: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: parameters, fit statistics and settings."""
        return {
            "model": type(self).__name__,
            "format_version": FORMAT_VERSION,
            **{name: getattr(self, name) for name in self._setting_names},
            "params": dict(self._fitted()),
            "log_likelihood": self.log_likelihood_,
            "n_customers": self.n_customers_,
            "n_iter": self.n_iter_,
        }

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, *, device: Any = "auto"):
        """Read a model written by :meth:`save`."""
        d = read_json(path)
        if d.get("model") != cls.__name__ or d.get("format_version") != FORMAT_VERSION:
            raise UserInputError(
                f"not a {cls.__name__} file of format {FORMAT_VERSION}: got model "
                f"{d.get('model')!r}, format {d.get('format_version')!r}"
            )
        model = cls(**{name: d[name] for name in cls._setting_names}, device=device)
        model.params_ = {k: float(d["params"][k]) for k in cls.param_names}
        model.log_likelihood_ = float(d["log_likelihood"])
        model.n_customers_ = int(d["n_customers"])
        model.n_iter_ = int(d["n_iter"])
        return model


class BetaGeoModel(_JsonModel):
    """BG/NBD model of repeat purchase counts, fitted by maximum likelihood in torch.

    Parameters
    ----------
    penalizer_coef : float, default=0.0
        L2 penalty on the parameters, added to the mean negative log-likelihood (as
        ``lifetimes``); helps small or degenerate data sets.
    time_unit : {"D", "W"}, default="D"
        Unit of recency, T and every time ``t`` given to the predictions.
    device : str or torch.device, default="auto"
        Where the likelihood is evaluated.
    max_iter : int, default=500
        L-BFGS iterations.
    tol : float, default=1e-9
        Gradient tolerance of L-BFGS.

    Attributes
    ----------
    params_ : dict
        Fitted ``r``, ``alpha``, ``a``, ``b``.
    log_likelihood_ : float
        Total log-likelihood at ``params_`` (without the penalty).
    n_customers_ : int
        Customers used in the fit.
    n_iter_ : int
        L-BFGS iterations run.
    """

    param_names = ("r", "alpha", "a", "b")
    _setting_names = ("time_unit", "penalizer_coef")

    def __init__(self, *, penalizer_coef: float = 0.0, time_unit: str = "D", device: Any = "auto",
                 max_iter: int = 500, tol: float = 1e-9):
        self.penalizer_coef = penalizer_coef
        self.time_unit = time_unit
        self.device = device
        self.max_iter = max_iter
        self.tol = tol

    # -- fitting
    def fit(self, frequency: Any, recency: Any, T: Any) -> BetaGeoModel:
        """Fit the parameters on the customers' calibration-period history.

        Parameters
        ----------
        frequency, recency, T : array-like of shape (n_customers,)
            See the module notes; all-NaN rows are ignored.

        Returns
        -------
        self
        """
        pen = _check_nonneg("penalizer_coef", self.penalizer_coef)
        _check_time_unit(self.time_unit)
        x, tx, tt, observed = check_rft(frequency, recency, T)
        x, tx, tt = x[observed], tx[observed], tt[observed]
        if x.size == 0:
            raise UserInputError("BetaGeoModel.fit needs at least one customer with a history.")
        if not (x > 0).any():
            raise UserInputError("BetaGeoModel.fit needs at least one repeat purchase (all "
                                 "frequencies are 0), so r, alpha, a and b cannot be estimated.")
        device = resolve_device(self.device, key="device")
        xt, txt, ttt = (torch.as_tensor(v, dtype=torch.float64, device=device) for v in (x, tx, tt))
        n = x.size

        def nll(theta: torch.Tensor) -> torch.Tensor:
            p = theta.exp()
            ll = bgnbd_log_likelihood(p[0], p[1], p[2], p[3], xt, txt, ttt)
            return -ll.sum() / n + pen * (p**2).sum()

        start = np.array([1.0, max(float(tt.mean()), 1e-3), 1.0, 1.0])
        params, value, n_iter = _lbfgs(nll, start, device, int(self.max_iter), float(self.tol))
        if not np.isfinite(params).all() or not np.isfinite(value):
            raise UserInputError("BetaGeoModel.fit did not converge to finite parameters; try "
                                 "penalizer_coef > 0.")
        self.params_ = dict(zip(self.param_names, (float(v) for v in params), strict=True))
        self.n_iter_ = n_iter
        self.n_customers_ = int(n)
        with torch.no_grad():
            p = torch.as_tensor(params, dtype=torch.float64, device=device)
            self.log_likelihood_ = float(bgnbd_log_likelihood(p[0], p[1], p[2], p[3], xt, txt, ttt).sum())
        log.info("BG/NBD fitted on %d customers in %d iterations: %s", n, n_iter, self.params_)
        return self

    def _fitted(self) -> dict[str, float]:
        if not hasattr(self, "params_"):
            raise UserInputError("This BetaGeoModel instance is not fitted yet. Call 'fit' first.")
        return self.params_

    def _tensors(self, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
        device = resolve_device(self.device, key="device")
        return tuple(torch.as_tensor(a, dtype=torch.float64, device=device) for a in arrays)

    # -- predictions
    def conditional_expected_number_of_purchases_up_to_time(
        self, t: Any, frequency: Any, recency: Any, T: Any
    ) -> np.ndarray:
        """Expected repeat purchases in the next ``t`` periods of each customer, given the history.

        Parameters
        ----------
        t : float or array-like of shape (n_customers,)
            Horizon, in ``time_unit``.
        frequency, recency, T : array-like of shape (n_customers,)

        Returns
        -------
        ndarray of float64, shape (n_customers,); NaN for customers without history.
        """
        pr = self._fitted()
        x, tx, tt, observed = check_rft(frequency, recency, T)
        t_arr = np.broadcast_to(_as_array("t", t), x.shape).astype(np.float64)
        _fail("t", ~(t_arr >= 0) | np.isinf(t_arr), "must be finite and >= 0", {"t": t_arr})
        out = np.full(x.shape, np.nan)
        if observed.any():
            xs, txs, tts, ts = self._tensors(x[observed], tx[observed], tt[observed], t_arr[observed])
            out[observed] = self._conditional(pr, ts, xs, txs, tts).cpu().numpy()
        return out

    @staticmethod
    def _conditional(pr: dict[str, float], t: torch.Tensor, x: torch.Tensor, tx: torch.Tensor,
                     T: torch.Tensor) -> torch.Tensor:
        r, alpha, a, b = (pr[k] for k in ("r", "alpha", "a", "b"))
        # FHL 2005 eq. 10. The Euler transform 2F1(r+x, b+x; a+b+x-1; z) =
        # (1-z)^(a-1-r-x) 2F1(a+b-1-r, a-1; a+b+x-1; z) cancels the ((alpha+T)/(alpha+T+t))^(r+x)
        # factor, so large frequencies neither overflow nor need thousands of series terms.
        z = t / (alpha + T + t)
        f = hyp2f1_euler(torch.full_like(x, a + b - 1 - r), torch.full_like(x, a - 1), a + b + x - 1, z)
        bracket = 1 - torch.pow(1 - z, a - 1) * f
        numerator = (a + b + x - 1) / (a - 1) * bracket
        repeat = x > 0
        bx1 = torch.where(repeat, b + x - 1, torch.ones_like(x))
        odds = a / bx1 * torch.exp((r + x) * (torch.log(alpha + T) - torch.log(alpha + tx)))
        return numerator / (1 + torch.where(repeat, odds, torch.zeros_like(odds)))

    def expected_number_of_purchases_up_to_time(self, t: Any) -> np.ndarray:
        """Expected purchases in ``(0, t]`` of a random new customer (FHL 2005 eq. 9).

        Parameters
        ----------
        t : float or array-like
            Time(s) since the customer's first purchase, in ``time_unit``.

        Returns
        -------
        ndarray of float64, same shape as ``t`` (1-d).
        """
        pr = self._fitted()
        t_arr = _as_array("t", t)
        _fail("t", ~(t_arr >= 0) | np.isinf(t_arr), "must be finite and >= 0", {"t": t_arr})
        zeros = np.zeros_like(t_arr)
        (ts, zs) = self._tensors(t_arr, zeros)
        # eq. 9 is eq. 10 for a customer with x = t_x = T = 0
        return self._conditional(pr, ts, zs, zs, zs).cpu().numpy()

    def conditional_probability_alive(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """Probability that each customer is still active at the end of the period (FHL eq. 11).

        Returns
        -------
        ndarray of float64, shape (n_customers,); NaN for customers without history.
        """
        pr = self._fitted()
        r, alpha, a, b = (pr[k] for k in ("r", "alpha", "a", "b"))
        x, tx, tt, observed = check_rft(frequency, recency, T)
        out = np.full(x.shape, np.nan)
        xo, txo, tto = x[observed], tx[observed], tt[observed]
        with np.errstate(divide="ignore", invalid="ignore"):
            odds = a / np.where(xo > 0, b + xo - 1, 1.0) * np.exp(
                (r + xo) * (np.log(alpha + tto) - np.log(alpha + txo)))
        out[observed] = 1.0 / (1.0 + np.where(xo > 0, odds, 0.0))
        return out


# -------------------------------------------------------------------------------- Gamma-Gamma
def gamma_gamma_log_likelihood(p: torch.Tensor, q: torch.Tensor, v: torch.Tensor,
                               x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-customer Gamma-Gamma log-likelihood of the mean spend ``m`` over ``x`` repeat purchases.

    The density of the average of ``x`` spends (Fader, Hardie & Lee 2005, "RFM and CLV", eq. 3,
    as in ``lifetimes``), for ``x > 0`` and ``m > 0``.
    """
    lg = torch.lgamma
    px = p * x
    return (lg(px + q) - lg(px) - lg(q) + q * torch.log(v) + (px - 1) * torch.log(m)
            + px * torch.log(x) - (px + q) * torch.log(x * m + v))


def _check_monetary(frequency: Any, monetary_value: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _as_array("frequency", frequency)
    m = _as_array("monetary_value", monetary_value)
    if x.shape != m.shape:
        raise UserInputError("The 'frequency' and 'monetary_value' parameters must have the same "
                             f"length. Got {x.size} and {m.size}.")
    vals = {"frequency": x, "monetary_value": m}
    observed = ~(np.isnan(x) & np.isnan(m))
    for name, v in vals.items():
        _fail(name, observed & np.isnan(v), "is NaN where the other column is not", vals)
        _fail(name, np.isinf(v), "must be finite", vals)
        _fail(name, observed & (v < 0), "must be non-negative", vals)
    ok = observed
    _fail("frequency", ok & (x != np.round(x)), "must hold whole numbers of repeat purchases", vals)
    return x, m, observed


class GammaGammaModel(_JsonModel):
    """Gamma-Gamma model of the mean spend per purchase, fitted by maximum likelihood in torch.

    Fitted on the customers with at least one repeat purchase and a positive ``monetary_value``
    (others are left out: their mean spend carries no information about the spend process).

    Parameters
    ----------
    penalizer_coef : float, default=0.0
        L2 penalty on ``p``, ``q``, ``v`` added to the mean negative log-likelihood.
    device : str or torch.device, default="auto"
    max_iter : int, default=500
    tol : float, default=1e-9

    Attributes
    ----------
    params_ : dict
        Fitted ``p``, ``q``, ``v``.
    log_likelihood_ : float
    n_customers_ : int
    n_iter_ : int
    """

    param_names = ("p", "q", "v")
    _setting_names = ("penalizer_coef",)

    def __init__(self, *, penalizer_coef: float = 0.0, device: Any = "auto", max_iter: int = 500,
                 tol: float = 1e-9):
        self.penalizer_coef = penalizer_coef
        self.device = device
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, frequency: Any, monetary_value: Any) -> GammaGammaModel:
        """Fit ``p``, ``q``, ``v`` on the repeat buyers' mean spend.

        Parameters
        ----------
        frequency : array-like of shape (n_customers,)
            Repeat purchase occasions.
        monetary_value : array-like of shape (n_customers,)
            Mean spend per repeat occasion.

        Returns
        -------
        self
        """
        pen = _check_nonneg("penalizer_coef", self.penalizer_coef)
        x, m, observed = _check_monetary(frequency, monetary_value)
        use = observed & (x > 0) & (m > 0)
        n_zero = int((observed & (x > 0) & (m == 0)).sum())
        if n_zero:
            log.warning("GammaGammaModel.fit leaves out %d repeat buyer(s) with monetary_value 0", n_zero)
        if use.sum() < 2:
            raise UserInputError("GammaGammaModel.fit needs at least two customers with frequency > 0 "
                                 f"and monetary_value > 0; got {int(use.sum())}.")
        device = resolve_device(self.device, key="device")
        xt = torch.as_tensor(x[use], dtype=torch.float64, device=device)
        mt = torch.as_tensor(m[use], dtype=torch.float64, device=device)
        n = int(use.sum())

        def nll(theta: torch.Tensor) -> torch.Tensor:
            p = theta.exp()
            return -gamma_gamma_log_likelihood(p[0], p[1], p[2], xt, mt).sum() / n + pen * (p**2).sum()

        # start near the moments: with p = 1, q = 2, v = mean(m) the prior mean spend matches
        start = np.array([1.0, 2.0, float(m[use].mean())])
        params, value, n_iter = _lbfgs(nll, start, device, int(self.max_iter), float(self.tol))
        if not np.isfinite(params).all() or not np.isfinite(value):
            raise UserInputError("GammaGammaModel.fit did not converge to finite parameters; try "
                                 "penalizer_coef > 0.")
        self.params_ = dict(zip(self.param_names, (float(v) for v in params), strict=True))
        self.n_iter_ = n_iter
        self.n_customers_ = n
        with torch.no_grad():
            pt = torch.as_tensor(params, dtype=torch.float64, device=device)
            self.log_likelihood_ = float(gamma_gamma_log_likelihood(pt[0], pt[1], pt[2], xt, mt).sum())
        if self.params_["q"] <= 1:
            log.warning("Gamma-Gamma q = %.3g <= 1: the expected spend is infinite", self.params_["q"])
        log.info("Gamma-Gamma fitted on %d customers in %d iterations: %s", n, n_iter, self.params_)
        return self

    def _fitted(self) -> dict[str, float]:
        if not hasattr(self, "params_"):
            raise UserInputError("This GammaGammaModel instance is not fitted yet. Call 'fit' first.")
        return self.params_

    def conditional_expected_average_profit(self, frequency: Any, monetary_value: Any) -> np.ndarray:
        """Expected mean spend per purchase of each customer, given its history (FHL eq. 5).

        A customer with frequency 0 gets the population mean ``p v / (q - 1)``; NaN inputs give
        NaN.

        Returns
        -------
        ndarray of float64, shape (n_customers,)
        """
        pr = self._fitted()
        p, q, v = pr["p"], pr["q"], pr["v"]
        x, m, observed = _check_monetary(frequency, monetary_value)
        out = np.full(x.shape, np.nan)
        xo, mo = x[observed], m[observed]
        out[observed] = p * (v + xo * mo) / (p * xo + q - 1)
        return out

    def customer_lifetime_value(
        self, bgf: BetaGeoModel, frequency: Any, recency: Any, T: Any, monetary_value: Any,
        time: float = 12, discount_rate: float = 0.01,
    ) -> np.ndarray:
        """Discounted expected value over the next ``time`` months (as ``lifetimes``).

        ``sum_{i=1..time} (E[N(i months)] - E[N(i-1 months)]) * profit / (1 + discount_rate)**i``,
        with ``E[N]`` from ``bgf`` and ``profit`` from
        :meth:`conditional_expected_average_profit`; a month is 30 days (4.345 weeks). With
        ``discount_rate=0`` this is expected purchases x expected average profit.

        Parameters
        ----------
        bgf : BetaGeoModel
            Fitted purchase model (its ``time_unit`` sets the month length).
        frequency, recency, T, monetary_value : array-like of shape (n_customers,)
        time : float, default=12
            Horizon in months (whole months are summed; a fraction adds a last partial step).
        discount_rate : float, default=0.01
            Monthly discount rate.

        Returns
        -------
        ndarray of float64, shape (n_customers,); NaN for customers without history.
        """
        _check_nonneg("time", time)
        _check_nonneg("discount_rate", discount_rate)
        profit = self.conditional_expected_average_profit(frequency, monetary_value)
        factor = PERIODS_PER_MONTH[_check_time_unit(bgf.time_unit)]
        steps = list(np.arange(1, math.floor(time) + 1, dtype=np.float64))
        if time > math.floor(time):
            steps.append(float(time))
        clv = np.zeros_like(profit)
        previous = np.zeros_like(profit)
        for month in steps:
            cum = bgf.conditional_expected_number_of_purchases_up_to_time(
                month * factor, frequency, recency, T)
            clv += profit * (cum - previous) / (1 + discount_rate) ** month
            previous = cum
        return clv
