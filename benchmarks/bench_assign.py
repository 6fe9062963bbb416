"""Speed of ``gpuseg assign``'s streaming assignment with hysteresis, and of the whole job.

Two measurements, both in the result JSON:

* ``assignment``: :func:`gpuseg.dynamics.assign_stream` on an ``n x d`` float32 matrix (1M x 64
  by default, the size of a fused matrix with PCA) against ``k`` trained centres, with every
  customer given a previous segment (so the hysteresis path runs for all): customers/s.
* ``end_to_end``: the ``gpuseg assign`` job (validate, features, journeys, fuse, assign, drift)
  on a small synthetic project, timed after a training run on the same data.

    python benchmarks/bench_assign.py [--n 1000000] [--d 64] [--k 20] [--device auto] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import library_versions, machine_info, result_path, sync, utc_now, write_result

from gpuseg.cluster import MiniBatchKMeans  # noqa: E402
from gpuseg.dynamics import assign_stream  # noqa: E402
from gpuseg.runtime.device import resolve_device  # noqa: E402


def _assignment(n: int, d: int, k: int, device: torch.device, repeats: int, chunk_rows: int) -> dict:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, d)).astype(np.float32) * 3
    train = centres[rng.integers(0, k, 20_000)] + rng.normal(size=(20_000, d)).astype(np.float32)
    model = MiniBatchKMeans(n_clusters=k, random_state=0, device=device, n_init=1).fit(train)
    labels = rng.integers(0, k, n)
    x = torch.from_numpy(centres[labels] + rng.normal(size=(n, d)).astype(np.float32)).to(device)
    previous = rng.integers(0, k, n)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = assign_stream(model, x, previous, margin=0.1, confirm_runs=2, chunk_rows=chunk_rows)
        sync(device)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"what": "assign_stream (hysteresis for every customer) on an n x d float32 matrix with k trained "
                    "centres, in chunks", "n": n, "d": d, "k": k, "chunk_rows": chunk_rows,
            "seconds": [round(t, 4) for t in times], "best_seconds": round(best, 4),
            "customers_per_s": round(n / best, 1), "held_share": round(float(out.held.mean()), 4)}


def _end_to_end(n_customers: int) -> dict:
    from hydra import compose, initialize_config_module

    from gpuseg.jobs import assign, features, fuse, generate, journeys, segment, validate

    work = Path(tempfile.mkdtemp(prefix="bench_assign_")) / "work"

    def cfg(job, *overrides):
        device = ["device=cpu"] if job in ("journeys", "fuse", "segment", "assign") else []
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false",
                                                       f"data.generator.n_customers={n_customers}", *device,
                                                       *overrides])
    try:
        generate.run(cfg("generate"))
        validate.run(cfg("validate"))
        features.run(cfg("features"))
        journeys.run(cfg("journeys", "journey.epochs=1"))
        fuse.run(cfg("fuse", "fuse.blocks.text.enabled=false"))
        segment.run(cfg("segment", "segment.n_clusters=8", "segment.confidence.n_bootstrap=1"))
        t0 = time.perf_counter()
        result = assign.run(cfg("assign", "data.as_of=2025-02-15"))
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)
    return {"what": "gpuseg assign job (validate + features + journeys + fuse + assign + drift; no text block) "
                    "on synthetic data at a later as_of, CPU", "n_customers": result["n_customers"],
            "seconds": round(seconds, 3), "customers_per_s": round(result["n_customers"] / seconds, 1),
            "assignment_customers_per_s": result["customers_per_s"], "n_changed": result["n_changed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--e2e-customers", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="100k customers, 500 end to end")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.n, args.e2e_customers, args.repeats = 100_000, 500, 2
    device = resolve_device(args.device, key="--device")
    result = {
        "benchmark": "assign",
        "date": utc_now(),
        "device": str(device),
        "device_requested": args.device,
        "machine": machine_info(device),
        "versions": library_versions(),
        "assignment": _assignment(args.n, args.d, args.k, device, args.repeats, args.chunk_rows),
        "end_to_end": _end_to_end(args.e2e_customers) if args.e2e_customers else None,
    }
    out = write_result(result_path("assign", device, args.quick, args.out), result)
    print(f"assign: {result['assignment']['customers_per_s']:.0f} customers/s ({device}); end to end "
          f"{(result['end_to_end'] or {}).get('customers_per_s')} customers/s; {out}")


if __name__ == "__main__":
    main()
