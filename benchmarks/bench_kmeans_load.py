"""gpuseg.MiniBatchKMeans vs scikit-learn MiniBatchKMeans on a CPU shared with busy processes.

Usage::

    python benchmarks/bench_kmeans_load.py                    # 500k x 64, k=100, 3 repeats
    python benchmarks/bench_kmeans_load.py --n 100000 --repeats 2 --before-repeats 1   # quick

gpuseg issue 12: with the cores shared, gpuseg's default fit slowed 20x (torch's spinning
OpenMP threads stall each other) while scikit-learn slowed 4.5x. This script times, on the same
data (``bench_kmeans.make_data``: Gaussian blobs + 5 % background noise), each library's
default fit as ``bench_kmeans.py`` does (gpuseg: batch 4096, early stopping, 2 Lloyd passes,
labels; scikit-learn: its defaults, batch 1024), in two conditions:

- ``quiet``: nothing started by the script (the machine may still be busy with other work:
  the load average and the probe are recorded per run);
- ``busy``: ``--busy`` processes spinning ``while True: pass`` (default: one per available
  core) for the whole condition.

Methods: ``gpuseg`` (``n_threads=None``, threads chosen per phase), ``gpuseg_before``
(``n_threads="torch"``: torch's own thread count everywhere, the behaviour before the fix) and
``sklearn_mbk``. Conditions alternate within every repeat and the method order rotates, so slow
drifts of the background load hit every method alike; medians and ratios (not absolute times)
are the result. Written to ``benchmarks/results/kmeans_load_cpu_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from _common import library_versions, machine_info, result_path, utc_now, write_result  # isort: skip
from bench_kmeans import make_data  # isort: skip

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.cluster import _threads as thr

SPIN = "while True: pass"


def start_spinners(n):
    procs = [subprocess.Popen([sys.executable, "-S", "-c", SPIN]) for _ in range(n)]
    time.sleep(0.5)  # let them reach the loop
    return procs


def stop_spinners(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def fit_gpuseg(X, X_host, k, seed, n_threads):
    model = MiniBatchKMeans(k, random_state=seed, device="cpu", n_threads=n_threads)
    t = time.perf_counter()
    model.fit(X)
    wall = time.perf_counter() - t
    return wall, {"inertia": float(model.inertia_), "n_steps": int(model.n_steps_)}


def fit_sklearn(X, X_host, k, seed):
    from sklearn.cluster import MiniBatchKMeans as SkMBK

    model = SkMBK(k, random_state=seed)
    t = time.perf_counter()
    model.fit(X_host)
    wall = time.perf_counter() - t
    return wall, {"inertia": float(model.inertia_), "n_steps": int(model.n_steps_)}


METHODS = {
    "gpuseg": lambda X, Xh, k, s: fit_gpuseg(X, Xh, k, s, None),
    "gpuseg_before": lambda X, Xh, k, s: fit_gpuseg(X, Xh, k, s, thr.TORCH),
    "sklearn_mbk": fit_sklearn,
}


def _median(runs):
    return float(np.median([r["wall_s"] for r in runs])) if runs else None


def _ratio(a, b):
    return a / b if a and b else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="runs of gpuseg and sklearn per condition")
    p.add_argument("--before-repeats", type=int, default=1,
                   help="runs of gpuseg_before per condition (slow under load; 0 skips it)")
    p.add_argument("--busy", type=int, default=thr.available_cores(),
                   help="spinning processes in the busy condition (default: available cores)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    X, _ = make_data(args.n, args.d, args.k, args.seed, args.noise, torch.device("cpu"))
    X_host = X.numpy()
    runs = {c: {m: [] for m in METHODS} for c in ("quiet", "busy")}
    result = {
        "benchmark": "kmeans_load",
        "date": utc_now(),
        "machine": {**machine_info("cpu"), "available_cores": thr.available_cores(),
                    "load_average_at_start": list(os.getloadavg()),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "device": "cpu",
        "versions": library_versions("sklearn"),
        "data": {"n": args.n, "d": args.d, "k": args.k, "noise": args.noise, "seed": args.seed,
                 "kind": "gaussian blobs + uniform background noise (bench_kmeans.make_data)"},
        "settings": {"repeats": args.repeats, "before_repeats": args.before_repeats,
                     "busy_processes": args.busy, "spinner": SPIN,
                     "gpuseg": "MiniBatchKMeans(k, random_state=seed, device='cpu') defaults",
                     "sklearn": "sklearn.cluster.MiniBatchKMeans(k, random_state=seed) defaults"},
        "method_notes": __doc__.split("in two conditions:")[1].split("Written to")[0].strip(),
    }
    names = list(METHODS)
    for rep in range(args.repeats):
        for cond in ("quiet", "busy") if rep % 2 == 0 else ("busy", "quiet"):
            procs = start_spinners(args.busy) if cond == "busy" else []
            try:
                order = names[rep % len(names):] + names[: rep % len(names)]
                for name in order:
                    if name == "gpuseg_before" and rep >= args.before_repeats:
                        continue
                    probe = thr.busy_elsewhere()
                    wall, info = METHODS[name](X, X_host, args.k, args.seed)
                    runs[cond][name].append({"repeat": rep, "wall_s": wall, **info,
                                             "busy_probe_before": probe,
                                             "load_average": list(os.getloadavg())})
                    print(f"[load] rep {rep} {cond:5s} {name:13s} {wall:7.2f} s "
                          f"(probe {probe})", file=sys.stderr, flush=True)
            finally:
                stop_spinners(procs)

    summary = {}
    for cond, by_method in runs.items():
        med = {m: _median(r) for m, r in by_method.items()}
        summary[cond] = {
            "median_wall_s": med,
            "sklearn_over_gpuseg": _ratio(med["sklearn_mbk"], med["gpuseg"]),
            "sklearn_over_gpuseg_before": _ratio(med["sklearn_mbk"], med["gpuseg_before"]),
            "gpuseg_before_over_gpuseg": _ratio(med["gpuseg_before"], med["gpuseg"]),
        }
    slowdown = {m: _ratio(summary["busy"]["median_wall_s"][m], summary["quiet"]["median_wall_s"][m])
                for m in METHODS}
    busy_ratio = summary["busy"]["sklearn_over_gpuseg"]
    result.update({
        "runs": runs,
        "summary": summary,
        "slowdown_busy_over_quiet": slowdown,
        "target": {"rule": "gpuseg >= 2x faster than sklearn MiniBatchKMeans in the busy condition",
                   "sklearn_over_gpuseg_busy": busy_ratio,
                   "met": bool(busy_ratio is not None and busy_ratio >= 2.0)},
    })
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = write_result(result_path("kmeans_load", "cpu", out=args.out), result)
    print(json.dumps({"summary": summary, "slowdown_busy_over_quiet": slowdown,
                      "target": result["target"], "written": str(out)}, indent=2))


if __name__ == "__main__":
    main()
