"""Kill a gpuseg job at random points and check what it leaves: the test and the benchmark share this.

After each SIGKILL the job's published folder must be a set gpuseg published whole (it matches
its ``.publish.json``: the old set, or the new one when the kill came after the publish), made
from the upstream folders there now; and a run after the kills must succeed.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpuseg.runtime.layout import JOB_DIRS
from gpuseg.runtime.publish import STAGING, read_record, recover, verify_folder

GPUSEG = shutil.which("gpuseg")

#: the jobs that write more than one file, in pipeline order
MULTI_FILE_JOBS = ("validate", "features", "text", "journeys", "fuse", "segment", "profile", "lookalike")


def command(*args: str) -> list[str]:
    """The ``gpuseg`` command line (the installed script, else ``python -m gpuseg``)."""
    return [*([GPUSEG] if GPUSEG else [sys.executable, "-m", "gpuseg"]), *args]


#: per job, the settings that keep a small run quick (their config groups exist in that job's config only)
_QUICK = {"journeys": ["journey.epochs=2"],
          "segment": ["segment.confidence.n_bootstrap=2", "segment.n_clusters=4"],
          "lookalike": ["lookalike.seeds=[C0000001,C0000002,C0000003]", "lookalike.size=50"]}


def job_overrides(job: str, work: Path, n_customers: int) -> list[str]:
    """Overrides for a small, quick run of ``job`` in ``work`` (CPU, no progress bars)."""
    quick = [o for j in ("journeys", "segment") for o in _QUICK[j]] if job == "run" else _QUICK.get(job, [])
    return [f"paths.work_dir={work}", f"data.generator.n_customers={n_customers}", "device=cpu", "progress=false",
            *quick]


def prepare(work: Path, n_customers: int) -> None:
    """Make every job's published set once (``gpuseg run``, then ``gpuseg lookalike``)."""
    out = subprocess.run(command("run", *job_overrides("run", work, n_customers)), capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"gpuseg run failed:\n{out.stderr[-3000:]}")
    out = subprocess.run(command("lookalike", *job_overrides("lookalike", work, n_customers)), capture_output=True,
                         text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"gpuseg lookalike failed:\n{out.stderr[-3000:]}")


def published_set(work: Path, job: str) -> str:
    """The id of ``job``'s published set, checked whole and made from the upstream sets there now."""
    folder = work / JOB_DIRS[job]
    recover(work, JOB_DIRS[job])  # what the next start of the job (or a reader) does first
    record = verify_folder(folder, job)  # raises when a file is missing or not the one published
    assert record is not None, f"{folder} has no publish record"
    for upstream, entry in record["lineage"].items():
        now = read_record(work / entry["folder"])
        assert now is not None and now["id"] == entry["id"], f"{job} was made from another {upstream} set"
    return record["id"]


@dataclass
class KillReport:
    """What the kills of one job found."""

    job: str
    seconds: float  # one uninterrupted run
    kill_after_s: list[float] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)  # "old" or "new" set found after each kill
    resumed_ok: bool = False


def kill_job(work: Path, job: str, n_customers: int, kills: int, rng: random.Random) -> KillReport:
    """Run ``job`` once timed, then kill it ``kills`` times at random points, then run it to the end.

    Each run uses a new seed, so a run that got as far as publishing leaves a new set.
    """
    base = command(job, *job_overrides(job, work, n_customers))
    start = time.perf_counter()
    out = subprocess.run([*base, "seed=100"], capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"gpuseg {job} failed:\n{out.stderr[-3000:]}")
    report = KillReport(job, round(seconds, 2))
    current = published_set(work, job)
    for i in range(kills):
        proc = subprocess.Popen([*base, f"seed={101 + i}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.2, 1.1) * seconds  # sometimes after it would have finished
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
        after = published_set(work, job)
        report.kill_after_s.append(round(delay, 2))
        report.outcome.append("old" if after == current else "new")
        current = after
    out = subprocess.run([*base, "seed=200"], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"gpuseg {job} after {kills} kills failed:\n{out.stderr[-3000:]}")
    assert published_set(work, job) != current, f"the run after the kills did not publish a new {job} set"
    assert not (work / STAGING / JOB_DIRS[job]).exists(), "the finished run left its staging folder"
    report.resumed_ok = True
    return report
