"""Kill every job that writes more than one file at random points; check what each kill leaves.

    python benchmarks/bench_kill.py [--kills 10] [--customers 300] [--jobs validate,segment] [--seed 0]

A small synthetic project is made with ``gpuseg run`` (and ``gpuseg lookalike``); then, job by
job in pipeline order, each is run once timed and killed ``--kills`` times (SIGKILL at a random
point between 0.2 and 1.1 times that run's length), and run once more to the end. After every
kill the job's published folder must be a whole set (matching its publish record, made from the
upstream sets there now) and the last run must succeed (tests/kill_harness.py holds the checks;
the CI test does the same with two kills per job). The JSON records, per job, the kill times, and
whether the old set or a new one was found after each.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from _common import ROOT, library_versions, machine_info, result_path, utc_now, write_result

sys.path.insert(0, str(ROOT / "tests"))
from kill_harness import MULTI_FILE_JOBS, kill_job, prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--jobs", default=",".join(MULTI_FILE_JOBS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = sorted(set(jobs) - set(MULTI_FILE_JOBS))
    if unknown:
        parser.error(f"--jobs: unknown {unknown}; choose from {list(MULTI_FILE_JOBS)}")
    rng = random.Random(args.seed)
    started = time.perf_counter()
    reports = []
    with tempfile.TemporaryDirectory(prefix="gpuseg_kill_") as tmp:
        work = Path(tmp) / "work"
        prepare(work, args.customers)
        for job in [j for j in MULTI_FILE_JOBS if j in jobs]:  # pipeline order: upstream sets stay current
            report = kill_job(work, job, args.customers, args.kills, rng)
            print(f"{job:10s} run {report.seconds:6.1f}s  kills {len(report.outcome)}: "
                  f"{report.outcome.count('old')} old set, {report.outcome.count('new')} new set, "
                  f"next run ok={report.resumed_ok}", flush=True)
            reports.append(asdict(report))
    payload = {
        "benchmark": "kill",
        "date": utc_now(),
        "machine": machine_info("cpu"),
        "versions": library_versions(),
        "config": {"kills_per_job": args.kills, "n_customers": args.customers, "seed": args.seed},
        "jobs": reports,
        "all_whole_after_every_kill": True,  # kill_job raises at the first kill that leaves a broken set
        "total_kills": sum(len(r["outcome"]) for r in reports),
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = write_result(result_path("kill", "cpu", out=args.out), payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
