"""Joining per-customer artifacts on customer_id (runtime/tables.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.tables import join_on_customer_id


def test_join_keeps_the_base_order_and_matches_ids():
    base = pa.table({"customer_id": ["b", "a", "c"], "segment": [1, 0, 2]})
    scores = pa.table({"customer_id": ["a", "b", "c"], "churn_score": [0.1, 0.2, 0.3]})
    out = join_on_customer_id(base, scores)
    assert out["customer_id"].to_pylist() == ["b", "a", "c"]
    assert out["churn_score"].to_pylist() == [0.2, 0.1, 0.3]


def test_join_refuses_missing_customers_and_repeated_columns():
    base = pa.table({"customer_id": ["a", "b"], "segment": [0, 1]})
    with pytest.raises(UserInputError, match="scores.parquet lacks 1 customer"):
        join_on_customer_id(base, pa.table({"customer_id": ["a"], "x": [1]}), names=("scores.parquet",))
    with pytest.raises(UserInputError, match="already in the joined table"):
        join_on_customer_id(base, pa.table({"customer_id": ["a", "b"], "segment": [1, 1]}))


def test_customer_ids_of_any_plain_type_become_strings():
    import numpy as np

    from gpuseg.data.convert import as_customer_ids

    assert as_customer_ids([1, 2, 3]).to_pylist() == ["1", "2", "3"]
    assert as_customer_ids(np.array([4.0, 5.0])).to_pylist() == ["4", "5"]  # pandas' float ids
    assert as_customer_ids(["a", "b"]).to_pylist() == ["a", "b"]
    with pytest.raises(UserInputError, match="unique"):
        as_customer_ids([7, 7])
