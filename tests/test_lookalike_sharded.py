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
