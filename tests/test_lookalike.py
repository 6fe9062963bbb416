"""``LookalikeIndex``: exact engines agree, approximate recall, save/load, expansion and its errors;
the explanations (seed vs base, why similar) and the reach at the expansion presets."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from conftest import DEVICES

from gpuseg.lookalike import LookalikeIndex, reach_curve, torch_knn
from gpuseg.lookalike.expand import reach_at
from gpuseg.lookalike.explain import (
    WHY_TYPE,
    explainable_features,
    seed_profile,
    seeds_identical,
    why_similar,
)
from gpuseg.runtime.errors import UserInputError

faiss.omp_set_num_threads(1)


def _clustered(n=6000, d=32, centers=40, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * 3
    X = (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)
    return X, [f"c{i:05d}" for i in range(n)], (X[:150] + 0.1 * rng.normal(size=(150, d))).astype(np.float32)


def _recall(reference: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(reference, found, strict=True)]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_exact_torch_and_exact_faiss_return_the_same_neighbours(device, metric):
    X, ids, Q = _clustered()
    s_f, r_f = LookalikeIndex("exact", metric, device="cpu", engine="faiss").build(X, ids).search(Q, 50)
    torch_index = LookalikeIndex("exact", metric, device=device, engine="torch", tile_elements=50_000)
    s_t, r_t = torch_index.build(X, ids).search(Q, 50)
    assert "torch" in torch_index.backend_used_
    # same neighbour sets; the order may differ only between scores equal to float32 rounding
    assert all(set(a) == set(b) for a, b in zip(r_f, r_t, strict=True))
    np.testing.assert_allclose(s_t, s_f, rtol=1e-4, atol=1e-3)
    if metric == "l2":
        assert np.all(np.diff(s_t, axis=1) >= -1e-3)
    else:
        assert np.all(np.diff(s_t, axis=1) <= 1e-5)
    # reduced precision keeps k + rerank candidates and re-scores them in float32
    _, r_h = LookalikeIndex("exact", metric, device=device, engine="torch", precision="bfloat16").build(
        X, ids).search(Q, 50)
    assert _recall(r_f, r_h) >= 0.99


@pytest.mark.parametrize("backend", ["ivf_flat", "ivf_pq", "hnsw"])
@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_approximate_backends_reach_the_recall_of_their_defaults(backend, metric):
    X, ids, Q = _clustered()
    _, exact = LookalikeIndex("exact", metric).build(X, ids).search(Q, 100, return_rows=True)
    index = LookalikeIndex(backend, metric).build(X, ids)
    _, rows = index.search(Q, 100, return_rows=True)
    assert _recall(exact, rows) >= 0.95, index.backend_used_
    assert index.backend_used_.startswith("faiss.Index") and "cpu" in index.backend_used_


@pytest.mark.parametrize("backend", ["exact", "ivf_flat", "ivf_pq", "hnsw"])
def test_save_load_and_add_give_identical_results(tmp_path, backend):
    X, ids, Q = _clustered(n=3000)
    index = LookalikeIndex(backend, "ip").build(X[:2500], ids[:2500])
    index.add(X[2500:], ids[2500:])
    assert index.ntotal == 3000
    s0, r0 = index.search(Q, 20)
    index.save(tmp_path / "idx")
    loaded = LookalikeIndex.load(tmp_path / "idx", device="cpu")
    s1, r1 = loaded.search(Q, 20)
    np.testing.assert_array_equal(r0, r1)
    np.testing.assert_allclose(s0, s1, rtol=1e-6)
    assert loaded.backend_used_ == index.backend_used_
    with pytest.raises(UserInputError, match="already in the index"):
        index.add(X[:2], ids[:2])


def test_torch_knn_never_needs_the_full_score_matrix():
    X, _, Q = _clustered(n=2000)
    base, q = torch.as_tensor(X), torch.as_tensor(Q)
    s, i = torch_knn(base, q, 10, tile_elements=150 * 64, query_batch=32)  # 64-row tiles, 32-query batches
    full = q @ base.T
    ref = full.topk(10, dim=1)
    assert all(set(a) == set(b) for a, b in zip(i.tolist(), ref.indices.tolist(), strict=True))
    torch.testing.assert_close(s, ref.values, rtol=1e-5, atol=1e-4)


def _line_index(device="cpu", metric="l2"):
    # customers on a line at x = 0..9 (2-D, y = 0): distances are easy to reason about
    X = np.stack([np.arange(10, dtype=np.float32), np.zeros(10, np.float32)], 1)
    return LookalikeIndex("exact", metric, device=device).build(X, [f"p{i}" for i in range(10)])


@pytest.mark.parametrize("device", DEVICES)
def test_expand_modes_on_hand_made_points(device):
    index = _line_index(device)
    # max: nearest seed distance; seeds p0 and p9 -> p1 and p8 (1), then p2 and p7 (4)
    a = index.expand(["p0", "p9"], size=4, mode="max").to_pydict()
    assert a["customer_id"] == ["p1", "p8", "p2", "p7"] and a["rank"] == [1, 2, 3, 4]
    assert a["score"] == [-1.0, -1.0, -4.0, -4.0]
    assert a["nearest_seed"] == ["p0", "p9", "p0", "p9"]
    # centroid: the seeds' mean is 4.5 -> p4 and p5 first, nearest seeds p0 and p9
    c = index.expand(["p0", "p9"], size=2, mode="centroid").to_pydict()
    assert c["customer_id"] == ["p4", "p5"] and c["score"] == [-0.25, -0.25]
    assert c["nearest_seed"] == ["p0", "p9"]
    # mean_top_m (m=2) with seeds p0, p1, p9: p2 -> -(4 + 1)/2, p8 -> -(1 + 49)/2
    m = index.expand(["p0", "p1", "p9"], size=7, mode="mean_top_m", top_m=2).to_pydict()
    assert m["customer_id"][0] == "p2" and m["score"][0] == -2.5
    assert dict(zip(m["customer_id"], m["score"], strict=True))["p8"] == -25.0
    # exclusion and threshold
    e = index.expand(["p0"], threshold=-9.0, mode="max", exclude=["p2", "unknown"]).to_pydict()
    assert e["customer_id"] == ["p1", "p3"]
    # many queries in one batched pass equal the single queries
    both = index.expand({"left": ["p0"], "right": ["p9"]}, size=3, mode="max")
    assert both.column_names[0] == "query"
    for name, seed in (("left", "p0"), ("right", "p9")):
        part = both.filter(both["query"].to_numpy(zero_copy_only=False) == name).drop_columns(["query"])
        assert part.equals(index.expand([seed], size=3, mode="max"))


@pytest.mark.parametrize("mode", ["max", "centroid"])
def test_index_candidates_equal_exhaustive_scoring_for_exact_backends(mode):
    X, ids, _ = _clustered(n=3000)
    index = LookalikeIndex("exact", "cosine").build(X, ids)
    seeds = ids[:25]
    exhaustive = index.expand(seeds, size=200, mode=mode, exclude=ids[100:150], candidates="all")
    via_index = index.expand(seeds, size=200, mode=mode, exclude=ids[100:150], candidates="index")
    assert exhaustive["customer_id"].to_pylist() == via_index["customer_id"].to_pylist()
    assert not set(exhaustive["customer_id"].to_pylist()) & set(seeds + ids[100:150])


def test_expansion_errors_and_warnings(caplog):
    index = _line_index()
    with pytest.raises(UserInputError, match="2 of 3 seed ids are not in the index: 'x1', 'x2'"):
        index.expand(["p0", "x1", "x2"], size=2)
    with caplog.at_level(logging.WARNING, logger="gpuseg.lookalike.index"):
        warned = index.expand(["p0", "x1"], size=2, on_unknown="warn", mode="max")
    assert warned["customer_id"].to_pylist() == ["p1", "p2"] and "'x1'" in caplog.text
    with pytest.raises(UserInputError, match="no known seed left"):
        index.expand(["x1"], size=2, on_unknown="warn")
    with pytest.raises(UserInputError, match="empty"):
        index.expand([], size=2)
    with pytest.raises(UserInputError, match="'size' or a similarity 'threshold'"):
        index.expand(["p0"])
    with pytest.raises(UserInputError, match="'mode' parameter"):
        index.expand(["p0"], size=2, mode="median")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpuseg.lookalike.expand"):
        capped = index.expand(["p0", "p1"], size=50, exclude=["p9"])
    assert capped.num_rows == 7 and "capped at 7" in caplog.text
    with pytest.raises(UserInputError, match="'backend' parameter"):
        LookalikeIndex("annoy").build(np.eye(3), ["a", "b", "c"])
    with pytest.raises(UserInputError, match="unknown parameter\\(s\\) \\['nprobe'\\]"):
        LookalikeIndex("hnsw", nprobe=3).build(np.eye(3), ["a", "b", "c"])
    with pytest.raises(UserInputError, match="not built"):
        LookalikeIndex().search(np.eye(3), 1)


def test_reach_curve_is_monotone():
    scores = np.sort(np.random.default_rng(0).random(1000))[::-1]
    curve = reach_curve(scores, 30)
    assert curve["size"][0] == 1 and curve["size"][-1] == 1000
    assert np.all(np.diff(curve["min_score"]) <= 0) and np.all(np.diff(curve["mean_score"]) <= 0)


def test_seeds_are_left_out_unless_included():
    index = _line_index()
    default = index.expand(["p0", "p9"], size=4, mode="max").to_pydict()
    assert not {"p0", "p9"} & set(default["customer_id"])
    included = index.expand(["p0", "p9"], size=4, mode="max", include_seeds=True).to_pydict()
    # each seed is its own nearest seed at distance 0, so the seeds rank first
    assert included["customer_id"] == ["p0", "p9", "p1", "p8"]
    assert included["nearest_seed"][:2] == ["p0", "p9"] and included["score"][:2] == [0.0, 0.0]


def test_reach_at_reads_the_curve_at_named_sizes():
    scores = np.array([0.9, 0.8, 0.5, 0.2])
    got = reach_at(scores, {"narrow": 1, "balanced": 3, "broad": 10})
    assert got["narrow"] == {"size": 1, "reached": 1, "min_score": 0.9, "mean_score": 0.9}
    assert got["balanced"]["min_score"] == 0.5 and got["balanced"]["mean_score"] == pytest.approx(2.2 / 3)
    assert got["broad"]["reached"] == 4 and got["broad"]["min_score"] == 0.2
    assert reach_at(np.array([]), {"x": 5})["x"]["min_score"] is None


def _explain_table():
    """12 customers: seeds s0-s2 are high on `spend`, ordinary on `visits`; `flat` never varies;
    `rating` is undefined for c2 and c4; `plan` is categorical."""
    rng = np.random.default_rng(3)
    ids = [f"s{i}" for i in range(3)] + [f"c{i}" for i in range(9)]
    spend = np.r_[[10.0, 11.0, 12.0], rng.normal(2.0, 1.0, 9)]
    visits = rng.normal(5.0, 2.0, 12)
    rating = np.r_[[4.5, 4.0, 5.0], rng.normal(3.0, 1.0, 9)]
    rating[[5, 7]] = np.nan
    plan = ["gold"] * 3 + ["basic"] * 6 + ["gold"] * 3
    return pa.table({"customer_id": ids, "spend": spend, "visits": visits, "flat": np.ones(12),
                     "rating": rating, "plan": plan}), ids


def test_seed_profile_is_the_seeds_mean_z_score_against_the_base():
    features, ids = _explain_table()
    base = explainable_features(features)
    assert "plan=gold" in base.column_names
    profile = seed_profile(base, ids[:3] + ["ghost"])
    assert profile.n_seeds == 3 and profile.no_spread == ["flat"]
    assert any("1 of 4 seeds are not in the features table" in n for n in profile.notes)
    # z = (seed mean - base mean) / base std (population std, NaN left out): the profile's lift units
    for name in ("spend", "visits", "rating", "plan=gold"):
        x = base[name].to_numpy(zero_copy_only=False).astype(float)
        ok = np.isfinite(x)
        expected = (x[:3].mean() - x[ok].mean()) / x[ok].std()
        assert profile.seed_z[profile.features.index(name)] == pytest.approx(expected)
    assert "flat" not in profile.features
    assert np.all(np.diff(np.abs(profile.seed_z)) <= 0)  # sorted by absolute size
    assert profile.features[0] == "spend"
    assert [d["feature"] for d in profile.top(2)] == profile.features[:2]
    with pytest.raises(UserInputError, match="none of the seeds"):
        seed_profile(base, ["ghost"])


def test_why_similar_lists_the_closest_distinctive_features():
    features, ids = _explain_table()
    base = explainable_features(features)
    profile = seed_profile(base, ids[:3])
    members = ["c0", "c2", "ghost"]
    why, notes = why_similar(base, members, profile, top_n=2, min_abs_z=0.5)
    assert why.type == WHY_TYPE and len(why) == 3
    distinctive = {f for f, z in zip(profile.features, profile.seed_z, strict=True) if abs(z) >= 0.5}
    z_of = dict(zip(profile.features, profile.seed_z, strict=True))
    rows = why.to_pylist()
    for member, listed in zip(members[:2], rows[:2], strict=True):
        x = base.filter(pc.equal(base["customer_id"], member))
        gaps = {}
        for f in distinctive:
            i = profile.features.index(f)
            zf = (x[f][0].as_py() - profile.base_mean[i]) / profile.base_std[i]
            if np.isfinite(zf):
                gaps[f] = zf - z_of[f]
        # the two smallest |gaps| (plan=gold and plan=basic tie: either may be named)
        assert [abs(e["gap"]) for e in listed] == pytest.approx(sorted(abs(g) for g in gaps.values())[:2])
        assert {e["feature"] for e in listed} <= distinctive
        for e in listed:
            assert e["gap"] == pytest.approx(gaps[e["feature"]]) and e["z"] == pytest.approx(gaps[e["feature"]]
                                                                                              + z_of[e["feature"]])
    assert "rating" not in [e["feature"] for e in rows[1]]  # c2 has no rating
    assert rows[2] == [] and any("1 audience member(s) are not in the features table" in n for n in notes)
    # seeds that look like the base: the closest features of all, said in a note
    _, loose = why_similar(base, members, profile, top_n=2, min_abs_z=50.0)
    assert any("no feature sets the seeds apart" in n for n in loose)
    with pytest.raises(UserInputError, match="'top_n' parameter"):
        why_similar(base, members, profile, top_n=0)


def test_identical_seeds_are_detected():
    V = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])
    assert seeds_identical(V[[0, 1]])
    assert not seeds_identical(V[[0, 2]])
    assert not seeds_identical(V[[0]])  # one seed is not "all identical"


def test_cpu_exact_index_keeps_one_copy_of_the_vectors_and_earlier_views_survive_add():
    from gpuseg.lookalike.index import _FaissStorage

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    ids = [f"c{i}" for i in range(300)]
    reference = LookalikeIndex("exact", "cosine", device="cpu").build(X, ids)
    assert not np.allclose(np.linalg.norm(X, axis=1), 1.0)  # copy=True leaves the caller's array alone
    own = X.copy()
    index = LookalikeIndex("exact", "cosine", device="cpu").build(own, ids, copy=False)
    assert np.allclose(np.linalg.norm(own, axis=1), 1.0, atol=1e-5)  # normalised in place
    # the index's vectors are faiss's own storage, not a second copy
    assert isinstance(index.vectors_.base, _FaissStorage) and not index.vectors_.flags.writeable
    assert np.array_equal(index.vectors_, reference.vectors_)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    assert all(np.array_equal(a, b) for a, b in zip(index.search(q, 7), reference.search(q, 7), strict=True))
    before = index.vectors_
    kept = before.copy()
    new = rng.normal(size=(50, 16)).astype(np.float32)
    index.add(new, [f"n{i}" for i in range(50)])
    reference.add(new, [f"n{i}" for i in range(50)])
    assert np.array_equal(before, kept)  # a view taken before the add still reads the old vectors
    assert index.ntotal == 350 and np.array_equal(index.vectors_, reference.vectors_)
    assert all(np.array_equal(a, b) for a, b in zip(index.search(q, 7), reference.search(q, 7), strict=True))
