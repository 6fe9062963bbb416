"""``gpuseg fuse`` then ``gpuseg segment`` / ``gpuseg lookalike`` (expansion presets, explanations,
degenerate cases) on a small synthetic project."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuseg.fusion import BlockFuser, block_from_table
from gpuseg.jobs import features, fuse, generate, journeys, lookalike, segment, text, validate
from gpuseg.lookalike.explain import explainable_features
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.text.model_path import default_model_dir

pytestmark = pytest.mark.skipif(default_model_dir() is None, reason="gpuseg[models] is not installed")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """1000 synthetic customers with every block (journeys trained briefly) and the fused matrix."""
    from hydra import compose, initialize_config_module

    work = tmp_path_factory.mktemp("fuseproj") / "work"

    def cfg(job, *overrides):
        device = ["device=cpu"] if job in ("text", "journeys", "fuse", "segment", "lookalike") else []
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false",
                                                       "data.generator.n_customers=1000", *device, *overrides])

    generate.run(cfg("generate"))
    validate.run(cfg("validate"))
    features.run(cfg("features"))
    journeys.run(cfg("journeys", "journey.epochs=3"))
    text.run(cfg("text", "text.num_threads=1"))
    result = fuse.run(cfg("fuse"))
    return work, cfg, result


def test_fuse_writes_every_customer_and_a_reusable_transform(project):
    work, _, result = project
    out = work / "fuse"
    customers = pq.read_table(work / "validated" / "customers.parquet")["customer_id"].to_pylist()
    table = pq.read_table(out / "fused.parquet")
    assert table["customer_id"].to_pylist() == customers
    X = np.stack(table["fused"].to_numpy(zero_copy_only=False))
    mm = np.load(out / "fused.npy", mmap_mode="r")
    np.testing.assert_array_equal(mm, X)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["blocks"]) == {"tabular", "text", "journey"}
    assert [b["variance_share"] for b in metrics["blocks"].values()] == pytest.approx([1 / 3] * 3)
    assert metrics["blocks"]["text"]["n_columns"] == 385  # all_mean + has_text
    assert result["fused_path"] == str(out / "fused.parquet")
    # the saved transform alone reproduces the fused matrix from the upstream blocks
    fuser = BlockFuser.load(out / "transform", device="cpu")
    blocks = {"tabular": block_from_table(pq.read_table(work / "features" / "matrix.parquet")),
              "text": block_from_table(pq.read_table(work / "text" / "embeddings.parquet"),
                                       ["all_mean", "has_text"]),
              "journey": block_from_table(pq.read_table(work / "journeys" / "embeddings.parquet"),
                                          ["journey", "has_journey"])}
    _, again = fuser.transform(blocks, ids=customers)
    np.testing.assert_allclose(again, X, atol=1e-5)
    assert not list(out.rglob("*.pkl"))


def test_segment_reads_the_fused_matrix(project):
    work, cfg, _ = project
    result = segment.run(cfg("segment", "segment.n_clusters=9", "segment.confidence.n_bootstrap=1"))
    meta = json.loads((work / "segment" / "segmentation.json").read_text())
    assert meta["input"].endswith("fuse/fused.parquet") and result["n_clusters"] == 9


def _private_copy(work, tmp_path):
    """A copy of the project's upstream artifacts, so a test can re-run fuse without touching the fixture."""
    mine = tmp_path / "work"
    for name in ("validated", "features", "text", "journeys"):
        shutil.copytree(work / name, mine / name)
    return mine


def test_fuse_options_and_missing_blocks(project, tmp_path, caplog):
    work, cfg, _ = project
    mine = _private_copy(work, tmp_path)
    here = f"paths.work_dir={mine}"
    with caplog.at_level(logging.WARNING, logger="gpuseg.jobs.fuse"):
        res = fuse.run(cfg("fuse", here, f"fuse.blocks.text.path={tmp_path}/none.parquet", "fuse.pca_components=16",
                           "fuse.l2_normalize=true", "fuse.blocks.journey.weight=3"))
    assert "block 'text' skipped" in caplog.text
    assert res["variance_shares"] == pytest.approx({"tabular": 0.25, "journey": 0.75})
    X = np.load(mine / "fuse" / "fused.npy")
    assert X.shape == (1000, 16)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    # the 16 columns are the top principal components of the unreduced fused matrix
    fuse.run(cfg("fuse", here, f"fuse.blocks.text.path={tmp_path}/none.parquet", "fuse.blocks.journey.weight=3"))
    full = np.load(mine / "fuse" / "fused.npy").astype(np.float64)
    fuse.run(cfg("fuse", here, f"fuse.blocks.text.path={tmp_path}/none.parquet", "fuse.pca_components=16",
                 "fuse.blocks.journey.weight=3"))
    reduced = np.load(mine / "fuse" / "fused.npy").astype(np.float64)
    centred = full - full.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(reduced), np.abs(centred @ vt[:16].T), atol=2e-3)
    assert res["explained_variance"] == pytest.approx((sv[:16] ** 2).sum() / (sv ** 2).sum(), abs=1e-3)
    with pytest.raises(UserInputError) as err:
        fuse.run(cfg("fuse", here, f"fuse.blocks.tabular.path={tmp_path}/none.parquet"))
    assert err.value.config_key == "fuse.blocks.tabular.path"
    with pytest.raises(UserInputError) as err:
        fuse.run(cfg("fuse", here, "fuse.blocks.text.columns=[nope]"))
    assert err.value.config_key == "fuse.blocks.text.columns" and "all_mean" in str(err.value)
    # the shared project's fused matrix was never touched
    np.testing.assert_array_equal(np.load(work / "fuse" / "fused.npy"),
                                  np.stack(pq.read_table(work / "fuse" / "fused.parquet")["fused"].to_numpy(
                                      zero_copy_only=False)))


def test_persona_seeds_expand_to_a_pure_audience(project):
    work, cfg, _ = project
    truth = pq.read_table(work / "data" / "ground_truth.parquet").to_pandas().set_index("customer_id")
    persona = "high_value_loyalist"
    members = truth.index[truth["persona"] == persona].to_numpy()
    seeds = np.random.default_rng(0).choice(members, 15, replace=False).tolist()
    size = len(members) // 2
    result = lookalike.run(cfg("lookalike", f"lookalike.seeds=[{','.join(seeds)}]", f"lookalike.size={size}"))
    audience = pq.read_table(result["audience_path"]).to_pandas()
    assert audience.columns.tolist() == ["rank", "customer_id", "score", "nearest_seed", "nearest_seed_score",
                                         "is_seed", "why_similar"]
    assert not audience["is_seed"].any()  # lookalike.include_seeds=false is the default
    assert len(audience) == size and audience["rank"].tolist() == list(range(1, size + 1))
    assert not set(audience["customer_id"]) & set(seeds) and set(audience["nearest_seed"]) <= set(seeds)
    assert (np.diff(audience["score"]) <= 0).all()
    purity = (truth.loc[audience["customer_id"], "persona"] == persona).mean()
    assert purity >= 0.9, purity
    curve = json.loads((work / "lookalike" / "reach_curve.json").read_text())["curves"]["audience"]
    assert curve["size"][-1] > size and np.all(np.diff(curve["min_score"]) <= 1e-6)
    assert (work / "lookalike" / "reach_curve.svg").read_text().startswith("<svg")
    assert "IndexFlatIP" in result["backend_used"] and not result["index_reused"]
    # the second run reuses the saved index
    again = lookalike.run(cfg("lookalike", f"lookalike.seeds=[{','.join(seeds)}]", f"lookalike.size={size}"))
    assert again["index_reused"]
    assert pq.read_table(again["audience_path"]).equals(pq.read_table(result["audience_path"]))


def test_lookalike_seed_file_queries_exclusion_and_errors(project, tmp_path, caplog):
    from conftest import write_table

    work, cfg, _ = project
    ids = pq.read_table(work / "validated" / "customers.parquet")["customer_id"].to_pylist()
    seeds = write_table(tmp_path / "seeds.csv", {"customer_id": ids[:6], "query": ["a"] * 3 + ["b"] * 3})
    segment.run(cfg("segment", "segment.n_clusters=4", "segment.confidence.n_bootstrap=1"))
    seg = pq.read_table(work / "segment" / "segments.parquet").to_pandas()
    res = lookalike.run(cfg("lookalike", f"lookalike.seeds={seeds}", "lookalike.size=50", "lookalike.mode=max",
                            "lookalike.exclude_segment=0", "lookalike.index.backend=hnsw"))
    audience = pq.read_table(res["audience_path"]).to_pandas()
    assert sorted(audience["query"].unique()) == ["a", "b"] and (audience.groupby("query").size() == 50).all()
    assert not set(audience["customer_id"]) & set(seg.loc[seg["segment"] == 0, "customer_id"])
    assert "HNSW" in res["backend_used"]
    with pytest.raises(UserInputError, match="not in the index: 'ghost'") as err:
        lookalike.run(cfg("lookalike", "lookalike.seeds=[ghost]", "lookalike.size=5"))
    assert err.value.config_key == "lookalike.seeds"
    with pytest.raises(UserInputError, match="empty"):
        lookalike.run(cfg("lookalike", "lookalike.seeds=[]", "lookalike.size=5"))
    with pytest.raises(UserInputError, match="lookalike.size"):
        lookalike.run(cfg("lookalike", f"lookalike.seeds=[{ids[0]}]"))
    with caplog.at_level(logging.WARNING, logger="gpuseg.jobs.lookalike"):
        res = lookalike.run(cfg("lookalike", f"lookalike.seeds=[{ids[0]},{ids[1]}]", "lookalike.size=5000"))
    assert res["audience_size"] == 998 and "capped at 998" in caplog.text


def test_the_index_cache_is_rebuilt_when_its_source_rows_change(project, tmp_path):
    work, cfg, _ = project
    source = tmp_path / "matrix.parquet"
    table = pq.read_table(work / "fuse" / "fused.parquet")
    pq.write_table(table, source)
    seeds = table["customer_id"].to_pylist()[:3]
    args = (f"lookalike.input={source}", f"lookalike.seeds=[{','.join(seeds)}]", "lookalike.size=20",
            f"paths.work_dir={tmp_path / 'w'}")
    first = lookalike.run(cfg("lookalike", *args))
    assert not first["index_reused"]
    assert lookalike.run(cfg("lookalike", *args))["index_reused"]
    # the same rows under shuffled ids: same size, other content -> a new index, not the old one
    ids = table["customer_id"].to_pylist()
    shuffled = table.set_column(0, "customer_id", pa.array(ids[1:] + ids[:1]))
    pq.write_table(shuffled, source)
    again = lookalike.run(cfg("lookalike", *args))
    assert not again["index_reused"]


def test_expansion_preset_explains_the_audience(project):
    work, cfg, _ = project
    truth = pq.read_table(work / "data" / "ground_truth.parquet").to_pandas().set_index("customer_id")
    seeds = truth.index[truth["persona"] == "high_value_loyalist"][:12].tolist()
    res = lookalike.run(cfg("lookalike", f"lookalike.seeds=[{','.join(seeds)}]", "lookalike.expansion=balanced",
                            "lookalike.explain.top_n=3"))
    assert res["size"] == 50 and res["audience_size"] == 50 and res["expansion"] == "balanced"  # 5% of 1000
    assert res["expansion_sizes"] == {"narrow": 25, "balanced": 50, "broad": 100}
    audience = pq.read_table(res["audience_path"])
    assert not set(audience["customer_id"].to_pylist()) & set(seeds)
    # the seed-vs-base features are the seeds' mean z-scores against the whole base, largest first
    metrics = json.loads((work / "lookalike" / "metrics.json").read_text())
    top = metrics["queries"]["audience"]["seed_vs_base"]
    assert len(top) == 3 and abs(top[0]["seed_z"]) >= abs(top[1]["seed_z"]) >= abs(top[2]["seed_z"])
    # the explained features: the features table and the profile's 0/1 indicators ("plan=basic")
    features = explainable_features(pq.read_table(work / "features" / "features.parquet")).to_pandas()
    features = features.set_index("customer_id")
    for entry in top:
        x = features[entry["feature"]]
        assert entry["seed_z"] == pytest.approx((x.loc[seeds].mean() - x.mean()) / x.std(ddof=0), abs=1e-3)
    # every member says why, in the same units: its z-score and its gap to the seeds' mean z-score
    seed_z = {e["feature"]: e["seed_z"] for e in top}
    member = audience["customer_id"][0].as_py()
    why = audience["why_similar"][0].as_py()
    assert 1 <= len(why) <= 3 and [abs(w["gap"]) for w in why] == sorted(abs(w["gap"]) for w in why)
    for w in why:
        x = features[w["feature"]]
        assert w["z"] == pytest.approx((x.loc[member] - x.mean()) / x.std(ddof=0), abs=1e-6)
        if w["feature"] in seed_z:
            assert w["gap"] == pytest.approx(w["z"] - seed_z[w["feature"]], abs=1e-3)
    # the synthetic data has constant share_*_other columns: no z-score, said in a note
    assert any("zero spread" in n and "share_event_other" in n for n in metrics["notes"])
    # the reach curve covers every preset, and says the similarity each one takes
    curve = json.loads((work / "lookalike" / "reach_curve.json").read_text())["curves"]["audience"]
    assert curve["size"][-1] >= 100 and set(curve["presets"]) == {"narrow", "balanced", "broad"}
    mins = [curve["presets"][k]["min_score"] for k in ("narrow", "balanced", "broad")]
    assert mins[0] >= mins[1] >= mins[2]
    assert curve["presets"]["balanced"]["min_score"] == pytest.approx(audience["score"][-1].as_py())
    assert metrics["queries"]["audience"]["reach"]["chosen"]["size"] == 50


def test_lookalike_how_many_errors(project):
    work, cfg, _ = project
    seeds = "lookalike.seeds=[" + ",".join(
        pq.read_table(work / "validated" / "customers.parquet")["customer_id"].to_pylist()[:2]) + "]"
    with pytest.raises(ConfigError, match="lookalike.expansion=narrow and lookalike.size=10") as err:
        lookalike.run(cfg("lookalike", seeds, "lookalike.expansion=narrow", "lookalike.size=10"))
    assert err.value.config_key == "lookalike.expansion"
    with pytest.raises(ConfigError, match="one of \\['balanced', 'broad', 'narrow'\\]"):
        lookalike.run(cfg("lookalike", seeds, "lookalike.expansion=huge"))
    with pytest.raises(ConfigError, match="lookalike.expansion_shares.broad"):
        lookalike.run(cfg("lookalike", seeds, "lookalike.expansion=broad", "lookalike.expansion_shares.broad=2"))
    with pytest.raises(ConfigError, match="lookalike.include_seeds"):
        lookalike.run(cfg("lookalike", seeds, "lookalike.size=5", "lookalike.include_seeds=maybe"))


def test_included_seeds_and_degenerate_cases_are_said(project, tmp_path, caplog):
    work, cfg, _ = project
    table = pq.read_table(work / "fuse" / "fused.parquet")
    ids = table["customer_id"].to_pylist()
    vectors = table["fused"].to_pylist()
    vectors[1] = vectors[0]  # two customers with the same vector
    source = tmp_path / "matrix.parquet"
    pq.write_table(table.set_column(1, "fused", pa.array(vectors, table.schema.field("fused").type)), source)
    args = (f"lookalike.input={source}", f"lookalike.seeds=[{ids[0]},{ids[1]}]", "lookalike.mode=max")
    with caplog.at_level(logging.WARNING, logger="gpuseg.jobs.lookalike"):
        res = lookalike.run(cfg("lookalike", *args, "lookalike.size=10", "lookalike.include_seeds=true"))
    audience = pq.read_table(res["audience_path"]).to_pandas()
    assert len(audience) == 10 and set(audience.loc[audience["is_seed"], "customer_id"]) == {ids[0], ids[1]}
    assert audience["rank"][audience["is_seed"]].max() <= 2  # each is its own nearest seed
    assert any("same vector" in n for n in res["notes"]) and "same vector" in caplog.text
    # a threshold that leaves fewer than asked, and one that leaves nobody
    few = lookalike.run(cfg("lookalike", *args, "lookalike.size=500", "lookalike.threshold=0.9"))
    assert few["audience_size"] < 500 and any(f"leaves {few['audience_size']} of the 500" in n for n in few["notes"])
    none = lookalike.run(cfg("lookalike", *args, "lookalike.threshold=1.5"))
    assert none["audience_size"] == 0 and any("the audience is empty" in n for n in none["notes"])
    assert json.loads((work / "lookalike" / "reach_curve.json").read_text())["curves"]["audience"]["size"][-1] >= 100
    # no features table (a work directory holding only the matrix): said, and why_similar is null
    alone = lookalike.run(cfg("lookalike", *args, "lookalike.size=5", f"paths.work_dir={tmp_path / 'w'}"))
    assert any("no features table" in n for n in alone["notes"])
    assert pq.read_table(alone["audience_path"])["why_similar"].null_count == 5
    off = lookalike.run(cfg("lookalike", *args, "lookalike.size=5", "lookalike.explain.top_n=0"))
    assert "why_similar" not in pq.read_table(off["audience_path"]).column_names


def test_lookalike_page_shows_the_reach_the_seed_features_and_why_members_are_similar(project, tmp_path):
    import html as html_lib
    import re

    from conftest import headless_chromium

    work, cfg, _ = project
    truth = pq.read_table(work / "data" / "ground_truth.parquet").to_pandas().set_index("customer_id")
    seeds = truth.index[truth["persona"] == "deal_hunter"][:10].tolist()
    res = lookalike.run(cfg("lookalike", f"lookalike.seeds=[{','.join(seeds)}]", "lookalike.expansion=narrow"))
    page = (work / "lookalike" / "report.html").read_text()
    assert res["report_path"] == str(work / "lookalike" / "report.html")
    assert "<script" not in page and "<svg" in page
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", page))
    metrics = json.loads((work / "lookalike" / "metrics.json").read_text())
    query = metrics["queries"]["audience"]
    for name, point in query["reach"]["presets"].items():  # every preset's size in the reach table
        assert re.search(rf"{name}\s+{point['size']:,}\s+{point['reached']:,}", text)
    for feature in query["seed_vs_base"]:
        assert feature["feature"] in text
    first = pq.read_table(res["audience_path"]).slice(0, 1).to_pylist()[0]
    assert first["customer_id"] in text and first["why_similar"][0]["feature"] in text
    _, page_lines = headless_chromium(tmp_path / "profile", "--dump-dom", (work / "lookalike" / "report.html").as_uri())
    assert page_lines == []
