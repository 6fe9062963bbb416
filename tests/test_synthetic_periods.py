"""The multi-period synthetic generator: the same customers over periods, planted movers and drift."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_module

from gpuseg.data.synthetic import generate_synthetic
from gpuseg.jobs import generate
from gpuseg.runtime.errors import UserInputError

N = 1500
FILES = ("customers", "events", "texts", "ground_truth")


@pytest.fixture(scope="module")
def two_periods(tmp_path_factory):
    out = tmp_path_factory.mktemp("periods") / "data"
    generate_synthetic(out, n_customers=N, seed=5, periods=2, mover_share=0.4, amount_drift=0.25)
    meta = json.loads((out / "generation.json").read_text())
    tables = {t: pq.read_table(out / f"{t}.parquet").to_pandas() for t in FILES}
    return out, meta, tables


def test_one_period_ignores_the_period_parameters(tmp_path):
    generate_synthetic(tmp_path / "a", n_customers=300, seed=2)
    generate_synthetic(tmp_path / "b", n_customers=300, seed=2, periods=1, mover_share=0.9,
                       amount_drift=0.5, period_days=100, transitions={"dormant": "deal_hunter"})
    for t in FILES:
        assert (tmp_path / "a" / f"{t}.parquet").read_bytes() == (tmp_path / "b" / f"{t}.parquet").read_bytes()
    meta = json.loads((tmp_path / "b" / "generation.json").read_text())
    assert "periods" not in meta and "periods" not in meta["parameters"]


def test_period_ends_are_recorded(two_periods):
    _, meta, _ = two_periods
    assert meta["period_as_of"] == ["2024-01-02T00:00:00.000000", "2025-01-01T00:00:00.000000"]
    assert [p["as_of"] for p in meta["periods"]] == meta["period_as_of"]
    assert meta["periods"][1]["start"] == meta["periods"][0]["as_of"]
    assert meta["as_of"].startswith("2025-01-01") and meta["parameters"]["periods"] == 2


def test_stable_customers_keep_their_persona_and_movers_follow_the_plan(two_periods):
    _, meta, t = two_periods
    truth = t["ground_truth"]
    assert truth["customer_id"].tolist() == t["customers"]["customer_id"].tolist()
    assert (truth["persona"] == truth["persona_2"]).all()
    moved = truth[truth["persona_1"] != truth["persona_2"]]
    assert (truth["moved"] == (truth["persona_1"] != truth["persona_2"])).all()
    pairs = set(zip(moved["persona_1"], moved["persona_2"], strict=True))
    assert pairs == {("high_value_loyalist", "at_risk_former_active"), ("new_customer", "eco_planner")}
    assert (truth["persona_2"] != "new_customer").all()  # new only in the period one signs up
    loyal = truth[truth["persona_1"] == "high_value_loyalist"]
    share = (loyal["persona_2"] != "high_value_loyalist").mean()
    assert abs(share - 0.4) < 4 * np.sqrt(0.4 * 0.6 / len(loyal))
    boundary = meta["boundaries"][0]
    assert boundary["movers"] == len(moved)
    assert sum(boundary["transitions"].values()) == len(moved)


def test_behaviour_follows_the_persona_of_each_period(two_periods):
    _, meta, t = two_periods
    ev, truth = t["events"], t["ground_truth"].set_index("customer_id")
    end1, end2 = (np.datetime64(d) for d in meta["period_as_of"])
    ev["period"] = np.where(ev["timestamp"] < end1, 1, np.where(ev["timestamp"] < end2, 2, 3))
    ev["persona_2"] = truth.loc[ev["customer_id"], "persona_2"].to_numpy()
    ev["persona_1"] = truth.loc[ev["customer_id"], "persona_1"].to_numpy()
    in2 = ev[ev["period"] == 2]
    per_customer = in2.groupby("customer_id").size()
    dormant = truth.index[(truth["persona_1"] == "dormant") & (truth["persona_2"] == "dormant")]
    assert per_customer.reindex(dormant).fillna(0).sum() == 0  # still dormant: silent
    # loyalists who turned at risk buy less in the last 90 days than those who stayed
    late = in2[in2["timestamp"] >= end2 - np.timedelta64(90, "D")]
    late_n = late.groupby("customer_id").size()
    stayed = truth.index[truth["persona_2"] == "high_value_loyalist"]
    turned = truth.index[(truth["persona_1"] == "high_value_loyalist") & truth["moved"]]
    assert late_n.reindex(turned).fillna(0).mean() < 0.5 * late_n.reindex(stayed).fillna(0).mean()
    # planted drift: stable customers pay about 1.25 times more in period 2
    buys = ev[(ev["event_type"] == "purchase") & (ev["persona_1"] == ev["persona_2"])]
    by_period = buys.groupby("period")["amount"].median()
    assert 1.1 < by_period[2] / by_period[1] < 1.4
    # churned is about the hold-out after the last period
    bought = set(ev.loc[(ev["period"] == 3) & (ev["event_type"] == "purchase"), "customer_id"])
    churned = t["customers"].set_index("customer_id")["churned"]
    assert ((~churned.index.isin(bought)).astype(int) == churned.to_numpy()).all()
    # texts follow the persona of their period: every text belongs to an event of its customer
    assert len(t["texts"]) == int(ev["event_type"].isin(["review", "support_ticket"]).sum())


def test_same_seed_same_bytes_whatever_the_chunk(two_periods, tmp_path):
    out, _, _ = two_periods
    generate_synthetic(tmp_path / "c", n_customers=N, seed=5, periods=2, mover_share=0.4,
                       amount_drift=0.25, chunk_size=1)
    for t in FILES:
        assert (out / f"{t}.parquet").read_bytes() == (tmp_path / "c" / f"{t}.parquet").read_bytes()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"transitions": {"dormant": "deal_hunter"}}, "must give new_customer a target"),
    ({"transitions": {"new_customer": "nobody"}}, "unknown personas"),
    ({"transitions": {"new_customer": "eco_planner", "dormant": "new_customer"}}, "cannot plant"),
    ({"mover_share": 1.5}, "'mover_share' parameter"),
    ({"period_days": 10}, "'period_days' parameter"),
])
def test_bad_period_parameters_are_clear_errors(tmp_path, kwargs, match):
    with pytest.raises(UserInputError, match=match):
        generate_synthetic(tmp_path / "x", n_customers=50, periods=2, **kwargs)


def test_generate_job_plants_periods_from_the_config(tmp_path):
    with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
        cfg = compose(config_name="generate", overrides=[
            f"paths.work_dir={tmp_path}", "progress=false", "data.generator.n_customers=200",
            "data.generator.periods=3", "data.generator.period_days=120",
            "data.generator.transitions.high_value_loyalist=null",
            "+data.generator.transitions.deal_hunter=dormant"])
    generate.run(cfg)
    meta = json.loads((tmp_path / "data" / "generation.json").read_text())
    assert meta["period_as_of"][-1].startswith("2025-01-01") and len(meta["period_as_of"]) == 3
    assert meta["transitions"] == {"deal_hunter": "dormant", "new_customer": "eco_planner"}
    truth = pq.read_table(tmp_path / "data" / "ground_truth.parquet")
    assert {"persona_1", "persona_2", "persona_3", "moved"} <= set(truth.column_names)
    assert pc.sum(truth["moved"]).as_py() > 0
