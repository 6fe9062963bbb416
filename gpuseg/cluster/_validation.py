"""Parameter and input checks with scikit-learn's wording, raised as gpuseg user errors.

The error classes subclass both :class:`~gpuseg.runtime.errors.UserInputError` (so the CLI shows
the message, not a traceback) and ``ValueError``/``TypeError`` (so code written against
scikit-learn that catches those keeps working); :class:`NotFittedError` is also scikit-learn's
``sklearn.exceptions.NotFittedError``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

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


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(owner: str, name: str, value, *, low: int, high: int | None = None,
              allow_none: bool = False) -> None:
    """Raise unless ``value`` is an int in ``[low, high]`` (``None`` allowed when asked)."""
    if allow_none and value is None:
        return
    if _is_int(value) and value >= low and (high is None or value <= high):
        return
    upper = "inf)" if high is None else f"{high}]"
    extra = " or None" if allow_none else ""
    raise InvalidParameterError(
        f"The '{name}' parameter of {owner} must be an int in the range [{low}, {upper}{extra}. "
        f"Got {value!r} instead."
    )


def check_real(owner: str, name: str, value, *, low: float, high: float | None = None,
               closed_low: bool = True) -> None:
    """Raise unless ``value`` is a real number in the given interval."""
    if _is_real(value) and not np.isnan(value):
        ok_low = value >= low if closed_low else value > low
        ok_high = high is None or value <= high
        if ok_low and ok_high:
            return
    left = "[" if closed_low else "("
    upper = "inf)" if high is None else f"{high}]"
    raise InvalidParameterError(
        f"The '{name}' parameter of {owner} must be a float in the range {left}{low}, {upper}. "
        f"Got {value!r} instead."
    )


def check_options(owner: str, name: str, value, options: Iterable[str], *, extra: str = "") -> None:
    """Raise unless ``value`` is one of the string ``options``."""
    options = tuple(options)
    if isinstance(value, str) and value in options:
        return
    listed = "{" + ", ".join(repr(o) for o in options) + "}"
    raise InvalidParameterError(
        f"The '{name}' parameter of {owner} must be a str among {listed}{extra}. Got {value!r} instead."
    )


def check_random_state(owner: str, value) -> None:
    """``random_state`` must be None, a non-negative int or a numpy Generator."""
    if value is None or isinstance(value, np.random.Generator):
        return
    if _is_int(value) and value >= 0:
        return
    raise InvalidParameterError(
        f"The 'random_state' parameter of {owner} must be an int in the range [0, inf), "
        f"an instance of 'numpy.random.Generator' or None. Got {value!r} instead."
    )


def check_device(owner: str, value) -> None:
    """``device`` must be ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a :class:`torch.device`."""
    if isinstance(value, torch.device):
        return
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return
    raise InvalidParameterError(
        f"The 'device' parameter of {owner} must be a str among {{'auto', 'cpu', 'cuda', 'cuda:N'}} "
        f"or a torch.device. Got {value!r} instead."
    )
