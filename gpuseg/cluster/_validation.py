"""Parameter and input checks with scikit-learn's wording, raised as gpuseg user errors.

The error classes subclass both :class:`~gpuseg.runtime.errors.UserInputError` (so the CLI shows
the message, not a traceback) and ``ValueError``/``TypeError`` (so code written against
scikit-learn that catches those keeps working).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np
import torch

from gpuseg.runtime.errors import ConfigError, UserInputError


class InvalidParameterError(ConfigError, ValueError, TypeError):
    """An estimator parameter has a wrong type or value (scikit-learn's message format)."""


class InputDataError(UserInputError, ValueError):
    """The data given to ``fit``/``predict`` cannot be used (shape, NaN, too few rows...)."""


class NotFittedError(UserInputError, ValueError, AttributeError):
    """``predict``/``transform``/``save`` called before ``fit``."""


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
