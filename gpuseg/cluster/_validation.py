"""Kept for modules not yet moved over: the checks live in :mod:`gpuseg.runtime.validation`."""

from gpuseg.runtime.validation import (  # noqa: F401
    InputDataError,
    InvalidParameterError,
    NotFittedError,
)
