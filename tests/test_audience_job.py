"""``gpuseg audience`` by rule: every customer evaluated, outputs, profile, errors, second audience kept."""

from __future__ import annotations

import json
import logging

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gpuseg.runtime.errors import UserInputError
from tests.conftest import synthetic_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from gpuseg.jobs import profile, segment

    work = tmp_path_factory.mktemp("audience") / "work"
    cfg = synthetic_project(work, 300)
    segment.run(cfg("segment", "segment.n_clusters=4", "device=cpu"))
    profile.run(cfg("profile", "device=cpu"))
    return work, cfg


def _run(cfg, *overrides):
    from gpuseg.jobs import audience

    return audience.run(cfg("audience", "device=cpu", *overrides))


def test_rule_audience_outputs_size_share_and_profile(project):
    work, cfg = project
    result = _run(cfg, "audience.name=vip", "audience.rule=\"churn_risk == 'high' and expected_value > p50\"")
    scores = pq.read_table(work / "profile" / "customer_scores.parquet")
    value = scores["expected_value"].to_numpy(zero_copy_only=False)
    threshold = float(pc.quantile(pc.drop_null(scores["expected_value"]), q=0.5)[0].as_py())
    expected = {i for i, r, v in zip(scores["customer_id"].to_pylist(), scores["churn_risk"].to_pylist(), value,
                                     strict=True) if r == "high" and v > threshold}
    table = pq.read_table(work / "audiences" / "vip.parquet")
    assert table.column_names == ["customer_id", "churn_risk", "expected_value"]
    assert set(table["customer_id"].to_pylist()) == expected and len(expected) > 0
    summary = json.loads((work / "audiences" / "vip.json").read_text())
    assert summary["size"] == result["size"] == len(expected)
    assert summary["share"] == pytest.approx(len(expected) / 300) and summary["n_base"] == 300
    assert summary["rule"] == "churn_risk == 'high' and expected_value > p50"
    lifts = {row["field"]: row for row in summary["profile"]}
    assert lifts["expected_value"]["lift_z"] > 0            # selected for high value: above the base
    assert lifts["churn_risk=high"]["audience_mean"] == pytest.approx(1.0)


def test_a_second_audience_keeps_the_first(project):
    work, cfg = project
    _run(cfg, "audience.name=first", "audience.rule='segment == 0'")
    _run(cfg, "audience.name=second", "audience.rule='top 10 by churn_score'")
    assert (work / "audiences" / "first.parquet").exists() and (work / "audiences" / "first.json").exists()
    assert pq.read_table(work / "audiences" / "second.parquet").num_rows == 10


def test_dry_run_writes_nothing(project):
    work, cfg = project
    before = sorted(p.name for p in (work / "audiences").glob("*")) if (work / "audiences").exists() else []
    result = _run(cfg, "audience.dry_run=true", "audience.name=dry", "audience.rule='frequency > p90'")
    assert result["dry_run"] and result["rule"] == "frequency > p90" and result["size"] > 0
    assert sorted(p.name for p in (work / "audiences").glob("*")) == before


def test_a_field_of_a_job_not_run_names_it(project):
    _, cfg = project
    with pytest.raises(UserInputError, match="run `gpuseg lookalike` first"):
        _run(cfg, "audience.name=x", "audience.rule='lookalike_score > 0.5'")
    with pytest.raises(UserInputError, match="did you mean 'expected_value'"):
        _run(cfg, "audience.name=x", "audience.rule='expectd_value > 0.5'")


def test_empty_and_everyone_are_warnings(project, caplog):
    _, cfg = project
    with caplog.at_level(logging.WARNING):
        assert _run(cfg, "audience.name=nobody", "audience.rule='frequency < -1'")["size"] == 0
        assert _run(cfg, "audience.name=all", "audience.rule='frequency >= 0'")["size"] == 300
    assert "is empty: no customer matches frequency < -1" in caplog.text
    assert "holds every customer (300)" in caplog.text


def test_bad_config_is_a_clear_error(project):
    _, cfg = project
    with pytest.raises(UserInputError, match="not neither"):
        _run(cfg, "audience.name=x")
    with pytest.raises(UserInputError, match="name the audience"):
        _run(cfg, "audience.rule='segment == 1'")
    with pytest.raises(UserInputError, match="must be letters"):
        _run(cfg, "audience.name=../evil", "audience.rule='segment == 1'")


def test_personal_data_columns_are_never_fields(project, tmp_path):
    import shutil

    from gpuseg.jobs.audience import load_fields

    work, _ = project
    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("audiences", ".staging"))
    schema_path = copy / "validated" / "schema.json"
    schema = json.loads(schema_path.read_text())
    schema["customers"]["pii"] = ["age"]
    schema_path.write_text(json.dumps(schema))
    fields = load_fields(copy)
    assert "age" not in fields.fields and "plan" in fields.fields
