"""Benchmark: ``gpuseg lookalike`` in one process against torchrun ranks that each hold a shard.

Usage::

    python benchmarks/bench_lookalike_sharded.py                     # 1M x 192, 1 and 2 processes
    python benchmarks/bench_lookalike_sharded.py --quick             # 100k x 64: about a minute
    python benchmarks/bench_lookalike_sharded.py --n 2000000 --dim 128 --ranks 1 2 4

It writes a synthetic ``fused.parquet`` (8 planted blobs, as ``bench_streaming_memory.py``) and
runs the job on it (``lookalike.input``: exact cosine index, 200 seeds, mode ``max``, an audience of
20,000 and the reach curve to 100,000, no explanations) once per process count, each run in a fresh
work dir under a parent that records the largest resident set of any process it waited for
(``RUSAGE_CHILDREN``: for torchrun, the largest rank). Each run rebuilds its index, and the runs
must return the same audience: the same customers in the same order, the same nearest seeds.

Writes ``benchmarks/results/lookalike_sharded_cpu_<date>[_quick].json`` with, per process count,
wall time, the largest process's peak RSS and the job's own index and expand seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# _common first: it puts the repository root on sys.path for the gpuseg import
from _common import library_versions, machine_info, result_path, utc_now, write_result

#: a parent that runs the command and prints the peak RSS (KiB) of the largest process it waited for
_MEASURE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def _synthesise(path: Path, n: int, dim: int) -> None:
    import pyarrow as pa

    from gpuseg.runtime.io import ParquetStreamWriter

    rng = np.random.default_rng(n)
    centres = rng.normal(size=(8, dim)).astype(np.float32)
    schema = pa.schema([("customer_id", pa.string()), ("fused", pa.list_(pa.float32(), dim))])
    with ParquetStreamWriter(path, schema) as table:
        for s in range(0, n, 65536):
            e = min(n, s + 65536)
            x = centres[rng.integers(0, 8, e - s)] + rng.normal(size=(e - s, dim)).astype(np.float32)
            table.write(pa.table({"customer_id": pa.array([f"c{i:08d}" for i in range(s, e)]),
                                  "fused": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(ranks: int, source: Path, work: Path, seeds: list[str], size: int) -> dict:
    args = ["lookalike", f"paths.work_dir={work}", "progress=false", "device=cpu", f"lookalike.input={source}",
            f"lookalike.seeds=[{','.join(seeds)}]", f"lookalike.size={size}", "lookalike.mode=max",
            "lookalike.explain.top_n=0", "lookalike.index.rebuild=true"]
    if ranks == 1:
        job = [sys.executable, "-m", "gpuseg", *args]
    else:
        job = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--rdzv-backend",
               "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "gpuseg", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks)), "GLOO_SOCKET_IFNAME": "lo"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *job], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{ranks} process(es) failed:\n{proc.stderr[-3000:]}")
    peak = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_KIB")))
    metrics = json.loads((work / "lookalike" / "metrics.json").read_text())
    return {"ranks": ranks, "wall_seconds": round(wall, 2), "peak_rss_mib_largest_process": round(peak / 1024, 1),
            "job_seconds": metrics["seconds"], "backend_used": metrics["backend_used"],
            "audience_size": metrics["audience_size"], "world_size": metrics["world_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="100k x 64")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.n, args.dim = 100_000, 64
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench-lookalike-sharded-") as tmp:
        root = Path(tmp)
        source = root / "fused.parquet"
        t0 = time.perf_counter()
        _synthesise(source, args.n, args.dim)
        print(f"wrote {args.n} x {args.dim} in {time.perf_counter() - t0:.1f}s")
        rng = np.random.default_rng(0)
        seeds = [f"c{i:08d}" for i in np.sort(rng.choice(args.n, 200, replace=False))]
        runs, audiences = [], {}
        for ranks in args.ranks:
            work = root / f"work{ranks}"
            runs.append(_run(ranks, source, work, seeds, args.size))
            audiences[ranks] = pq.read_table(work / "lookalike" / "audience.parquet",
                                             columns=["customer_id", "nearest_seed", "score"])
            print(json.dumps(runs[-1]))
        first = audiences[args.ranks[0]]
        same = {str(r): bool(a["customer_id"].equals(first["customer_id"])
                             and a["nearest_seed"].equals(first["nearest_seed"])) for r, a in audiences.items()}
        largest = {str(r["ranks"]): r["peak_rss_mib_largest_process"] for r in runs}
    payload = {
        "benchmark": "lookalike_sharded", "date": utc_now(), "machine": machine_info(), "device": "cpu",
        "versions": library_versions(),
        "config": {"n_customers": args.n, "dim": args.dim, "seeds": 200, "size": args.size, "mode": "max",
                   "backend": "exact", "metric": "cosine", "matrix_mib": round(args.n * args.dim * 4 / 2**20, 1)},
        "runs": runs,
        "same_audience_as_first": same,
        "peak_ratio_to_one_process": {r: round(v / largest[str(args.ranks[0])], 3) for r, v in largest.items()},
    }
    if not all(same.values()):
        payload["error"] = "the sharded audience differs from one process's"
    path = write_result(result_path("lookalike_sharded", "cpu", args.quick, args.out), payload)
    print(f"wrote {path}")
    if not all(same.values()):
        raise SystemExit(payload["error"])


if __name__ == "__main__":
    main()
