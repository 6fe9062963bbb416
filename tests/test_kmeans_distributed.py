"""Data-parallel MiniBatchKMeans: 2 CPU processes (gloo) match a single-process fit."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import adjusted_rand_score

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.runtime import distributed as ddp

# n_init=5: both fits should reach the same optimum, so that seeding luck does not decide
PARAMS = {"n_clusters": 10, "batch_size": 256, "n_init": 5, "random_state": 0, "device": "cpu"}


def _blobs(n=8000, d=8, k=10, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10, 10, (k, d))
    stds = rng.uniform(1.0, 2.5, k)
    y = rng.integers(0, k, n)
    X = centers[y] + rng.standard_normal((n, d)) * stds[y, None]
    X[: n // 50] = rng.uniform(-12, 12, (n // 50, d))  # background noise
    return X.astype(np.float32), y


def _worker(rank, world, init_file, X, bounds, out_dir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)  # two processes share the cores
        lo, hi = bounds[rank]
        shard = X[lo:hi]
        assert ddp.is_distributed() and ddp.rank_and_world() == (rank, world)
        m = MiniBatchKMeans(**PARAMS).fit(shard)
        streamed = MiniBatchKMeans(**PARAMS)
        for batch in np.array_split(shard, 4):  # every rank makes the same number of calls
            streamed.partial_fit(batch)
        np.savez(
            os.path.join(out_dir, f"rank{rank}.npz"),
            centers=m.cluster_centers_, labels=m.labels_, inertia=m.inertia_,
            n_steps=m.n_steps_, stream_centers=streamed.cluster_centers_,
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process_quality(tmp_path):
    X, y = _blobs()
    bounds = [(0, 4600), (4600, len(X))]  # uneven shards exercise the padded gathers
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), X, bounds, str(tmp_path)), nprocs=2,
             join=True)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))

    # every rank ends with the same model, and reports the global inertia
    np.testing.assert_array_equal(r0["centers"], r1["centers"])
    np.testing.assert_array_equal(r0["stream_centers"], r1["stream_centers"])
    assert float(r0["inertia"]) == float(r1["inertia"]) and int(r0["n_steps"]) == int(r1["n_steps"])
    assert len(r0["labels"]) == 4600 and len(r1["labels"]) == len(X) - 4600

    single = MiniBatchKMeans(**PARAMS).fit(X)
    labels = np.concatenate([r0["labels"], r1["labels"]])
    d2 = ((X[:, None, :].astype(np.float64) - r0["centers"][None].astype(np.float64)) ** 2).sum(-1)
    assert (d2.argmin(1) == labels).mean() > 0.999  # each rank labels its own rows
    assert float(r0["inertia"]) == pytest.approx(d2.min(1).sum(), rel=1e-5)  # global inertia

    assert float(r0["inertia"]) <= 1.01 * single.inertia_
    assert adjusted_rand_score(y, labels) >= adjusted_rand_score(y, single.labels_) - 0.01
    assert adjusted_rand_score(y, labels) > 0.9
