"""Benchmark: what the lookalike explanations cost beside the expansion itself.

Usage::

    python benchmarks/bench_lookalike_explain.py --quick   # a 100k-customer base
    python benchmarks/bench_lookalike_explain.py           # 100k and 1M

A random features table (``--features`` numeric columns plus one categorical column, as the
features job writes them) and a random 32-d customer matrix of the same base; 500 seeds drawn
from one planted group. Times, on the CPU, the seed-vs-base profile
(:func:`~gpuseg.lookalike.explain.seed_profile`), ``why_similar`` for the ``broad`` preset's
audience (10% of the base) and, for scale, the exact expansion of that audience
(:meth:`~gpuseg.lookalike.LookalikeIndex.expand`). Also checks that the planted group's
features come first in the seed profile. Writes
``benchmarks/results/lookalike_explain_cpu_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow as pa

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import library_versions, machine_info, result_path, utc_now, write_result

from gpuseg.lookalike import LookalikeIndex
from gpuseg.lookalike.explain import explainable_features, seed_profile, why_similar

PLANTED = 4  # features on which the seeds' group differs from the base


def _base(n: int, n_features: int, seed: int = 0) -> tuple[pa.Table, np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    group = rng.random(n) < 0.05
    X = rng.normal(size=(n, n_features))
    X[group, :PLANTED] += 1.5  # the group stands out on the first features
    ids = [f"C{i:08d}" for i in range(n)]
    cols = {"customer_id": ids, **{f"f{j:02d}": X[:, j] for j in range(n_features)},
            "plan": np.where(rng.random(n) < 0.3, "gold", "basic")}
    V = np.hstack([X[:, :8], rng.normal(size=(n, 24))]).astype(np.float32)
    seeds = [ids[i] for i in rng.choice(np.flatnonzero(group), 500, replace=False)]
    return pa.table(cols), V, ids, seeds


def _one(n: int, n_features: int, top_n: int) -> dict:
    table, V, ids, seeds = _base(n, n_features)
    base = explainable_features(table)
    t0 = time.perf_counter()
    profile = seed_profile(base, seeds)
    t_profile = time.perf_counter() - t0
    index = LookalikeIndex("exact", "cosine", device="cpu").build(V, ids)
    size = round(0.10 * n)
    t1 = time.perf_counter()
    audience = index.expand(seeds, size, mode="centroid", candidates="all")
    t_expand = time.perf_counter() - t1
    t2 = time.perf_counter()
    why, _ = why_similar(base, audience["customer_id"].to_pylist(), profile, top_n=top_n)
    t_why = time.perf_counter() - t2
    planted = {f"f{j:02d}" for j in range(PLANTED)}
    return {"n_customers": n, "n_features": len(profile.features), "audience_size": audience.num_rows,
            "top_n": top_n, "seconds_seed_profile": round(t_profile, 3), "seconds_why_similar": round(t_why, 3),
            "seconds_expand": round(t_expand, 3),
            "why_similar_per_million_members_s": round(t_why / audience.num_rows * 1e6, 2),
            "planted_features_first": set(profile.features[:PLANTED]) == planted,
            "seed_z_planted": [round(float(z), 3) for z in profile.seed_z[:PLANTED]],
            "mean_listed_features": float(np.mean([len(w) for w in why.to_pylist()[:1000]]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--features", type=int, default=45)
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    t0 = time.perf_counter()
    runs = [_one(n, args.features, args.top_n) for n in sizes]
    payload = {"benchmark": "lookalike_explain", "date": utc_now(), "quick": args.quick,
               "machine": machine_info("cpu"), "device": "cpu", "versions": library_versions("faiss"),
               "runs": runs, "seconds": round(time.perf_counter() - t0, 1)}
    path = write_result(result_path("lookalike_explain", "cpu", quick=args.quick, out=args.out), payload)
    print(json.dumps(runs, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
