"""Sharded exact lookalike search: 2 gloo ranks, each holding a shard, give one process's neighbours."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpuseg.lookalike.index import LookalikeIndex, merge_topk, search_sharded
from gpuseg.runtime import distributed as ddp

METRICS = ("ip", "cosine", "l2")


def _data(n=1000, d=16, q=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Q = rng.standard_normal((q, d)).astype(np.float32)
    return X, Q


def _worker(rank, world, init_file, X, Q, cases, out_dir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = {}
        for name, (bounds, metric, k) in cases.items():
            lo, hi = bounds[rank] if bounds else ddp.shard_bounds(len(X))
            index = LookalikeIndex("exact", metric, device="cpu").build(X[lo:hi], [f"c{i}" for i in range(lo, hi)])
            scores, rows = search_sharded(index, Q, k, offset=lo)
            results[f"{name}_scores"], results[f"{name}_rows"] = scores, rows
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
    finally:
        dist.destroy_process_group()


def test_two_ranks_find_the_single_process_neighbours(tmp_path):
    X, Q = _data()
    cases = {f"{metric}_even": (None, metric, 10) for metric in METRICS}
    # uneven shards, and k larger than the smaller shard: its short list is padded, then merged
    cases.update({f"{metric}_uneven": ([(0, 300), (300, len(X))], metric, 400) for metric in METRICS})
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), X, Q, cases, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    for name, (_, metric, k) in cases.items():
        single = LookalikeIndex("exact", metric, device="cpu").build(X, [f"c{i}" for i in range(len(X))])
        scores, rows = single.search(Q, k, return_rows=True)
        # every rank gets the same answer: the single-process neighbours, in the same order
        np.testing.assert_array_equal(r0[f"{name}_rows"], r1[f"{name}_rows"])
        np.testing.assert_array_equal(r0[f"{name}_rows"], rows, err_msg=name)
        np.testing.assert_allclose(r0[f"{name}_scores"], scores, rtol=1e-5, atol=1e-5, err_msg=name)


def test_merge_orders_by_score_then_row_with_missing_last():
    scores = np.array([[0.9, 0.5, -np.inf, 0.9, 0.7, 0.5]], np.float32)
    rows = np.array([[7, 2, -1, 3, 5, 1]])
    s, r = merge_topk(scores, rows, 5, descending=True)
    assert r.tolist() == [[3, 7, 5, 1, 2]] and s.tolist()[0] == pytest.approx([0.9, 0.9, 0.7, 0.5, 0.5])
    s, r = merge_topk(np.array([[2.0, 1.0, np.inf, 1.0]]), np.array([[4, 9, -1, 8]]), 4, descending=False)
    assert r.tolist() == [[8, 9, 4, -1]]


def test_single_process_shifts_rows_by_the_offset():
    X, Q = _data(n=50)
    index = LookalikeIndex("exact", "l2", device="cpu").build(X, [f"c{i}" for i in range(50)])
    _, rows = index.search(Q, 5, return_rows=True)
    _, shifted = search_sharded(index, Q, 5, offset=100)
    np.testing.assert_array_equal(shifted, rows + 100)


#: expansions asked of the sharded and the single-process index: (kwargs, seeds, exclude)
EXPANSIONS = {
    "max": ({"size": 60, "mode": "max"}, [3, 140, 620, 999], None),
    "mean_top_m": ({"size": 80, "mode": "mean_top_m", "top_m": 2}, [1, 2, 700, 701, 702], [5, 6, 800]),
    "centroid_threshold": ({"size": None, "threshold": 0.2, "mode": "centroid"}, [10, 510], None),
    "include_seeds": ({"size": 30, "mode": "max", "include_seeds": True}, [0, 999], [1, 998]),
    "index_candidates": ({"size": 40, "mode": "centroid", "candidates": "index"}, [42, 600], [43]),
    "capped": ({"size": 5000, "mode": "max"}, [7, 8], list(range(100, 400))),
    "empty": ({"size": 10, "threshold": 1e9, "mode": "max"}, [3, 4], None),  # nobody scores that: no shard keeps a row
}


def _for_metric(kwargs, metric):
    """An l2 score is minus a squared distance: its threshold is negative."""
    return {**kwargs, "threshold": -8.0} if metric == "l2" and kwargs.get("threshold") == 0.2 else kwargs


def _tied_base(n=1000, d=8, seed=1):
    """Vectors with many exact duplicates (as customers with the same features are in real data)."""
    rng = np.random.default_rng(seed)
    distinct = rng.standard_normal((n // 10, d)).astype(np.float32)
    return distinct[rng.integers(0, len(distinct), n)]


def _expand_worker(rank, world, init_file, X, metric, out_dir):
    from gpuseg.lookalike.sharded import ShardedIndex

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        ids = [f"c{i}" for i in range(len(X))]
        lo, hi = ddp.shard_bounds(len(X))
        index = ShardedIndex(LookalikeIndex("exact", metric, device="cpu").build(X[lo:hi], ids[lo:hi]), ids, lo)
        for name, (kwargs, seeds, exclude) in EXPANSIONS.items():
            kwargs = _for_metric(kwargs, metric)
            table = index.expand([ids[s] for s in seeds], exclude=None if exclude is None else [ids[e] for e in exclude],
                                 **kwargs)
            table.to_pandas().to_parquet(os.path.join(out_dir, f"{name}-rank{rank}.parquet"))
        np.save(os.path.join(out_dir, f"seeds-rank{rank}.npy"), index.vectors_of(np.array([999, 0, 500])))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("metric", METRICS)
def test_two_shards_expand_into_the_single_process_audience(tmp_path, metric):
    import pandas as pd

    X = _tied_base()
    mp.spawn(_expand_worker, args=(2, str(tmp_path / "init"), X, metric, str(tmp_path)), nprocs=2, join=True)
    ids = [f"c{i}" for i in range(len(X))]
    single = LookalikeIndex("exact", metric, device="cpu").build(X, ids)
    for name, (kwargs, seeds, exclude) in EXPANSIONS.items():
        kwargs = _for_metric(kwargs, metric)
        want = single.expand([ids[s] for s in seeds], exclude=None if exclude is None else [ids[e] for e in exclude],
                             **kwargs).to_pandas()
        assert (len(want) == 0) == (name == "empty"), name
        for rank in (0, 1):
            got = pd.read_parquet(tmp_path / f"{name}-rank{rank}.parquet")
            # the same customers in the same order, ties at the cut included (the base is full of them)
            assert got["customer_id"].tolist() == want["customer_id"].tolist(), (name, rank)
            assert got["nearest_seed"].tolist() == want["nearest_seed"].tolist(), (name, rank)
            np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-5, err_msg=name)
    # seed vectors come from whichever rank holds them, as the single index stores them
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"seeds-rank{rank}.npy"), single.vectors_of([999, 0, 500]))


def test_a_shard_must_be_a_slice_of_the_base_ids():
    from gpuseg.lookalike.sharded import ShardedIndex
    from gpuseg.runtime.validation import InputDataError

    X = _tied_base(n=20)
    local = LookalikeIndex("exact", "ip", device="cpu").build(X[:10], [f"c{i}" for i in range(10)])
    with pytest.raises(InputDataError, match="not rows 5..15"):
        ShardedIndex(local, [f"c{i}" for i in range(20)], 5)
    with pytest.raises(InputDataError, match="does not fit a base of 12"):
        ShardedIndex(local, [f"c{i}" for i in range(12)], 5)
    # outside a process group a shard at offset 0 over the whole base is the plain index
    whole = LookalikeIndex("exact", "ip", device="cpu").build(X, [f"c{i}" for i in range(20)])
    sharded = ShardedIndex(whole, [f"c{i}" for i in range(20)], 0)
    assert sharded.expand(["c1"], 5).equals(whole.expand(["c1"], 5))


def test_read_matrix_rows_reads_one_range_across_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpuseg.runtime.matrix import read_matrix, read_matrix_rows

    X = np.arange(300, dtype=np.float32).reshape(100, 3)
    table = pa.table({"customer_id": [f"c{i}" for i in range(100)], "a": X[:, 0], "b": X[:, 1], "c": X[:, 2]})
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=17)
    ids, whole, names = read_matrix(tmp_path / "m.parquet")
    for lo, hi in ((0, 100), (0, 17), (16, 35), (50, 51), (99, 100), (40, 40)):
        part_ids, part, part_names = read_matrix_rows(tmp_path / "m.parquet", lo, hi)
        assert part_names == names and part_ids.to_pylist() == ids.to_pylist()[lo:hi]
        np.testing.assert_array_equal(part, whole[lo:hi])
    with pytest.raises(Exception, match="outside"):
        read_matrix_rows(tmp_path / "m.parquet", 90, 101)
