"""``gpuseg.runtime.validation``: one wording (scikit-learn's) and one family of errors for every check."""

from __future__ import annotations

import numpy as np
import pytest

from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.validation import (
    InputDataError,
    InvalidParameterError,
    NotFittedError,
    check_bool,
    check_fitted,
    check_int,
    check_options,
    check_param,
    check_real,
)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_int("Est", "n", 0, low=1), r"The 'n' parameter of Est must be an int in the range \[1, inf\). Got 0 instead."),
        (lambda: check_int("Est", "n", True, low=0), r"Got True instead"),
        (lambda: check_int("Est", "n", 9, low=2, high=8, allow_none=True), r"\[2, 8\] or None. Got 9"),
        (lambda: check_real("Est", "f", 1.0, low=0.0, high=1.0, closed_high=False), r"a float in the range \[0.0, 1.0\). Got 1.0"),
        (lambda: check_real("Est", "f", float("nan"), low=0.0), r"Got nan instead"),
        (lambda: check_real("Est", "f", 0.0, low=0.0, closed_low=False), r"\(0.0, inf\)"),
        (lambda: check_bool("Est", "b", "yes"), r"must be an instance of 'bool'. Got 'yes' instead."),
        (lambda: check_options("Est", "o", "c", ("a", "b")), r"must be a str among \{'a', 'b'\}. Got 'c' instead."),
        (lambda: check_param("Est", "p", -1, False, "None or a positive int"), r"must be None or a positive int. Got -1"),
    ],
)
def test_one_wording_and_one_error_class(call, message):
    with pytest.raises(InvalidParameterError, match=message) as info:
        call()
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, UserInputError) and isinstance(err, ValueError)


def test_accepted_values_and_config_key():
    check_int("Est", "n", np.int64(3), low=1)
    check_real("Est", "f", 1, low=0.0)
    check_bool("Est", "b", np.True_)
    with pytest.raises(InvalidParameterError) as info:
        check_int("Est", "n", 0, low=1, config_key="text.n")
    assert info.value.config_key == "text.n"


def test_not_fitted_is_scikit_learns_error_too():
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    with pytest.raises(SklearnNotFittedError, match="This Index instance is not built yet. Call 'build'") as info:
        check_fitted("Index", False, verb="built", call="build")
    assert isinstance(info.value, NotFittedError) and isinstance(info.value, UserInputError)
    check_fitted("Index", True)


def test_cluster_helpers_raise_user_errors_not_bare_value_errors():
    import torch

    from gpuseg.cluster.confidence import outlier_thresholds
    from gpuseg.cluster.hierarchy import cut_tree, ward_linkage
    from gpuseg.cluster.metrics import davies_bouldin, silhouette

    with pytest.raises(InvalidParameterError, match=r"'quantile' parameter of outlier_thresholds .* \(0.0, 1.0\]"):
        outlier_thresholds(np.zeros(3, np.int64), np.zeros(3), 1, 1.5)
    tree = ward_linkage(np.eye(3), np.ones(3))
    with pytest.raises(InvalidParameterError, match=r"'n_clusters' parameter of cut_tree .* \[1, 3\]. Got 4"):
        cut_tree(tree, 4)
    with pytest.raises(InputDataError, match="weights must be positive"):
        ward_linkage(np.eye(3), np.zeros(3))
    with pytest.raises(InputDataError, match="non-negative"):
        silhouette(torch.zeros(4, 2), torch.tensor([0, -1, 0, 1]))
    with pytest.raises(InputDataError, match="at least 2 clusters"):
        davies_bouldin(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
