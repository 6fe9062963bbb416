"""Parameter and input checks with scikit-learn's wording, raised as gpuseg user errors.

The one home of parameter validation: every estimator and L1 function checks its arguments with
these helpers, so every message reads the same way (scikit-learn's
``The 'x' parameter of Owner must be <expected>. Got <value> instead.``).

The error classes subclass both :class:`~gpuseg.runtime.errors.UserInputError` (so the CLI shows
the message, not a traceback) and ``ValueError``/``TypeError`` (so code written against
scikit-learn that catches those keeps working); :class:`NotFittedError` is also scikit-learn's
``sklearn.exceptions.NotFittedError``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.validation import validate_data

from gpuseg.runtime.errors import ConfigError, UserInputError


class InvalidParameterError(ConfigError, ValueError, TypeError):
    """An estimator parameter has a wrong type or value (scikit-learn's message format)."""


class InputDataError(UserInputError, ValueError):
    """The data given to ``fit``/``predict`` cannot be used (shape, NaN, too few rows...)."""


class InputTypeError(InputDataError, TypeError):
    """The data given to ``fit``/``predict`` has elements of the wrong type (e.g. a dict)."""


class NotFittedError(UserInputError, _SklearnNotFittedError):
    """``predict``/``transform``/``save`` called before ``fit``.

    Also a ``sklearn.exceptions.NotFittedError`` (hence ``ValueError`` and ``AttributeError``).
    """


# ------------------------------------------------------------------------------ the wording

def is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number (Python or numpy, int or float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_range(low: int, high: int | None = None) -> str:
    """``"an int in the range [low, inf)"`` (or ``[low, high]``): the text of :func:`check_int`."""
    return f"an int in the range [{low}, {'inf)' if high is None else f'{high}]'}"


def real_range(low: float, high: float | None = None, *, closed_low: bool = True,
               closed_high: bool = True) -> str:
    """``"a float in the range [low, inf)"`` and its variants: the text of :func:`check_real`."""
    left = "[" if closed_low else "("
    right = "inf)" if high is None else f"{high}{']' if closed_high else ')'}"
    return f"a float in the range {left}{low}, {right}"


def str_options(options: Iterable[str]) -> str:
    """``"a str among {'a', 'b'}"``: the text of :func:`check_options`."""
    return "a str among {" + ", ".join(repr(o) for o in options) + "}"


def invalid_parameter(owner: str, name: str, value: Any, expected: str, *,
                      config_key: str | None = None) -> InvalidParameterError:
    """The error for parameter ``name`` of ``owner``: ``must be <expected>. Got <value> instead.``"""
    return InvalidParameterError(f"The '{name}' parameter of {owner} must be {expected}. "
                                 f"Got {value!r} instead.", config_key=config_key)


def check_param(owner: str, name: str, value: Any, ok: bool, expected: str, *,
                config_key: str | None = None) -> None:
    """Raise :func:`invalid_parameter` unless ``ok`` (for constraints the helpers below lack)."""
    if not ok:
        raise invalid_parameter(owner, name, value, expected, config_key=config_key)


# ------------------------------------------------------------------------------ the checks

def check_int(owner: str, name: str, value: Any, *, low: int, high: int | None = None,
              allow_none: bool = False, config_key: str | None = None) -> None:
    """Raise unless ``value`` is an int in ``[low, high]`` (``None`` allowed when asked)."""
    if allow_none and value is None:
        return
    ok = is_int(value) and value >= low and (high is None or value <= high)
    check_param(owner, name, value, ok, int_range(low, high) + (" or None" if allow_none else ""),
                config_key=config_key)


def check_real(owner: str, name: str, value: Any, *, low: float, high: float | None = None,
               closed_low: bool = True, closed_high: bool = True, allow_none: bool = False,
               config_key: str | None = None) -> None:
    """Raise unless ``value`` is a real number (not NaN) in the given interval."""
    if allow_none and value is None:
        return
    ok = is_real(value) and not np.isnan(value)
    if ok:
        ok = (value >= low if closed_low else value > low) and (
            high is None or (value <= high if closed_high else value < high))
    expected = real_range(low, high, closed_low=closed_low, closed_high=closed_high)
    check_param(owner, name, value, ok, expected + (" or None" if allow_none else ""),
                config_key=config_key)


def check_bool(owner: str, name: str, value: Any, *, config_key: str | None = None) -> None:
    """Raise unless ``value`` is a bool (numpy's included)."""
    check_param(owner, name, value, isinstance(value, (bool, np.bool_)), "an instance of 'bool'",
                config_key=config_key)


def check_options(owner: str, name: str, value: Any, options: Iterable[str], *, extra: str = "",
                  config_key: str | None = None) -> None:
    """Raise unless ``value`` is one of the string ``options``."""
    options = tuple(options)
    check_param(owner, name, value, isinstance(value, str) and value in options,
                str_options(options) + extra, config_key=config_key)


def check_random_state(owner: str, value: Any) -> None:
    """``random_state`` must be None, a non-negative int or a numpy Generator."""
    ok = value is None or isinstance(value, np.random.Generator) or (is_int(value) and value >= 0)
    check_param(owner, "random_state", value, ok,
                f"{int_range(0)}, an instance of 'numpy.random.Generator' or None")


def check_device(owner: str, value: Any, *, config_key: str | None = None) -> None:
    """``device`` must be ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a :class:`torch.device`."""
    ok = isinstance(value, torch.device)
    if isinstance(value, str):
        v = value.strip().lower()
        ok = v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
    check_param(owner, "device", value, ok,
                "a str among {'auto', 'cpu', 'cuda', 'cuda:N'} or a torch.device", config_key=config_key)


def check_fitted(owner: str, fitted: bool, *, verb: str = "fitted", call: str = "fit") -> None:
    """Raise :class:`NotFittedError` (scikit-learn's words) unless ``fitted``."""
    if not fitted:
        raise NotFittedError(f"This {owner} instance is not {verb} yet. Call '{call}' with appropriate "
                             "arguments before using this estimator.")


def check_param_names(estimator, params) -> None:
    """``set_params``: raise :class:`InvalidParameterError` (scikit-learn's words) on unknown names."""
    valid = estimator._get_param_names()
    for key in params:
        if key.partition("__")[0] not in valid:
            raise InvalidParameterError(
                f"Invalid parameter {key!r} for estimator {estimator!r}. "
                f"Valid parameters are: {sorted(valid)!r}."
            )


def check_array_input(estimator, X, *, reset: bool, name: str = "X"):
    """Check an in-memory array-like (list, numpy, pandas) the scikit-learn way.

    ``validate_data`` converts it to a numeric ndarray (object columns to float64, other numeric
    dtypes kept), rejects sparse, complex, non-2-D, empty and zero-column input, and sets
    (``reset=True``) or checks (``reset=False``) ``n_features_in_`` and ``feature_names_in_``.
    NaN and infinity are left for the caller, which names the first bad row. scikit-learn's
    ``ValueError``/``TypeError`` come back as :class:`InputDataError`/:class:`InputTypeError`
    with the same message.
    """
    dtype = getattr(X, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.kind in "USV":
        raise InputDataError(f"Input {name} must be numeric, got dtype {dtype}.")
    try:
        return validate_data(estimator, X, reset=reset, accept_sparse=False, dtype="numeric",
                             ensure_all_finite=False, ensure_min_samples=1,
                             ensure_min_features=1)
    except UserInputError:
        raise
    except TypeError as exc:
        raise InputTypeError(str(exc)) from exc
    except ValueError as exc:
        raise InputDataError(str(exc)) from exc
