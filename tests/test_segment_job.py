"""``gpuseg segment`` on a small synthetic project: every customer, evidence, model, two levels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import synthetic_project

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.cluster.hierarchy import cut_tree, ward_linkage
from gpuseg.jobs import segment
from gpuseg.runtime.matrix import read_matrix
from gpuseg.runtime.metrics import adjusted_rand_index


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A validated, featurised synthetic project of 800 customers."""
    work = tmp_path_factory.mktemp("segproj") / "work"
    cfg = synthetic_project(work, 800)
    return work, cfg


def test_auto_k_segments_every_customer(project):
    work, cfg = project
    result = segment.run(cfg("segment", "device=cpu", "segment.k_min=3", "segment.k_max=6",
                             "segment.selection.n_bootstrap=2"))
    seg = pq.read_table(Path(result["segments_path"])).to_pandas()
    customers = pq.read_table(work / "validated" / "customers.parquet")["customer_id"].to_pylist()
    assert seg["customer_id"].tolist() == customers
    k = result["n_clusters"]
    assert 3 <= k <= 6 and sorted(seg["segment"].unique()) == list(range(k))
    assert seg["confidence"].between(0, 1).all() and seg["margin"].between(0, 1).all()
    assert (seg["second_segment"] != seg["segment"]).all()
    assert 0 < seg["is_outlier"].mean() < 0.05
    assert (seg["macro_segment"] == seg["segment"]).all()  # one level by default
    evidence = json.loads((work / "segment" / "k_selection.json").read_text())
    assert evidence["k"] == k and [c["k"] for c in evidence["candidates"]] == [3, 4, 5, 6]
    # the rule, why k won, and the business separation from the churn label and the spend
    assert evidence["rule"] == "prefer" and evidence["prefer"] == [5, 8] and f"k={k} " in evidence["reason"]
    assert evidence["business_sources"]["churn"] == "customers.churned"
    assert evidence["business_sources"]["value"] == "features.monetary_sum"
    for c in evidence["candidates"]:
        churn = c["business"]["churn"]
        assert len(churn["by_segment"]) == c["k"] and all(0 <= r <= 1 for r in churn["by_segment"])
        # every customer has a churn label: the spread is the share-weighted sd of the segment rates
        rates, shares = np.array(churn["by_segment"]), np.array(c["shares"])
        assert churn["spread"] == pytest.approx(np.sqrt((shares * (rates - churn["overall"]) ** 2).sum()))
        assert c["churn_spread"] == churn["spread"] and c["value_spread"] == c["business"]["value"]["spread"]
    chart = (work / "segment" / "k_selection.svg").read_text()
    assert chart.startswith("<svg") and "Davies-Bouldin (lower is better)" in chart
    assert "silhouette (higher is better)" in chart and "churn-rate spread across segments" in chart
    assert all(f'text-anchor="middle">{k_}</text>' in chart for k_ in (3, 4, 5, 6))  # every k labelled
    # the saved model alone reproduces the segments
    _, x, _ = read_matrix(work / "features" / "matrix.parquet")
    model = MiniBatchKMeans.load(work / "segment" / "kmeans", device="cpu")
    np.testing.assert_array_equal(model.predict(x), seg["segment"].to_numpy())
    # the calibrated confidence grows with the margin
    cal = json.loads((work / "segment" / "segmentation.json").read_text())["calibration"]
    assert cal["method"] in ("bootstrap_logistic", "constant")
    if cal["method"] == "bootstrap_logistic":
        assert cal["b"] > 0


def test_micro_segments_nest_in_macro_segments(project):
    work, cfg = project
    result = segment.run(cfg("segment", "device=cpu", "segment.n_clusters=40", "segment.macro.n_clusters=4",
                             "segment.confidence.n_bootstrap=1"))
    seg = pq.read_table(result["segments_path"]).to_pandas()
    assert seg["segment"].nunique() == 40 and seg["macro_segment"].nunique() == 4
    # every micro-segment sits inside exactly one macro segment
    assert (seg.groupby("segment")["macro_segment"].nunique() == 1).all()
    meta = json.loads((work / "segment" / "segmentation.json").read_text())
    of_segment = np.asarray(meta["macro"]["of_segment"])
    assert len(of_segment) == 40
    # the macro segments are the Ward groups of the size-weighted micro centres, not any grouping
    model = MiniBatchKMeans.load(work / "segment" / "kmeans", device="cpu")
    centres = np.asarray(model.cluster_centers_, dtype=np.float64)
    counts = np.bincount(seg["segment"].to_numpy(), minlength=40).astype(np.float64)
    expected = cut_tree(ward_linkage(centres, counts), 4)
    assert adjusted_rand_index(of_segment, expected) == 1.0
    # and they are compact: a micro centre is nearer its own macro centroid than the others, mostly
    macro_centres = np.stack([np.average(centres[of_segment == m], axis=0, weights=counts[of_segment == m])
                              for m in range(4)])
    nearest = np.argmin(((centres[:, None, :] - macro_centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == of_segment).mean() >= 0.85


def test_same_seed_same_segments(project):
    work, cfg = project
    runs = []
    for _ in range(2):
        segment.run(cfg("segment", "device=cpu", "segment.n_clusters=5", "seed=3"))
        runs.append(pq.read_table(work / "segment" / "segments.parquet"))
    assert runs[0].equals(runs[1])


def test_bad_segment_config(project):
    from gpuseg.runtime.errors import ConfigError, UserInputError

    _, cfg = project
    with pytest.raises(ConfigError) as err:
        segment.run(cfg("segment", "device=cpu", "segment.n_clusters=0"))
    assert err.value.config_key == "segment.n_clusters"
    with pytest.raises(UserInputError) as err:
        segment.run(cfg("segment", "device=cpu", "segment.input=/nope.parquet"))
    assert err.value.config_key == "segment.input"
    with pytest.raises(ConfigError, match="monetary_total") as err:
        segment.run(cfg("segment", "device=cpu", "segment.selection.business.value=monetary_total"))
    assert err.value.config_key == "segment.selection.business.value" and "monetary_sum" in str(err.value)
    for prefer, text in (("[8,5]", "two integers"), ("[20,30]", "outside the candidates")):
        with pytest.raises(ConfigError, match=text) as err:
            segment.run(cfg("segment", "device=cpu", f"segment.selection.prefer={prefer}"))
        assert err.value.config_key == "segment.selection.prefer"
    with pytest.raises(ConfigError) as err:
        segment.run(cfg("segment", "device=cpu", "segment.selection.business.label=nope"))
    assert err.value.config_key == "segment.selection.business.label"


def test_auto_k_without_business_figures_says_so(project):
    work, cfg = project
    segment.run(cfg("segment", "device=cpu", "segment.k_min=4", "segment.k_max=6", "segment.selection.n_bootstrap=1",
                    "segment.selection.business.label=null", "segment.selection.business.value=null",
                    "segment.confidence.n_bootstrap=1"))
    evidence = json.loads((work / "segment" / "k_selection.json").read_text())
    assert evidence["business"] is None and "evidence alone" in evidence["rule_text"]
    assert evidence["business_sources"]["churn"] is None and evidence["business_sources"]["value"] is None
    assert [n.split(" is null")[0] for n in evidence["business_sources"]["notes"]] == [
        "segment.selection.business.label", "segment.selection.business.value"]
    assert all("business" not in c for c in evidence["candidates"])
