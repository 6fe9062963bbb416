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

Numerics. The fit works on times divided by the mean ``T`` (and spends divided by their mean),
so the optimiser sees numbers near 1 in any unit; every parameter is kept within
``[1 / PARAM_BOUND, PARAM_BOUND]`` on that scale by optimising ``L tanh(u / L)``, ``L =
log(PARAM_BOUND)``, and L-BFGS starts from the best of a small grid of data-driven points. The
BG/NBD conditional expectation is ``P(alive) * E[(1 - (1 + p t / (alpha + T))^-(r + x)) / p]``
with ``p ~ Beta(a, b + x)``: the Gauss hypergeometric series when it converges fast and without
cancellation (``a < 20``, ``|a - 1| >= 0.05``, ``t / (alpha + T + t) <= 0.9``, at most 4 digits
lost), otherwise a trapezoid rule in ``logit p``
that stays accurate (about 1e-11) for any ``a``, ``b`` and frequency. The series alone overflows
once ``a`` reaches the thousands, which low drop-out data (and a single very heavy customer)
produce: every customer then got NaN.

Degenerate fits. ``fit`` never returns silently with parameters that cannot be used: it sets
``degenerate_`` to ``None`` or to a sentence saying why the fit cannot be trusted (too few repeat
buyers; a parameter at a bound that the likelihood would still cross; non-finite predictions on
the fitted customers; for Gamma-Gamma also ``q <= 1`` and a correlation between frequency and
spend). Every prediction method of a degenerate model raises :class:`DegenerateFitError` (a
:class:`UserInputError` whose ``reason`` is ``degenerate_``) unless called with
``allow_degenerate=True``, and raises it in any case rather than return a non-finite value for a
customer with a history. ``fit_notes_`` lists what is worth knowing but does not stop the
predictions, e.g. a parameter at a bound along which the likelihood is flat (a limit of the
model: no drop-out, the same drop-out probability for everyone). :func:`value_fit_problem` reads
``degenerate_`` of one or more fitted models.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator

from gpuseg.runtime.artifacts import check_state
from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import read_json, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TIME_UNITS = ("D", "W")
#: Periods per month (30 days), as ``lifetimes.utils.customer_lifetime_value`` counts them.
PERIODS_PER_MONTH = {"D": 30.0, "W": 4.345}
#: Every parameter is fitted within ``[1 / PARAM_BOUND, PARAM_BOUND]``; ``alpha`` in units of the
#: mean ``T`` and ``v`` in units of the mean spend, the others as they are.
PARAM_BOUND = 1e6
#: Weight of ``sum(log(param)**2)`` (parameters on the fitting scale) added to the negative total
#: log-likelihood: it picks, among parameters the data cannot tell apart (a likelihood flat to
#: 0.01 over decades), those nearest 1, and moves identified estimates by a negligible amount.
LOG_RIDGE = 0.01
#: Default of ``min_repeat_buyers``: fewer repeat buyers make a degenerate fit.
MIN_REPEAT_BUYERS = 10
_LOG_BOUND = math.log(PARAM_BOUND)
_NEAR_BOUND = math.log(10.0)  # within a factor 10 of a bound is "at the bound"
_BINDING_GAIN = 1.0  # log-likelihood gained a decade past a bound that makes the bound binding
_MAX_SERIES_TERMS = 100_000
_SERIES_TERMS = 5_000  # beyond this the quadrature takes over
_SERIES_MAX_A, _SERIES_MIN_GAP, _SERIES_MAX_Z = 20.0, 0.05, 0.9
_QUAD_HALF_WIDTH, _QUAD_STEP, _QUAD_CHUNK = 40.0, 0.5, 8192
_SHOWN = 5


class DegenerateFitError(UserInputError):
    """A prediction asked of a BTYD fit that cannot be trusted.

    Raised by the prediction methods of :class:`BetaGeoModel` and :class:`GammaGammaModel` when
    the fit is degenerate (``degenerate_`` is not ``None``) and ``allow_degenerate`` is False, and
    whenever a prediction for a customer with a history would not be finite.

    Parameters
    ----------
    message : str
        The full message.
    reason : str
        The short reason (the model's ``degenerate_``, or what was not finite).
    **kwargs
        Passed to :class:`UserInputError` (``rows``).

    Attributes
    ----------
    reason : str
    """

    def __init__(self, message: str, *, reason: str, **kwargs: Any):
        self.reason = reason
        super().__init__(message, **kwargs)


def _rounded(params: dict[str, float]) -> str:
    """Parameters for a log line, four significant digits: ``r=3.449, alpha=535.6``."""
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())


def value_fit_problem(*models: Any) -> str | None:
    """Why fitted value models cannot be trusted, or None when they all can.

    Parameters
    ----------
    *models : BetaGeoModel or GammaGammaModel
        Fitted (or loaded) models.

    Returns
    -------
    str or None
        ``"<Model>: <degenerate_>"`` of each degenerate model, joined by ``"; "``; None when
        none is degenerate.

    Raises
    ------
    UserInputError
        If a model is not fitted.
    """
    problems = []
    for model in models:
        model._fitted()
        reason = getattr(model, "degenerate_", None)
        if reason is not None:
            problems.append(f"{type(model).__name__}: {reason}")
    return "; ".join(problems) or None


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


def _check_min_repeat(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UserInputError(f"The 'min_repeat_buyers' parameter must be an int >= 1. Got {value!r} instead.")
    return int(value)


# ------------------------------------------------------------------------------------ numerics
def _squash(u: torch.Tensor) -> torch.Tensor:
    """Unconstrained ``u`` -> log-parameters in ``(-L, L)``, about the identity near 0."""
    return _LOG_BOUND * torch.tanh(u / _LOG_BOUND)


def _lbfgs(
    objective: Callable[[torch.Tensor], torch.Tensor], start: np.ndarray, device: torch.device,
    max_iter: int, tol: float,
) -> tuple[np.ndarray, float, int]:
    """Minimise ``objective(log_params)`` with L-BFGS (strong Wolfe) within the log bounds.

    Returns the log-parameters, the objective there and the iterations run.
    """
    theta0 = np.clip(np.log(start), -0.99 * _LOG_BOUND, 0.99 * _LOG_BOUND)
    u = torch.tensor(_LOG_BOUND * np.arctanh(theta0 / _LOG_BOUND), dtype=torch.float64, device=device,
                     requires_grad=True)
    opt = torch.optim.LBFGS(
        [u], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(_squash(u))
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        theta = _squash(u)
        value = float(objective(theta))
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    return theta.cpu().numpy(), value, n_iter


def _best_start(objective: Callable[[torch.Tensor], torch.Tensor], candidates: Sequence[Sequence[float]],
                device: torch.device) -> np.ndarray:
    """The candidate (parameters on the fitting scale) with the lowest finite objective."""
    best, best_value = np.asarray(candidates[0], dtype=np.float64), math.inf
    lo, hi = 1.0 / PARAM_BOUND, PARAM_BOUND
    with torch.no_grad():
        for cand in candidates:
            c = np.clip(np.asarray(cand, dtype=np.float64), lo * 10, hi / 10)
            value = float(objective(torch.tensor(np.log(c), dtype=torch.float64, device=device)))
            if math.isfinite(value) and value < best_value:
                best, best_value = c, value
    return best


def _bound_check(
    nll: Callable[[torch.Tensor], torch.Tensor], theta: np.ndarray, n: int,
    names: Sequence[str], params: dict[str, float], scales: Sequence[float], device: torch.device,
    model: str,
) -> tuple[list[str], list[str]]:
    """Reasons (bound binding) and notes (likelihood flat there) for parameters near a bound.

    The parameters within a factor 10 of a bound are moved a decade past it, one at a time (the
    others held) and all together: when the log-likelihood (``-n * nll``) gains more than
    ``_BINDING_GAIN`` either way, the bound decides the estimate and the fit is degenerate;
    otherwise the likelihood is flat there, the model sits at one of its limits and the
    predictions are those of the limit.
    """
    th = torch.tensor(theta, dtype=torch.float64, device=device)
    near = [(j, sign) for j in range(len(names)) for sign in (-1.0, 1.0)
            if sign * theta[j] >= _LOG_BOUND - _NEAR_BOUND]
    if not near:
        return [], []
    with torch.no_grad():
        base = float(nll(th))

        def gain(moves: list[tuple[int, float]]) -> float:
            moved = th.clone()
            for j, sign in moves:
                moved[j] = sign * (_LOG_BOUND + _NEAR_BOUND)
            value = n * (base - float(nll(moved)))
            return -math.inf if math.isnan(value) else value  # +inf: unbounded likelihood

        gains = [gain([move]) for move in near]
        joint = gain(near) if len(near) > 1 else gains[0]
    reasons: list[str] = []
    notes: list[str] = []
    for (j, sign), g in zip(near, gains, strict=True):
        side = "lower" if sign < 0 else "upper"
        bound = scales[j] * PARAM_BOUND**sign
        where = f"parameter {names[j]} = {params[names[j]]:.3g} is at its {side} bound ({bound:.3g})"
        if g > _BINDING_GAIN or joint > _BINDING_GAIN:
            reasons.append(f"{where} and the likelihood still rises beyond it (+{max(g, joint):.3g} a "
                           "decade further): the data do not identify the model")
        else:
            notes.append(f"{model}: {where}, where the likelihood is flat (+{max(g, 0.0):.2g} a decade "
                         "further): the data do not identify it, the predictions are those of the "
                         "model's limit")
    return reasons, notes


def _hyp2f1_series(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, z: torch.Tensor,
                   max_terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Power series of 2F1(a, b; c; z), elementwise: the sums and which of them converged."""
    a, b, c, z = torch.broadcast_tensors(a, b, c, z)
    term = torch.ones_like(z)
    total = torch.ones_like(z)
    converged = torch.zeros_like(z, dtype=torch.bool)
    for k in range(max_terms):
        term = term * (a + k) * (b + k) / ((c + k) * (k + 1)) * z
        total = total + term
        if k % 16 == 0:
            converged = term.abs() <= 1e-16 * total.abs()
            if bool(converged.all()):
                break
    else:
        converged = term.abs() <= 1e-16 * total.abs()
    return total, converged & torch.isfinite(total)


def hyp2f1_euler(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Gauss hypergeometric 2F1(a, b; c; z) for 0 <= z < 1 by its power series, elementwise.

    Used on the Euler-transformed BG/NBD terms, whose ``a`` and ``b`` are small and ``c`` large,
    so the terms shrink about like ``z**k``; the loop stops when the largest term is below 1e-16
    of its sum.
    """
    total, converged = _hyp2f1_series(a, b, c, z, _MAX_SERIES_TERMS)
    if not bool(converged.all()):  # pragma: no cover - needs z within 1e-5 of 1
        log.warning("hypergeometric series did not converge in %d terms", _MAX_SERIES_TERMS)
    return total


# ------------------------------------------------------------------------------------- BG/NBD
def bgnbd_log_likelihood(
    r: torch.Tensor, alpha: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    x: torch.Tensor, tx: torch.Tensor, T: torch.Tensor,
) -> torch.Tensor:
    """Per-customer BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6), differentiable.

    Written as ``A1 + A2 + A3 + log(1 + exp(A4 - A3))`` with ``A4 - A3 = log a - log(b + x - 1) +
    (r + x) log1p((T - t_x) / (alpha + t_x))``, so the two large ``(r + x) log(...)`` terms of a
    heavy customer never cancel.

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
    log_odds = _log_odds_dropped(r, alpha, a, b, x, tx, T)
    return a1 + a2 + a3 + torch.where(repeat, torch.logaddexp(torch.zeros_like(log_odds), log_odds),
                                      torch.zeros_like(log_odds))


def _log_odds_dropped(r: Any, alpha: Any, a: Any, b: Any, x: torch.Tensor, tx: torch.Tensor,
                      T: torch.Tensor) -> torch.Tensor:
    """log P(dropped out after the last purchase) / P(alive), finite (meaningless) where x = 0."""
    repeat = x > 0
    bx1 = torch.where(repeat, b + x - 1, torch.ones_like(x))
    return (torch.log(a) if isinstance(a, torch.Tensor) else math.log(a)) - torch.log(bx1) + (r + x) * torch.log1p(
        (T - tx) / (alpha + tx))


def _expected_while_alive(pr: dict[str, float], t: torch.Tensor, x: torch.Tensor,
                          T: torch.Tensor) -> torch.Tensor:
    """FHL 2005 eq. 10 without the P(alive) factor: ``E[(1 - (1 + p u)^-(r+x)) / p]``, ``u = t / (alpha + T)``.

    ``p ~ Beta(a, b + x)`` (the drop-out probability given ``x`` repeat purchases while alive).
    The hypergeometric series where it converges fast, the logit-p quadrature elsewhere.
    """
    r, alpha, a, b = (pr[k] for k in ("r", "alpha", "a", "b"))
    z = t / (alpha + T + t)
    out = torch.empty_like(x)
    todo = torch.ones_like(x, dtype=torch.bool)
    if a < _SERIES_MAX_A and abs(a - 1) >= _SERIES_MIN_GAP:
        use = z <= _SERIES_MAX_Z
        if bool(use.any()):
            xs, zs = x[use], z[use]
            # The Euler transform 2F1(r+x, b+x; a+b+x-1; z) = (1-z)^(a-1-r-x) 2F1(a+b-1-r, a-1;
            # a+b+x-1; z) cancels the ((alpha+T)/(alpha+T+t))^(r+x) factor of eq. 10, so large
            # frequencies neither overflow nor need thousands of terms.
            f, ok = _hyp2f1_series(torch.full_like(xs, a + b - 1 - r), torch.full_like(xs, a - 1),
                                   a + b + xs - 1, zs, _SERIES_TERMS)
            lead = (a + b + xs - 1) / (a - 1)
            tail = torch.pow(1 - zs, a - 1) * f
            vals = lead * (1 - tail)
            # 1 - tail cancels when b + x is large against the result: keep <= 4 digits lost
            ok = ok & torch.isfinite(vals) & (lead.abs() * torch.clamp(tail.abs(), min=1.0) <= 1e4 * vals.abs())
            idx = torch.nonzero(use).squeeze(1)
            out[idx] = vals
            todo[idx[ok]] = False
    if bool(todo.any()):
        idx = torch.nonzero(todo).squeeze(1)
        out[idx] = _expected_while_alive_quadrature(pr, t[idx], x[idx], T[idx])
    return out


def _expected_while_alive_quadrature(pr: dict[str, float], t: torch.Tensor, x: torch.Tensor,
                                     T: torch.Tensor) -> torch.Tensor:
    """``E[g(p)]``, ``p ~ Beta(a, b + x)``, by the trapezoid rule in ``y = logit p``.

    ``g(p) = (1 - (1 + p u)^-n) / p`` (``n = r + x``) is bounded, falls from ``g(0) = n u`` to
    ``g(1)``, and is analytic in a strip of half-width pi around the real ``y`` axis, so the
    trapezoid rule converges geometrically. The line ``l(p)`` through ``g(0)`` and ``g(1)`` is
    integrated exactly (``E[p] = a / (a + b + x)``) and ``h = g - l``, which vanishes at both ends,
    numerically: its integrand decays at least like ``exp(-|y|)`` whatever ``a`` and ``b``. Nodes
    ``y0 + sigma s``, ``s`` in [-40, 40] by 0.5, centred on the mode of ``p^(a+1) (1-p)^(b+x+1)``
    with its logit-scale width. The Beta weights are normalised by their sum when both shape
    parameters are >= 1 (its log normaliser would lose digits for huge ``a`` or ``b + x``) and by
    ``B(a, b + x)`` otherwise (where the weights' own tails are too slow for the sum).
    """
    r, alpha, a, b = (pr[k] for k in ("r", "alpha", "a", "b"))
    s = torch.arange(-_QUAD_HALF_WIDTH, _QUAD_HALF_WIDTH + _QUAD_STEP / 2, _QUAD_STEP,
                     dtype=torch.float64, device=x.device)
    out = torch.empty_like(x)
    for lo in range(0, x.numel(), _QUAD_CHUNK):
        sl = slice(lo, lo + _QUAD_CHUNK)
        xc, tc, Tc = x[sl], t[sl], T[sl]
        beta = b + xc
        n = r + xc
        u = tc / (alpha + Tc)
        g0 = n * u
        g1 = -torch.expm1(-n * torch.log1p(u))
        y0 = torch.log((a + 1) / (beta + 1))
        sigma = torch.sqrt(1 / (a + 1) + 1 / (beta + 1))
        p0, q0 = torch.sigmoid(y0), torch.sigmoid(-y0)
        d = sigma[:, None] * s
        p = torch.sigmoid(y0[:, None] + d)
        # log of p^a (1-p)^beta relative to its value at y0, without cancellation for huge a, beta
        log_w = (-a * torch.log1p(q0[:, None] * torch.expm1(-d))
                 - beta[:, None] * torch.log1p(p0[:, None] * torch.expm1(d)))
        g = -torch.expm1(-n[:, None] * torch.log1p(p * u[:, None])) / p
        h = g - (g0[:, None] + (g1 - g0)[:, None] * p)
        self_norm = (beta >= 1) & (a >= 1)
        log_norm = (a * torch.nn.functional.logsigmoid(y0) + beta * torch.nn.functional.logsigmoid(-y0)
                    - (math.lgamma(a) + torch.lgamma(beta) - torch.lgamma(a + beta)))
        w = torch.where(self_norm[:, None], torch.softmax(log_w, dim=1),
                        torch.exp(log_norm[:, None] + log_w) * (sigma[:, None] * _QUAD_STEP))
        out[sl] = g0 + (g1 - g0) * (a / (a + beta)) + (w * h).sum(dim=1)
    return out


def _spearman(u: np.ndarray, v: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""

    def rank(w: np.ndarray) -> np.ndarray:
        order = np.argsort(w, kind="mergesort")
        ranks = np.empty(w.size)
        ranks[order] = np.arange(w.size, dtype=np.float64)
        _, inverse, counts = np.unique(w, return_inverse=True, return_counts=True)
        return (np.bincount(inverse, weights=ranks) / counts)[inverse]

    ru, rv = rank(u), rank(v)
    if ru.std() == 0 or rv.std() == 0:
        return math.nan
    return float(np.corrcoef(ru, rv)[0, 1])


def _check_finite(model: str, what: str, values: np.ndarray, observed: np.ndarray,
                  inputs: dict[str, np.ndarray]) -> None:
    bad = observed & ~np.isfinite(values)
    if not bad.any():
        return
    idx = np.flatnonzero(bad)
    reason = f"non-finite predictions for {idx.size:,} customers"
    rows = [f"index {i}: " + ", ".join(f"{k}={v[i]:g}" for k, v in inputs.items()) for i in idx[:_SHOWN]]
    raise DegenerateFitError(
        f"{model} {what} is not finite for {idx.size:,} of {int(observed.sum()):,} customers with a "
        f"history, first at index {', '.join(str(i) for i in idx[:_SHOWN])}; the fit cannot be used "
        "for them.", reason=reason, rows=rows)


class _JsonModel(BaseEstimator):
    """Save/load of a fitted BTYD model as JSON, and the degenerate-fit guard of the predictions.

    A scikit-learn estimator for ``get_params``/``set_params``/``clone`` (its ``fit`` takes the
    customers' histories, not an ``X``, so it is no Pipeline step).
    """

    #: constructor arguments saved with the model, in file order
    _setting_names: tuple[str, ...] = ()
    param_names: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: parameters, fit statistics, degeneracy and settings."""
        return {
            "model": type(self).__name__,
            "format_version": FORMAT_VERSION,
            **{name: getattr(self, name) for name in self._setting_names},
            "params": dict(self._fitted()),
            "log_likelihood": self.log_likelihood_,
            "n_customers": self.n_customers_,
            "n_iter": self.n_iter_,
            "degenerate": getattr(self, "degenerate_", None),
            "fit_notes": list(getattr(self, "fit_notes_", [])),
        }

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, *, device: Any = "auto"):
        """Read a model written by :meth:`save` (``degenerate_`` and ``fit_notes_`` included)."""
        d = read_json(path)
        check_state(d, kind=cls.__name__, version=FORMAT_VERSION, kind_key="model")
        # settings added later are absent from older files: their defaults apply
        model = cls(**{name: d[name] for name in cls._setting_names if name in d}, device=device)
        model.params_ = {k: float(d["params"][k]) for k in cls.param_names}
        model.log_likelihood_ = float(d["log_likelihood"])
        model.n_customers_ = int(d["n_customers"])
        model.n_iter_ = int(d["n_iter"])
        model.degenerate_ = d.get("degenerate")
        model.fit_notes_ = list(d.get("fit_notes", []))
        return model

    def _record_verdict(self, label: str, n: int, n_iter: int, reasons: list[str], notes: list[str]):
        """Set ``degenerate_`` and ``fit_notes_`` from a fit's findings, and log them."""
        self.degenerate_ = "; ".join(reasons) or None
        self.fit_notes_ = notes
        if self.degenerate_ is not None:
            log.warning("%s fit on %d customers is degenerate: %s", label, n, self.degenerate_)
        for note in notes:
            log.info("%s", note)
        log.info("%s fitted on %d customers in %d iterations: %s", label, n, n_iter, _rounded(self.params_))
        return self

    def _fitted(self) -> dict[str, float]:
        if not hasattr(self, "params_"):
            raise UserInputError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' first.")
        return self.params_

    def _usable(self, allow_degenerate: bool) -> dict[str, float]:
        """The parameters, or :class:`DegenerateFitError` for a degenerate fit unless allowed."""
        pr = self._fitted()
        reason = getattr(self, "degenerate_", None)
        if reason is not None and not allow_degenerate:
            raise DegenerateFitError(
                f"This {type(self).__name__} fit is degenerate: {reason}. Its predictions cannot be "
                "trusted; pass allow_degenerate=True to compute them anyway.", reason=reason)
        return pr

    def _tensors(self, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
        device = resolve_device(self.device, key="device")
        return tuple(torch.as_tensor(a, dtype=torch.float64, device=device) for a in arrays)


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
    min_repeat_buyers : int, default=10
        Fewer customers with ``frequency > 0`` make the fit degenerate.

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
    degenerate_ : str or None
        ``None`` for a usable fit, else why it cannot be trusted: too few repeat buyers, a
        parameter at a bound the likelihood would still cross, non-finite parameters or
        predictions. The prediction methods then raise :class:`DegenerateFitError` unless called
        with ``allow_degenerate=True``.
    fit_notes_ : list of str
        Non-blocking remarks, e.g. a parameter at a bound along which the likelihood is flat
        (``a -> 0``: hardly any drop-out; ``a, b -> inf``: the same drop-out probability for
        everyone); the predictions are then those of that limit of the model.
    """

    param_names = ("r", "alpha", "a", "b")
    _setting_names = ("time_unit", "penalizer_coef", "min_repeat_buyers")

    def __init__(self, *, penalizer_coef: float = 0.0, time_unit: str = "D", device: Any = "auto",
                 max_iter: int = 500, tol: float = 1e-9, min_repeat_buyers: int = MIN_REPEAT_BUYERS):
        self.penalizer_coef = penalizer_coef
        self.time_unit = time_unit
        self.device = device
        self.max_iter = max_iter
        self.tol = tol
        self.min_repeat_buyers = min_repeat_buyers

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
            With ``degenerate_`` set (``None`` when the fit is usable) and ``fit_notes_``.

        Raises
        ------
        UserInputError
            On invalid settings or inputs, or when no customer has a history. Data that do not
            identify the model are no error: see ``degenerate_``.
        """
        pen = _check_nonneg("penalizer_coef", self.penalizer_coef)
        _check_time_unit(self.time_unit)
        min_repeat = _check_min_repeat(self.min_repeat_buyers)
        x, tx, tt, observed = check_rft(frequency, recency, T)
        x, tx, tt = x[observed], tx[observed], tt[observed]
        if x.size == 0:
            raise UserInputError("BetaGeoModel.fit needs at least one customer with a history.")
        device = resolve_device(self.device, key="device")
        n = int(x.size)
        n_repeat = int((x > 0).sum())
        # fit on times in units of the mean T: the log-likelihood only shifts by -sum(x) log(scale)
        scale = float(tt.mean()) if tt.mean() > 0 else 1.0
        xt, txs, tts = (torch.as_tensor(v, dtype=torch.float64, device=device) for v in (x, tx / scale, tt / scale))
        to_user = torch.tensor([1.0, scale, 1.0, 1.0], dtype=torch.float64, device=device)

        def nll(theta: torch.Tensor) -> torch.Tensor:
            p = theta.exp()
            return -bgnbd_log_likelihood(p[0], p[1], p[2], p[3], xt, txs, tts).sum() / n

        def objective(theta: torch.Tensor) -> torch.Tensor:
            return nll(theta) + pen * ((theta.exp() * to_user) ** 2).sum() + LOG_RIDGE / n * (theta**2).sum()

        # data-driven starts: purchase rates r / alpha matching the pooled repeat-purchase rate
        rate = max(float(x.sum() / (tt / scale).sum()) if tt.sum() > 0 else 0.0, 1e-3)
        candidates = [[1.0, 1.0, 1.0, 1.0]] + [[r, r / rate, a, b] for r in (0.25, 1.0, 4.0)
                                                for a, b in ((1.0, 1.0), (0.5, 3.0), (2.0, 10.0))]
        start = _best_start(objective, candidates, device)
        theta, _, n_iter = _lbfgs(objective, start, device, int(self.max_iter), float(self.tol))
        params = np.exp(theta) * np.array([1.0, scale, 1.0, 1.0])
        self.params_ = dict(zip(self.param_names, (float(v) for v in params), strict=True))
        self.n_iter_ = n_iter
        self.n_customers_ = n
        reasons: list[str] = []
        notes: list[str] = []
        if n_repeat < min_repeat:
            reasons.append(f"too few repeat buyers ({n_repeat:,} of {n:,} customers bought more than once; "
                           f"at least {min_repeat:,} needed)")
        if not np.isfinite(params).all():
            reasons.append("the likelihood optimisation did not reach finite parameters")
            self.log_likelihood_ = math.nan
        else:
            raw = self._tensors(x, tx, tt)
            with torch.no_grad():
                p = torch.as_tensor(params, dtype=torch.float64, device=device)
                self.log_likelihood_ = float(bgnbd_log_likelihood(p[0], p[1], p[2], p[3], *raw).sum())
            bound_reasons, notes = _bound_check(nll, theta, n, self.param_names, self.params_,
                                                [1.0, scale, 1.0, 1.0], device, "BG/NBD")
            reasons += bound_reasons
            # the predictions on the fitted customers, over their median T, must be finite
            t_ref = torch.full_like(raw[0], float(np.median(tt)) or 1.0)
            with torch.no_grad():
                pred = self._conditional(self.params_, t_ref, *raw)
                pr = [self.params_[k] for k in self.param_names]
                alive = torch.sigmoid(-torch.where(raw[0] > 0, _log_odds_dropped(*pr, *raw), -math.inf))
            bad = int((~torch.isfinite(pred) | ~torch.isfinite(alive)).sum())
            if bad:
                reasons.append(f"non-finite predictions for {bad:,} customers")
        if not math.isfinite(self.log_likelihood_) and "finite parameters" not in " ".join(reasons):
            reasons.append("the log-likelihood at the fitted parameters is not finite")
        return self._record_verdict("BG/NBD", n, n_iter, reasons, notes)

    # -- predictions
    def conditional_expected_number_of_purchases_up_to_time(
        self, t: Any, frequency: Any, recency: Any, T: Any, *, allow_degenerate: bool = False
    ) -> np.ndarray:
        """Expected repeat purchases in the next ``t`` periods of each customer, given the history.

        Parameters
        ----------
        t : float or array-like of shape (n_customers,)
            Horizon, in ``time_unit``.
        frequency, recency, T : array-like of shape (n_customers,)
        allow_degenerate : bool, default=False
            Predict even when ``degenerate_`` is set.

        Returns
        -------
        ndarray of float64, shape (n_customers,); NaN only for customers without history.

        Raises
        ------
        DegenerateFitError
            When the fit is degenerate (unless ``allow_degenerate``), or a prediction for a
            customer with a history is not finite.
        """
        pr = self._usable(allow_degenerate)
        x, tx, tt, observed = check_rft(frequency, recency, T)
        t_arr = np.broadcast_to(_as_array("t", t), x.shape).astype(np.float64)
        _fail("t", ~(t_arr >= 0) | np.isinf(t_arr), "must be finite and >= 0", {"t": t_arr})
        out = np.full(x.shape, np.nan)
        if observed.any():
            xs, txs, tts, ts = self._tensors(x[observed], tx[observed], tt[observed], t_arr[observed])
            with torch.no_grad():
                out[observed] = self._conditional(pr, ts, xs, txs, tts).cpu().numpy()
        _check_finite("BetaGeoModel", "expected number of purchases", out, observed,
                      {"t": t_arr, "frequency": x, "recency": tx, "T": tt})
        return out

    @staticmethod
    def _conditional(pr: dict[str, float], t: torch.Tensor, x: torch.Tensor, tx: torch.Tensor,
                     T: torch.Tensor) -> torch.Tensor:
        """FHL 2005 eq. 10: P(alive) times the expected purchases while alive."""
        r, alpha, a, b = (pr[k] for k in ("r", "alpha", "a", "b"))
        log_odds = torch.where(x > 0, _log_odds_dropped(r, alpha, a, b, x, tx, T), -math.inf)
        return torch.sigmoid(-log_odds) * _expected_while_alive(pr, t, x, T)

    def expected_number_of_purchases_up_to_time(self, t: Any, *, allow_degenerate: bool = False) -> np.ndarray:
        """Expected purchases in ``(0, t]`` of a random new customer (FHL 2005 eq. 9).

        Parameters
        ----------
        t : float or array-like
            Time(s) since the customer's first purchase, in ``time_unit``.
        allow_degenerate : bool, default=False
            Predict even when ``degenerate_`` is set.

        Returns
        -------
        ndarray of float64, same shape as ``t`` (1-d).

        Raises
        ------
        DegenerateFitError
            As :meth:`conditional_expected_number_of_purchases_up_to_time`.
        """
        pr = self._usable(allow_degenerate)
        t_arr = _as_array("t", t)
        _fail("t", ~(t_arr >= 0) | np.isinf(t_arr), "must be finite and >= 0", {"t": t_arr})
        zeros = np.zeros_like(t_arr)
        (ts, zs) = self._tensors(t_arr, zeros)
        # eq. 9 is eq. 10 for a customer with x = t_x = T = 0
        with torch.no_grad():
            out = self._conditional(pr, ts, zs, zs, zs).cpu().numpy()
        _check_finite("BetaGeoModel", "expected number of purchases", out, np.ones(out.shape, bool), {"t": t_arr})
        return out

    def conditional_probability_alive(self, frequency: Any, recency: Any, T: Any, *,
                                      allow_degenerate: bool = False) -> np.ndarray:
        """Probability that each customer is still active at the end of the period (FHL eq. 11).

        Parameters
        ----------
        frequency, recency, T : array-like of shape (n_customers,)
        allow_degenerate : bool, default=False
            Predict even when ``degenerate_`` is set.

        Returns
        -------
        ndarray of float64, shape (n_customers,); NaN only for customers without history.

        Raises
        ------
        DegenerateFitError
            As :meth:`conditional_expected_number_of_purchases_up_to_time`.
        """
        pr = self._usable(allow_degenerate)
        r, alpha, a, b = (pr[k] for k in ("r", "alpha", "a", "b"))
        x, tx, tt, observed = check_rft(frequency, recency, T)
        out = np.full(x.shape, np.nan)
        if observed.any():
            xs, txs, tts = self._tensors(x[observed], tx[observed], tt[observed])
            log_odds = torch.where(xs > 0, _log_odds_dropped(r, alpha, a, b, xs, txs, tts), -math.inf)
            out[observed] = torch.sigmoid(-log_odds).cpu().numpy()
        _check_finite("BetaGeoModel", "probability alive", out, observed,
                      {"frequency": x, "recency": tx, "T": tt})
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
    min_repeat_buyers : int, default=10
        Fewer repeat buyers with a positive ``monetary_value`` make the fit degenerate.
    max_correlation : float, default=0.5
        The model assumes the spend independent of the purchase frequency: a Spearman rank
        correlation of ``frequency`` and ``monetary_value`` (over the fitted customers) beyond
        this, in absolute value, makes the fit degenerate. 1 switches the check off.

    Attributes
    ----------
    params_ : dict
        Fitted ``p``, ``q``, ``v``.
    log_likelihood_ : float
    n_customers_ : int
    n_iter_ : int
    degenerate_ : str or None
        ``None`` for a usable fit, else why not: too few repeat buyers with a positive spend,
        ``q <= 1`` (infinite expected spend), frequency and spend correlated, a parameter at a
        bound the likelihood would still cross, non-finite predictions. The prediction methods
        then raise :class:`DegenerateFitError` unless called with ``allow_degenerate=True``.
    fit_notes_ : list of str
        Non-blocking remarks (a parameter at a bound along which the likelihood is flat).
    frequency_correlation_ : float
        The Spearman correlation checked against ``max_correlation`` (NaN when undefined).
    """

    param_names = ("p", "q", "v")
    _setting_names = ("penalizer_coef", "min_repeat_buyers", "max_correlation")

    def __init__(self, *, penalizer_coef: float = 0.0, device: Any = "auto", max_iter: int = 500,
                 tol: float = 1e-9, min_repeat_buyers: int = MIN_REPEAT_BUYERS, max_correlation: float = 0.5):
        self.penalizer_coef = penalizer_coef
        self.device = device
        self.max_iter = max_iter
        self.tol = tol
        self.min_repeat_buyers = min_repeat_buyers
        self.max_correlation = max_correlation

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
            With ``degenerate_`` set (``None`` when the fit is usable) and ``fit_notes_``.

        Raises
        ------
        UserInputError
            On invalid settings or inputs, or when no customer has ``frequency > 0`` and
            ``monetary_value > 0``.
        """
        pen = _check_nonneg("penalizer_coef", self.penalizer_coef)
        min_repeat = _check_min_repeat(self.min_repeat_buyers)
        max_corr = _check_nonneg("max_correlation", self.max_correlation)
        x, m, observed = _check_monetary(frequency, monetary_value)
        use = observed & (x > 0) & (m > 0)
        n_zero = int((observed & (x > 0) & (m == 0)).sum())
        if n_zero:
            log.warning("GammaGammaModel.fit leaves out %d repeat buyer(s) with monetary_value 0", n_zero)
        n = int(use.sum())
        if n == 0:
            raise UserInputError("GammaGammaModel.fit needs at least one customer with frequency > 0 "
                                 "and monetary_value > 0; got none.")
        device = resolve_device(self.device, key="device")
        # fit on spends in units of their mean: the log-likelihood only shifts by -n log(scale)
        scale = float(m[use].mean())
        xt = torch.as_tensor(x[use], dtype=torch.float64, device=device)
        ms = torch.as_tensor(m[use] / scale, dtype=torch.float64, device=device)
        to_user = torch.tensor([1.0, 1.0, scale], dtype=torch.float64, device=device)

        def nll(theta: torch.Tensor) -> torch.Tensor:
            p = theta.exp()
            return -gamma_gamma_log_likelihood(p[0], p[1], p[2], xt, ms).sum() / n

        def objective(theta: torch.Tensor) -> torch.Tensor:
            return nll(theta) + pen * ((theta.exp() * to_user) ** 2).sum() + LOG_RIDGE / n * (theta**2).sum()

        # starts whose prior mean spend p v / (q - 1) is the observed mean (1 on this scale)
        candidates = [[p, q, (q - 1) / p] for p in (1.0, 4.0) for q in (2.0, 4.0)]
        start = _best_start(objective, candidates, device)
        theta, _, n_iter = _lbfgs(objective, start, device, int(self.max_iter), float(self.tol))
        params = np.exp(theta) * np.array([1.0, 1.0, scale])
        self.params_ = dict(zip(self.param_names, (float(v) for v in params), strict=True))
        self.n_iter_ = n_iter
        self.n_customers_ = n
        self.frequency_correlation_ = _spearman(x[use], m[use]) if n >= 3 else math.nan
        n_repeat = int((observed & (x > 0)).sum())
        reasons: list[str] = []
        notes: list[str] = []
        if n < min_repeat:
            reasons.append(f"too few repeat buyers with a positive monetary value ({n:,} of "
                           f"{int(observed.sum()):,} customers, {n_repeat:,} repeat buyers; at least "
                           f"{min_repeat:,} needed)")
        if not np.isfinite(params).all():
            reasons.append("the likelihood optimisation did not reach finite parameters")
            self.log_likelihood_ = math.nan
        else:
            with torch.no_grad():
                pt = torch.as_tensor(params, dtype=torch.float64, device=device)
                mt = torch.as_tensor(m[use], dtype=torch.float64, device=device)
                self.log_likelihood_ = float(gamma_gamma_log_likelihood(pt[0], pt[1], pt[2], xt, mt).sum())
            p, q, v = (self.params_[k] for k in ("p", "q", "v"))
            if q <= 1:
                reasons.append(f"q = {q:.3g} <= 1: the expected spend per purchase is infinite")
            rho = self.frequency_correlation_
            if math.isfinite(rho) and abs(rho) > max_corr:
                reasons.append(f"frequency and monetary value are correlated (Spearman {rho:.2f} over {n:,} "
                               f"repeat buyers, at most {max_corr:.2g} tolerated): the Gamma-Gamma model "
                               "assumes the spend independent of the purchase frequency")
            bound_reasons, notes = _bound_check(nll, theta, n, self.param_names, self.params_,
                                                [1.0, 1.0, scale], device, "Gamma-Gamma")
            reasons += bound_reasons
            xo, mo = x[observed], m[observed]
            with np.errstate(all="ignore"):
                profit = p * (v + xo * mo) / (p * xo + q - 1)
            bad = int((~np.isfinite(profit)).sum())
            if bad:
                reasons.append(f"non-finite predictions for {bad:,} customers")
        return self._record_verdict("Gamma-Gamma", n, n_iter, reasons, notes)

    def conditional_expected_average_profit(self, frequency: Any, monetary_value: Any, *,
                                            allow_degenerate: bool = False) -> np.ndarray:
        """Expected mean spend per purchase of each customer, given its history (FHL eq. 5).

        A customer with frequency 0 gets the population mean ``p v / (q - 1)``; NaN inputs give
        NaN.

        Parameters
        ----------
        frequency, monetary_value : array-like of shape (n_customers,)
        allow_degenerate : bool, default=False
            Predict even when ``degenerate_`` is set.

        Returns
        -------
        ndarray of float64, shape (n_customers,)

        Raises
        ------
        DegenerateFitError
            When the fit is degenerate (unless ``allow_degenerate``), or a prediction for a
            customer with a history is not finite.
        """
        pr = self._usable(allow_degenerate)
        p, q, v = pr["p"], pr["q"], pr["v"]
        x, m, observed = _check_monetary(frequency, monetary_value)
        out = np.full(x.shape, np.nan)
        xo, mo = x[observed], m[observed]
        with np.errstate(all="ignore"):
            out[observed] = p * (v + xo * mo) / (p * xo + q - 1)
        _check_finite("GammaGammaModel", "expected average profit", out, observed,
                      {"frequency": x, "monetary_value": m})
        return out

    def customer_lifetime_value(
        self, bgf: BetaGeoModel, frequency: Any, recency: Any, T: Any, monetary_value: Any,
        time: float = 12, discount_rate: float = 0.01, *, allow_degenerate: bool = False,
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
        allow_degenerate : bool, default=False
            Predict even when this model's or ``bgf``'s ``degenerate_`` is set.

        Returns
        -------
        ndarray of float64, shape (n_customers,); NaN for customers without history.

        Raises
        ------
        DegenerateFitError
            When either fit is degenerate (unless ``allow_degenerate``), or a prediction is not
            finite.
        """
        _check_nonneg("time", time)
        _check_nonneg("discount_rate", discount_rate)
        bgf._usable(allow_degenerate)
        profit = self.conditional_expected_average_profit(frequency, monetary_value,
                                                          allow_degenerate=allow_degenerate)
        factor = PERIODS_PER_MONTH[_check_time_unit(bgf.time_unit)]
        steps = list(np.arange(1, math.floor(time) + 1, dtype=np.float64))
        if time > math.floor(time):
            steps.append(float(time))
        clv = np.zeros_like(profit)
        previous = np.zeros_like(profit)
        for month in steps:
            cum = bgf.conditional_expected_number_of_purchases_up_to_time(
                month * factor, frequency, recency, T, allow_degenerate=allow_degenerate)
            clv += profit * (cum - previous) / (1 + discount_rate) ** month
            previous = cum
        return clv
