"""Bounded stratified training samples, the compact event store, and the streamed encode."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gpuseg.data.schema import EVENTS
from gpuseg.jobs.journeys import _encode_everyone, _max_train_customers, _sample
from gpuseg.journey import JourneyEncoder, SequenceBuilder
from gpuseg.journey.sampling import journey_strata, length_bucket, stratified_sample, stratum_name
from gpuseg.journey.sequences import _RowIndex, count_events
from gpuseg.runtime.errors import ConfigError


def _population(n: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_events = rng.geometric(0.08, n)  # a long tail of long journeys
    y = (rng.random(n) < 0.2).astype(float)
    y[rng.random(n) < 0.1] = np.nan
    return n_events, y


def test_sample_is_bounded_and_keeps_every_stratum_share():
    n_events, y = _population()
    strata = journey_strata(n_events, y)
    rows = np.arange(len(strata)) * 3  # rows need not be 0..n-1
    chosen = stratified_sample(rows, strata, 2_000, seed=4)
    assert len(chosen) == 2_000 and len(np.unique(chosen)) == 2_000 and np.isin(chosen, rows).all()
    assert np.all(np.diff(chosen) > 0)
    picked = strata[np.searchsorted(rows, chosen)]
    for s in np.unique(strata):
        expected = np.mean(strata == s) * 2_000
        # proportional allocation with largest remainders: off by less than one customer
        assert abs(np.sum(picked == s) - expected) < 1.0, stratum_name(s, True)
    # a plain random sample of the same size misses the stratum shares by far more
    assert len(np.unique(strata)) > 15


def test_sample_is_deterministic_per_seed_and_stream():
    n_events, y = _population()
    strata = journey_strata(n_events, y)
    rows = np.arange(len(strata))
    a = stratified_sample(rows, strata, 500, seed=1)
    assert np.array_equal(a, stratified_sample(rows, strata, 500, seed=1))
    assert not np.array_equal(a, stratified_sample(rows, strata, 500, seed=2))
    assert not np.array_equal(a, stratified_sample(rows, strata, 500, seed=1, stream=1))


def test_no_bound_or_a_large_one_keeps_everyone_and_bad_bounds_are_config_errors():
    rows = np.array([5, 1, 3])
    strata = np.zeros(3, dtype=int)
    assert stratified_sample(rows, strata, None, seed=0).tolist() == [1, 3, 5]
    assert stratified_sample(rows, strata, 10, seed=0).tolist() == [1, 3, 5]
    for bad in (0, -3, True, "many"):
        with pytest.raises(ConfigError) as err:
            _max_train_customers(bad, None)
        assert err.value.config_key == "journey.max_train_customers"
    assert _max_train_customers(None, None) is None and _max_train_customers(7, None) == 7
    import torch

    assert _max_train_customers("auto", torch.device("cpu")) == 10_000
    assert _max_train_customers("auto", torch.device("cuda", 0)) == 1_000_000


def test_strata_names_and_buckets():
    assert length_bucket(np.array([1, 2, 3, 4, 7, 8, 100])).tolist() == [0, 1, 1, 2, 2, 3, 6]
    strata = journey_strata(np.array([1, 5, 5]), np.array([0.0, 1.0, np.nan]))
    assert [stratum_name(s, True) for s in strata] == ["1 event, label 0", "4-7 events, label 1",
                                                       "4-7 events, label unknown"]
    assert stratum_name(journey_strata(np.array([9]))[0], False) == "8-15 events"


def test_validation_and_test_are_bounded_in_the_split_proportion_from_their_own_sides():
    n_events, y = _population(10_000, seed=3)
    rng = np.random.default_rng(0)
    perm = rng.permutation(10_000)
    split = (np.sort(perm[:7000]), np.sort(perm[7000:8000]), np.sort(perm[8000:]))
    (train, val, test), info = _sample(split, n_events, y, max_len=100, max_train=700, seed=0)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    for part, side in zip((train, val, test), split, strict=True):
        assert np.isin(part, side).all()
    assert info["sampled"] and info["population"] == {"train": 7000, "validation": 1000, "test": 2000}
    assert sum(info["strata"]["train"].values()) == 700
    # unbounded: every customer of every side
    (train, val, test), info = _sample(split, n_events, y, max_len=100, max_train=None, seed=0)
    assert [len(p) for p in (train, val, test)] == [7000, 1000, 2000] and not info["sampled"]


def _events(rng, n_customers=60, n_rows=900, shuffled=True):
    base = datetime(2024, 1, 1)
    cust = rng.integers(0, n_customers + 5, n_rows)  # ids >= n_customers are unknown customers
    if not shuffled:
        cust = np.sort(cust)
    ts = [base + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 40, n_rows)]
    cols = [
        pa.array([f"k{c}" for c in cust]),
        pa.array(ts, type=EVENTS.field("timestamp").type),
        pa.array(rng.choice(["visit", "view", "cart", "purchase"], n_rows).tolist()),
        pa.array(np.where(rng.random(n_rows) < 0.5, rng.gamma(2, 20, n_rows), np.nan)),
        pa.array(rng.choice(["A", "B", None], n_rows).tolist()),
        pa.array(rng.choice(["web", "app"], n_rows).tolist()),
    ]
    table = pa.Table.from_arrays([c.cast(f.type) for c, f in zip(cols, EVENTS, strict=True)], schema=EVENTS)
    ids = [f"k{i}" for i in range(n_customers)][::-1] + ["none1", "none2", "none3"]  # 3 without any event
    return table, ids, int(np.datetime64(base + timedelta(days=30), "us").astype(np.int64))


@pytest.mark.parametrize("shuffled", [True, False])
def test_row_index_matches_index_in(shuffled):
    table, ids, _ = _events(np.random.default_rng(1), shuffled=shuffled)
    column = pa.concat_arrays([table["customer_id"].combine_chunks(), pa.array([None, "k1", None], pa.string())])
    expected = pc.index_in(column, value_set=pa.array(ids)).fill_null(-1).to_numpy()
    assert np.array_equal(_RowIndex(pa.array(ids)).rows(column), expected)
    assert np.array_equal(_RowIndex(pa.array(["a", "b", "a"])).rows(pa.array(["a", "b", "c"])), [0, 1, -1])


def test_store_pads_any_rows_like_the_one_shot_build_and_counts_match():
    table, ids, as_of = _events(np.random.default_rng(2))
    builder = SequenceBuilder(max_len=9, as_of=as_of, batch_size=128).fit(table, ids[:40])
    full = builder.transform(table, ids)
    store = builder.store(table, ids)
    assert int(store.offsets[-1]) == len(store.codes) == int(full.lengths.sum())
    rows = np.array([5, 0, 62, 17, 17, 3])
    part, ref = store.sequences(rows), full.subset(rows)
    for name in ("lengths", "n_events", "categorical", "continuous"):
        assert np.array_equal(getattr(part, name), getattr(ref, name)), name
    assert part.customer_ids.to_pylist() == ref.customer_ids.to_pylist()
    assert np.array_equal(count_events(table, ids, as_of=as_of, batch_size=100), full.n_events)
    starts = [start for start, _ in store.chunks(25)]
    assert starts == [0, 25, 50] and sum(len(s) for _, s in store.chunks(25)) == len(ids)


def test_streamed_encode_equals_a_one_shot_encode_and_covers_everyone(tmp_path):
    table, ids, as_of = _events(np.random.default_rng(5))
    builder = SequenceBuilder(max_len=12, as_of=as_of).fit(table, ids)
    store = builder.store(table, ids)
    seqs = store.sequences()
    enc = JourneyEncoder(hidden_size=16, out_dim=8, epochs=1, batch_size=16, encode_batch_size=7, num_threads=1, seed=0)
    enc.fit(seqs)
    path = tmp_path / "emb.parquet"
    info = _encode_everyone(path, enc, store, chunk=11)
    out = pq.read_table(path)
    assert out["customer_id"].to_pylist() == list(ids)
    X = np.stack(out["journey"].to_numpy(zero_copy_only=False))
    assert np.allclose(X, enc.transform(seqs), atol=1e-6)
    has = out["has_journey"].to_numpy(zero_copy_only=False)
    assert (~has).sum() == 3 and not X[~has].any() and (np.abs(X[has]).sum(1) > 0).all()
    assert out["n_events"].to_pylist() == seqs.n_events.tolist()
    assert info["sequences"] == int(has.sum()) and info["sequences_per_second"] > 0
