"""Plain words to a rule with the local MiniLM: a handful of the benchmark's requests, and refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gpuseg.runtime.errors import UserInputError
from tests import test_audience_job

project = test_audience_job.project  # the same small project fixture
REQUESTS = Path(__file__).resolve().parents[1] / "benchmarks" / "audience_requests.json"


@pytest.fixture(scope="module")
def compiler(project):
    from gpuseg.audience.words import QueryCompiler
    from gpuseg.jobs.audience import load_fields
    from gpuseg.text import TextEmbedder

    return QueryCompiler(load_fields(project[0]).fields, TextEmbedder(None, device="cpu").encode)


@pytest.mark.parametrize("query, rule", [
    ("high-value customers showing declining engagement", "expected_value > p80 and trend_activity < 0"),
    ("customers at risk of churning", "churn_risk == 'high'"),
    ("top 5000 customers by churn score", "top 5000 by churn_score"),
    ("customers without support tickets", "n_tickets == 0"),
    ("customers in the north or south region", "region in ('north', 'south')"),
    ("customers with low churn risk and high expected value", "churn_risk == 'low' and expected_value > p80"),
    ("new customers", "tenure_days < p20"),
])
def test_requests_compile_to_the_intended_rule(compiler, query, rule):
    assert query in {r["query"] for r in json.loads(REQUESTS.read_text())["requests"]}
    compiled = compiler.compile(query)
    assert compiled.rule == rule
    assert all(c.candidates[0].field == c.field for c in compiled.conditions if c.candidates)


def test_a_request_that_matches_nothing_is_an_error_naming_the_best_candidates(compiler):
    with pytest.raises(UserInputError) as err:
        compiler.compile("customers who like purple unicorns")
    assert "no field matches" in str(err.value) and "best: " in str(err.value)
    assert err.value.config_key == "audience.query"


def test_the_job_prints_the_rule_and_keeps_the_candidates(project, caplog):
    from gpuseg.jobs import audience

    work, cfg = project
    with caplog.at_level(logging.INFO):
        result = audience.run(cfg("audience", "device=cpu", "audience.name=at_risk_vip",
                                  "audience.query='high-value customers showing declining engagement'"))
    assert result["rule"] == "expected_value > p80 and trend_activity < 0"
    assert "audience rule: expected_value > p80 and trend_activity < 0" in caplog.text
    summary = json.loads((work / "audiences" / "at_risk_vip.json").read_text())
    assert summary["query"].startswith("high-value")
    first = summary["words"]["conditions"][0]
    assert first["field"] == "expected_value" and len(first["candidates"]) == 3
    assert [c["score"] for c in first["candidates"]] == sorted((c["score"] for c in first["candidates"]),
                                                               reverse=True)
