"""The audience rule language: parsing, errors that point at the problem, vectorised evaluation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gpuseg.audience.rules import evaluate, parse
from gpuseg.runtime.errors import UserInputError

COLUMNS = {
    "x": pa.array([1.0, 2.0, None, 4.0, 5.0]),
    "churn_risk": pa.array(["high", "low", "high", None, "medium"]),
    "is_outlier": pa.array([True, False, True, False, None]),
    "segment": pa.array([0, 1, 2, 1, 0], pa.int32()),
}


def _mask(rule: str) -> list[int]:
    return evaluate(rule, COLUMNS)[0].astype(int).tolist()


@pytest.mark.parametrize("rule, expected", [
    ("x > p50", [0, 0, 0, 1, 1]),                      # p50 of the known values (1, 2, 4, 5) is 3
    ("churn_risk == 'high' and x >= 1", [1, 0, 0, 0, 0]),
    ("top 2 by x", [0, 0, 0, 1, 1]),
    ("bottom 50% by x", [1, 1, 0, 0, 0]),
    ("churn_risk in ('high', 'low')", [1, 1, 1, 0, 0]),
    ("segment in (0, 2)", [1, 0, 1, 0, 1]),
    ("is_outlier", [1, 0, 1, 0, 0]),
    ("x between 2 and 4", [0, 1, 0, 1, 0]),
    ("x is null", [0, 0, 1, 0, 0]),
    ("(x > 4 OR churn_risk = 'low') and not is_outlier", [0, 1, 0, 0, 0]),
    ("x > -1.5", [1, 1, 0, 1, 1]),
])
def test_rules_select_the_intended_customers(rule, expected):
    assert _mask(rule) == expected


def test_nulls_never_match_a_comparison_nor_its_negation():
    assert _mask("x > 3") == [0, 0, 0, 1, 1]
    assert _mask("not x > 3") == [1, 1, 0, 0, 0]              # the null (row 2) is in neither
    assert _mask("churn_risk != 'high'") == [0, 1, 0, 0, 1]   # nor is a missing tier "not high"
    assert _mask("not is_outlier") == [0, 1, 0, 1, 0]


def test_fields_used_and_canonical_spelling():
    _, fields, canonical = evaluate("churn_risk = 'high' AND x > P80", COLUMNS)
    assert fields == ["churn_risk", "x"]
    assert canonical == "churn_risk == 'high' and x > p80"
    assert str(parse("not (a > 1 or b < 2) and c")) == "not (a > 1 or b < 2) and c"


def test_a_syntax_error_points_at_its_position():
    with pytest.raises(UserInputError) as err:
        evaluate("churn_risk == 'high' and x >", COLUMNS)
    text = str(err.value)
    assert "position 29" in text and "audience.rule" in text
    assert text.splitlines()[-2].index("^") - 2 == len("churn_risk == 'high' and x >")


def test_an_unknown_field_suggests_the_nearest():
    with pytest.raises(UserInputError, match=r"unknown field 'churn_rsk'; did you mean 'churn_risk'\?"):
        evaluate("churn_rsk == 'high'", COLUMNS)


def test_a_field_of_a_job_not_run_names_the_job():
    with pytest.raises(UserInputError, match=r"comes from `gpuseg profile`.*run `gpuseg profile` first"):
        evaluate("expected_value > p80", COLUMNS, missing={"expected_value": "profile"})


@pytest.mark.parametrize("rule, message", [
    ("churn_risk > 'a'", "only == and != "),
    ("x == 'high'", "number field and 'high' is not a number"),
    ("churn_risk > p80", "percentile needs a number field"),
    ("top 0 by x", "whole number of at least 1"),
    ("x > p120", "above p100"),
    ("x > 3 $", "unexpected character '\\$'"),
    ("x", "not true/false"),
])
def test_type_and_value_errors_are_clear(rule, message):
    with pytest.raises(UserInputError, match=message):
        evaluate(rule, COLUMNS)


def test_top_breaks_ties_by_row_order_and_skips_nulls():
    cols = {"s": pa.array([3.0, 5.0, 5.0, None, 5.0])}
    mask, _, _ = evaluate("top 2 by s", cols)
    assert mask.tolist() == [False, True, True, False, False]
    assert np.array_equal(evaluate("top 100% by s", cols)[0], np.array([1, 1, 1, 0, 1], bool))
