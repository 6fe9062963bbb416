"""``gpuseg profile`` on a small synthetic project: scores for every customer, profiles, report."""

from __future__ import annotations

import json
import shutil
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import headless_chromium, synthetic_project

from gpuseg.jobs import profile, segment
from gpuseg.jobs.common import segments_with_scores
from gpuseg.report.html import SECTION_IDS
from gpuseg.runtime.errors import ConfigError


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("profproj") / "work"
    cfg = synthetic_project(work, 1500)
    segment.run(cfg("segment", "device=cpu", "segment.n_clusters=6", "segment.confidence.n_bootstrap=1"))
    return work, cfg


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k == "id")


def test_profile_scores_every_customer_and_writes_the_report(project):
    work, cfg = project
    before = (work / "segment" / "segments.parquet").read_bytes()
    result = profile.run(cfg("profile", "device=cpu", "profile.churn.epochs=20"))
    # the profile writes its own artifact and leaves the segment job's output as it was
    assert (work / "segment" / "segments.parquet").read_bytes() == before
    assert result["scores_path"] == str(work / "profile" / "customer_scores.parquet")
    seg = segments_with_scores(work).to_pandas()
    customers = pq.read_table(work / "validated" / "customers.parquet").to_pandas()
    assert seg["customer_id"].tolist() == customers["customer_id"].tolist()
    assert seg["churn_score"].between(0, 1).all()
    assert set(seg["churn_risk"]) <= {"low", "medium", "high"}
    # high churn risk is a one-line filter, and it is where the churners are
    high = seg["churn_risk"] == "high"
    assert customers.loc[high.values, "churned"].mean() > customers["churned"].mean()
    assert seg["expected_purchases"].notna().mean() > 0.8
    metrics = json.loads((work / "profile" / "metrics.json").read_text())
    assert metrics["churn"]["label"] == "churned"
    assert metrics["churn"]["model"]["roc_auc"] > 0.65 and "calibration" in metrics["churn"]["model"]
    # segmented on the RFM+ matrix itself: a "baseline" on the same matrix is no baseline, and says so
    assert "rfm_logistic" not in metrics["churn"]
    assert any("no RFM+ baseline" in note for note in metrics["notes"])
    assert set(metrics["value"]["bgnbd"]) == {"r", "alpha", "a", "b"}
    assert metrics["value"]["holdout"]["by_frequency"]
    profiles = json.loads((work / "profile" / "profiles.json").read_text())["segments"]
    assert len(profiles) == 6 and sum(p["size"] for p in profiles) == len(customers)
    assert all(p["name"] and p["action"] for p in profiles)
    # distinct names; every action comes with the evidence that triggered it
    assert len({p["name"] for p in profiles}) == len(profiles)
    assert all(p["action_kind"] and p["action_evidence"] for p in profiles)
    assert not any("no default action" in p["action"].lower() for p in profiles)
    assert not any(p["name"].startswith("Segment ") for p in profiles)
    # value at stake = size x expected value per customer
    for p in profiles:
        assert p["value_at_stake"] == pytest.approx(p["size"] * p["expected_value"], rel=1e-9)
    # no name that implies low churn on a segment churning far above the base rate
    base = customers["churned"].mean()
    for p in profiles:
        if p["churn_rate"] > 1.5 * base:
            assert not any(w in p["name"].lower() for w in ("loyal", "steady", "vip"))
    assert any(p["words"].get("review") for p in profiles)
    html = Path(result["report_path"]).read_text()
    parser = _Ids()
    parser.feed(html)
    assert set(SECTION_IDS) <= parser.ids
    assert "http://" not in html and "https://" not in html and "<script" not in html
    use = html[html.index('id="how-to-use"'):html.index('id="sizes"')]
    for p in profiles:
        assert escape(p["name"]) in use and escape(p["action_kind"]) in use
        assert f"{p['value_at_stake']:,.0f}" in use


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="needs Debian's chromium package (installed by .ci/run)")
def test_report_renders_in_headless_chromium(project, tmp_path):
    work, cfg = project
    report = work / "profile" / "report.html"
    if not report.exists():
        profile.run(cfg("profile", "device=cpu", "profile.churn.epochs=20"))
    out, page_lines = headless_chromium(tmp_path / "profile", "--dump-dom", report.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in out.stdout
    assert page_lines == []


def test_churn_baseline_only_when_the_segmented_matrix_holds_more_than_rfm(project, tmp_path):
    from gpuseg.runtime.io import write_json

    work, _ = project
    features = work / "features" / "matrix.parquet"
    x_rfm, why = profile._baseline(work, {"input": str(features)}, has_events=True)
    assert x_rfm is None and "baseline would be the model itself" in why
    x_rfm, why = profile._baseline(work, {"input": str(features)}, has_events=False)
    assert x_rfm is None and "no events table" in why
    fake = tmp_path / "work"
    (fake / "features").mkdir(parents=True)
    shutil.copy(features, fake / "features" / "matrix.parquet")
    fused = fake / "fuse" / "fused.parquet"
    write_json(fake / "fuse" / "metrics.json", {"blocks": {"tabular": {}}})
    x_rfm, why = profile._baseline(fake, {"input": str(fused)}, has_events=True)
    assert x_rfm is None and why
    write_json(fake / "fuse" / "metrics.json", {"blocks": {"tabular": {}, "text": {}}})
    x_rfm, why = profile._baseline(fake, {"input": str(fused)}, has_events=True)
    assert why is None and x_rfm.shape[0] == pq.read_metadata(features).num_rows


def test_user_names_by_segment_id_and_a_clear_error_for_an_unknown_id(project):
    work, cfg = project
    profile.run(cfg("profile", "device=cpu", "profile.churn.epochs=5", "profile.names={3: Weekend gardeners}"))
    profiles = json.loads((work / "profile" / "profiles.json").read_text())["segments"]
    assert profiles[3]["name"] == "Weekend gardeners" and profiles[3]["name_source"] == "config"
    assert len({p["name"] for p in profiles}) == len(profiles)
    assert "Weekend gardeners" in (work / "profile" / "report.html").read_text()
    with pytest.raises(ConfigError, match="profile.names names segment 9.*0..5") as info:
        profile.run(cfg("profile", "device=cpu", "profile.names={9: Nobody}"))
    assert info.value.config_key == "profile.names"
    with pytest.raises(ConfigError, match="same name"):
        profile.run(cfg("profile", "device=cpu", "profile.names={0: A, 1: A}"))


def test_synthetic_auto_k_gives_every_segment_a_distinct_name(tmp_path):
    """`gpuseg run` defaults to n_clusters=auto: however many segments it picks, no two share a name."""
    work = tmp_path / "work"
    cfg = synthetic_project(work, 800)
    segment.run(cfg("segment", "device=cpu", "segment.n_clusters=auto", "segment.confidence.n_bootstrap=1",
                    "segment.selection.n_bootstrap=1"))
    profile.run(cfg("profile", "device=cpu", "profile.churn.epochs=5"))
    profiles = json.loads((work / "profile" / "profiles.json").read_text())["segments"]
    names = [p["name"] for p in profiles]
    assert len(profiles) >= 3 and len(set(names)) == len(names), names
    assert all(p["action_kind"] and p["action_evidence"] for p in profiles)


def test_churn_support_counts_labelled_customers_and_flags_thin_rates():
    from omegaconf import OmegaConf

    from gpuseg.jobs.profile import _churn_support

    # segment 0: 50 labelled (20 churned); 1: 5 labelled, 1 churned (within chance of the base
    # rate); 2: nobody labelled; 3: 12 labelled, all churned (far beyond chance, despite < 30)
    labels = np.array([0] * 50 + [1] * 40 + [2] * 10 + [3] * 12)
    y = np.r_[np.ones(20), np.zeros(30), np.full(35, np.nan), [1.0, 0, 0, 0, 0], np.full(10, np.nan), np.ones(12)]
    notes: list[str] = []
    pcfg = OmegaConf.create({"churn": {"min_labelled": 30}})
    labelled, reliable = _churn_support(pcfg, y, labels, 4, notes)
    assert labelled.tolist() == [50, 5, 0, 12] and reliable.tolist() == [True, False, False, True]
    assert len(notes) == 1 and "segment 1" in notes[0] and "5 labelled" in notes[0]
    assert _churn_support(pcfg, None, labels, 4, [])[1].tolist() == [False] * 4
    # with a floor no segment reaches, only the rate far from the base rate (12 of 12) is used
    assert _churn_support(OmegaConf.create({"churn": {"min_labelled": 1000}}), y, labels, 4, [])[1].tolist() \
        == [False, False, False, True]
    with pytest.raises(ConfigError, match="profile.churn.min_labelled"):
        _churn_support(OmegaConf.create({"churn": {"min_labelled": 0}}), y, labels, 4, [])


def test_a_matrix_above_the_memory_budget_is_read_from_disk_with_the_same_results(project):
    work, cfg = project
    outputs = {}
    for budget in ("1024", "0.01"):  # 0.01 MB: the 1,500-customer matrix is read from disk
        profile.run(cfg("profile", "device=cpu", "profile.churn.epochs=5", f"profile.memory_mb={budget}"))
        outputs[budget] = (pq.read_table(work / "profile" / "customer_scores.parquet"),
                           json.loads((work / "profile" / "profiles.json").read_text()),
                           (work / "profile" / "report.html").read_text())
        assert not list((work / "profile").glob(".matrix-*"))  # the temporary copy is gone
    (scores, profiles_, html), (scores_disk, profiles_disk, html_disk) = outputs["1024"], outputs["0.01"]
    assert scores.to_pandas().equals(scores_disk.to_pandas())  # NaN-aware: customers with no value
    assert json.dumps(profiles_) == json.dumps(profiles_disk)
    # the projection gathered the same sample rows: the report's scatter is the same
    def projection(page: str) -> str:
        return page[page.index('id="projection"'):page.index('id="lifts"')]

    assert "<svg" in projection(html) and projection(html) == projection(html_disk)
    with pytest.raises(ConfigError, match="profile.memory_mb"):
        profile.run(cfg("profile", "device=cpu", "profile.memory_mb=0"))
