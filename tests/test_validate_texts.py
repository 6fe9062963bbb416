"""Texts from several columns, and empty reviews that still carry a rating."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from gpuseg.data.mapping import DataMapping
from gpuseg.data.validate import EMPTY_TEXT_RATING_KEPT, validate_tables
from gpuseg.runtime.errors import ConfigError, UserInputError


def _mapping(tmp_path, *, policy=None, **texts) -> DataMapping:
    customers = tmp_path / "customers.csv"
    customers.write_text("cid\na\nb\nc\nd\ne\n")
    path = tmp_path / "reviews.csv"
    path.write_text(
        "cid,title,message,stars\n"
        "a,Great,Arrived early,5\n"
        'b,,"  only the message  ",4\n'
        "c,Title only,   ,3\n"
        "d,,,2\n"
        "e, ,,\n")
    return DataMapping.from_dict({
        "customers": {"path": str(customers), "columns": {"customer_id": "cid"}},
        "events": {"path": None},
        "texts": {"path": str(path), "columns": {"customer_id": "cid", "timestamp": None, "source": None,
                                                 "text": None, "rating": "stars"},
                  "source_constant": "review", "text_columns": ["title", "message"], **texts},
        "policy": policy or {},
    })


def test_text_columns_are_joined_and_blank_parts_skipped(tmp_path):
    report = validate_tables(_mapping(tmp_path, text_separator=" | "), tmp_path / "work")
    texts = pq.read_table(tmp_path / "work" / "validated" / "texts.parquet").to_pydict()
    assert texts["customer_id"] == ["a", "b", "c", "d"]
    assert texts["text"] == ["Great | Arrived early", "  only the message  ", "Title only", None]
    assert texts["rating"] == [5.0, 4.0, 3.0, 2.0]
    assert report["tables"]["texts"]["rejected"] == {"empty text": 1}  # e: no text, no rating


def test_empty_text_with_a_rating_keeps_the_rating(tmp_path):
    report = validate_tables(_mapping(tmp_path), tmp_path / "work")
    out = tmp_path / "work" / "validated"
    texts = pq.read_table(out / "texts.parquet").to_pydict()
    assert texts["text"][0] == "Great\nArrived early"  # default separator: a newline
    d = texts["customer_id"].index("d")
    assert texts["text"][d] is None and texts["rating"][d] == 2.0
    counts = json.loads((out / "validation.json").read_text())["tables"]["texts"]
    assert counts["rows_kept"] == 4 and counts["dropped_values"] == {EMPTY_TEXT_RATING_KEPT: 1}
    assert counts["rejected"] == {"empty text": 1} and report["tables"]["texts"] == counts
    rejects = pq.read_table(out / "rejects" / "texts.parquet").to_pylist()
    assert {(r["customer_id"], r["reason"]) for r in rejects} == {("d", EMPTY_TEXT_RATING_KEPT), ("e", "empty text")}
    assert EMPTY_TEXT_RATING_KEPT == "empty text: text dropped, rating kept"


def test_empty_text_without_rating_follows_the_policy(tmp_path):
    with pytest.raises(UserInputError, match="empty text") as err:
        validate_tables(_mapping(tmp_path, policy={"empty_text": "error"}), tmp_path / "work")
    assert err.value.config_key == "data.policy.empty_text" and "row 4" in str(err.value)


def test_text_columns_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not both") as err:
        DataMapping.from_dict({"events": {"path": "e.csv", "columns": {"customer_id": "c", "timestamp": "t"},
                                          "event_type_rule": {"constant": "x"}},
                               "texts": {"path": "t.csv", "columns": {"text": "body"}, "source_constant": "review",
                                         "text_columns": ["a", "b"]}})
    assert err.value.config_key == "data.texts.text_columns"
    with pytest.raises(ConfigError) as err:
        _mapping(tmp_path, text_columns="title")
    assert err.value.config_key == "data.texts.text_columns"
