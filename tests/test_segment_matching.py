"""Stable segment ids across refits: centre matching (L1) and ``segment.previous`` (job)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import synthetic_project

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.cluster.matching import center_spread, match_centers, reorder_clusters
from gpuseg.jobs import segment
from gpuseg.runtime.errors import ConfigError
from gpuseg.runtime.matrix import read_matrix

GRID = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 20.0]])


def test_permuted_centres_keep_their_ids():
    perm = np.array([3, 0, 4, 1, 2])
    noisy = GRID[perm] + np.random.default_rng(0).normal(0, 0.3, GRID.shape)
    m = match_centers(GRID, noisy, max_distance=2.0)
    np.testing.assert_array_equal(m.ids, perm)  # new centre j was old centre perm[j]
    np.testing.assert_array_equal(noisy[m.order].round(), GRID.round())
    assert m.births == [] and m.deaths == [] and m.renumbered == {}
    assert [p[:2] for p in m.matched] == [(i, i) for i in range(5)]


def test_added_cluster_is_a_birth_after_the_old_maximum():
    new = np.vstack([[30.0, 30.0], GRID[::-1]])  # the new cluster comes first
    m = match_centers(GRID, new, max_distance=2.0)
    assert m.ids.tolist() == [5, 4, 3, 2, 1, 0]
    assert m.births == [5] and m.deaths == []


def test_removed_cluster_is_a_death_and_ids_stay_contiguous():
    # old 1 is gone: 0, 2, 3 keep their ids, 4 (>= new k) is renumbered into the freed id 1
    new = GRID[[4, 0, 3, 2]]
    m = match_centers(GRID, new, max_distance=2.0)
    assert m.deaths == [1] and m.births == []
    assert m.renumbered == {4: 1}
    assert m.ids.tolist() == [1, 0, 3, 2]
    # a death with a birth: the birth takes the dead id only because 0..k-1 has no other one
    new = np.vstack([GRID[[0, 2, 3, 4]], [[40.0, -40.0]]])
    m = match_centers(GRID, new, max_distance=2.0)
    assert m.deaths == [1] and m.births == [1] and m.ids.tolist() == [0, 2, 3, 4, 1]


def test_distance_limit_refuses_far_pairs():
    shifted = GRID + np.array([3.0, 0.0])
    assert match_centers(GRID, shifted, max_distance=None).births == []
    m = match_centers(GRID, shifted, max_distance=2.0)
    assert m.births == [0, 1, 2, 3, 4] and m.deaths == [0, 1, 2, 3, 4] and m.matched == []
    # a far pair is refused without stopping another, near pair from matching
    moved = GRID.copy()
    moved[0] = [-8.0, -8.0]
    m = match_centers(GRID, moved, max_distance=2.0)
    assert m.births == [0] and m.deaths == [0] and len(m.matched) == 4
    assert center_spread(GRID) == pytest.approx(10.0)


def test_wrong_dimension_is_an_error():
    with pytest.raises(ValueError, match="2 dimensions, new ones 3"):
        match_centers(GRID, np.zeros((5, 3)))


def test_reorder_clusters_moves_centres_counts_and_labels():
    x = np.vstack([GRID + np.random.default_rng(s).normal(0, 0.2, GRID.shape) for s in range(20)])
    model = MiniBatchKMeans(n_clusters=5, random_state=0, device="cpu").fit(x)
    before = model.predict(x)
    order = np.array([2, 0, 1, 4, 3])
    reorder_clusters(model, order)
    new_id = np.argsort(order)
    np.testing.assert_array_equal(model.predict(x), new_id[before])
    np.testing.assert_array_equal(model.labels_, new_id[before])


# ------------------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("matchproj") / "work"
    return work, synthetic_project(work, 400)


def _segment(cfg, *overrides):
    return segment.run(cfg("segment", "device=cpu", "segment.selection.n_bootstrap=1",
                           "segment.confidence.n_bootstrap=1", *overrides))


def test_refit_with_previous_keeps_ids_in_every_artifact(project, tmp_path):
    work, cfg = project
    _segment(cfg, "segment.n_clusters=5", "seed=1")
    first = tmp_path / "first"
    (work / "segment").rename(first)
    raw = _segment(cfg, "segment.n_clusters=5", "seed=2")
    raw_labels = pq.read_table(raw["segments_path"])["segment"].to_numpy()
    (work / "segment").rename(tmp_path / "raw")
    res = _segment(cfg, "segment.n_clusters=5", "seed=2", f"segment.previous={first}")
    old = pq.read_table(first / "segments.parquet")["segment"].to_numpy()
    new = pq.read_table(res["segments_path"]).to_pandas()
    info = json.loads((work / "segment" / "segmentation.json").read_text())["matching"]
    assert info["previous"] == str(first) and info["max_distance"] > 0
    # same customers, another seed: matching keeps far more customers' ids than the raw refit
    kept = (new["segment"].to_numpy() == old).mean()
    assert kept > 0.5 and kept > (raw_labels == old).mean() + 0.2
    # the renumbering is a permutation of the raw refit's labels
    assert len(set(zip(raw_labels.tolist(), new["segment"].tolist(), strict=True))) == 5
    assert sorted(new["segment"].unique()) == list(range(5))
    # the saved model, the thresholds and the sizes follow the ids
    _, x, _ = read_matrix(work / "features" / "matrix.parquet")
    model = MiniBatchKMeans.load(work / "segment" / "kmeans", device="cpu")
    np.testing.assert_array_equal(model.predict(x), new["segment"].to_numpy())
    metrics = json.loads((work / "segment" / "metrics.json").read_text())
    assert metrics["sizes"] == np.bincount(new["segment"], minlength=5).tolist()
    assert metrics["n_matched"] == len(info["matched"])
    seg = json.loads((work / "segment" / "segmentation.json").read_text())
    outside = new["distance"] > np.asarray(seg["outlier_thresholds"])[new["segment"]]
    np.testing.assert_array_equal(outside.to_numpy(), new["is_outlier"].to_numpy())
    (work / "segment").rename(tmp_path / "kept")

    # one more segment than before: a birth, numbered after the old maximum
    grown = _segment(cfg, "segment.n_clusters=6", "seed=2", f"segment.previous={first}",
                     "segment.match.max_distance=null")
    assert grown["births"] == [5] and grown["deaths"] == []
    # one fewer: a death, and the ids stay 0..k-1
    shrunk = _segment(cfg, "segment.n_clusters=4", "seed=2", f"segment.previous={first}",
                      "segment.match.max_distance=null")
    assert len(shrunk["deaths"]) == 1 and shrunk["births"] == []
    labels = pq.read_table(shrunk["segments_path"])["segment"].to_numpy()
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]
    # a zero limit matches nothing: every new segment is a birth, every old one a death
    none = _segment(cfg, "segment.n_clusters=5", "seed=2", f"segment.previous={first}",
                    "segment.match.max_distance=0")
    assert none["n_matched"] == 0 and none["deaths"] == [0, 1, 2, 3, 4]


def test_previous_from_another_feature_space_is_an_error(project, tmp_path):
    work, cfg = project
    _segment(cfg, "segment.n_clusters=3")
    prev = tmp_path / "prev"
    (work / "segment").rename(prev)
    seg = json.loads((prev / "segmentation.json").read_text())
    seg["columns"] = seg["columns"][:-1]
    (prev / "segmentation.json").write_text(json.dumps(seg))
    with pytest.raises(ConfigError, match="another feature space") as err:
        _segment(cfg, "segment.n_clusters=3", f"segment.previous={prev}")
    assert err.value.config_key == "segment.previous"
    with pytest.raises(ConfigError, match="holds no segment run") as err:
        _segment(cfg, "segment.n_clusters=3", f"segment.previous={tmp_path / 'nowhere'}")
    assert err.value.config_key == "segment.previous"
