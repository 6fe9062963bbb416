"""A killed job leaves its previous outputs whole: staged writes, published together (runtime/publish)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import synthetic_project
from kill_harness import MULTI_FILE_JOBS, kill_job, prepare

from gpuseg.runtime.publish import STAGING, recover, staged_outputs

GPUSEG = shutil.which("gpuseg")


def _command(*args: str) -> list[str]:
    return [*([GPUSEG] if GPUSEG else [sys.executable, "-m", "gpuseg"]), *args]


def _segment_set(work: Path) -> int:
    """The number of segments the published segment outputs agree on (an assertion if they do not)."""
    folder = work / "segment"
    k_meta = json.loads((folder / "segmentation.json").read_text())["n_clusters"]
    k_model = json.loads((folder / "kmeans.json").read_text())["params"]["n_clusters"]
    k_metrics = json.loads((folder / "metrics.json").read_text())["n_clusters"]
    k_labels = pq.read_table(folder / "segments.parquet")["segment"].to_numpy().max() + 1
    assert k_meta == k_model == k_metrics == k_labels, (k_meta, k_model, k_metrics, k_labels)
    return k_meta


def test_killed_segment_runs_leave_the_old_set_or_the_new_one(tmp_path):
    work = tmp_path / "work"
    synthetic_project(work, 600)
    base = ("segment", f"paths.work_dir={work}", "device=cpu", "progress=false", "segment.confidence.n_bootstrap=1")
    subprocess.run(_command(*base, "segment.n_clusters=3"), check=True, capture_output=True, timeout=300)
    assert _segment_set(work) == 3
    rng = random.Random(0)
    for _ in range(2):
        proc = subprocess.Popen(_command(*base, "segment.n_clusters=5"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert _segment_set(work) in (3, 5)  # whole: either the old set or the new one, never a mix
    out = subprocess.run(_command(*base, "segment.n_clusters=5"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _segment_set(work) == 5
    assert not (work / STAGING / "segment").exists()


@pytest.fixture(scope="module")
def pipeline_work(tmp_path_factory):
    work = tmp_path_factory.mktemp("killed") / "work"
    prepare(work, 300)
    return work


@pytest.mark.parametrize("job", MULTI_FILE_JOBS)
def test_every_job_killed_at_random_points_leaves_a_whole_set_and_runs_again(pipeline_work, job):
    # two kills per job here; benchmarks/bench_kill.py kills each job ten times and more
    report = kill_job(pipeline_work, job, 300, kills=2, rng=random.Random(MULTI_FILE_JOBS.index(job)))
    assert report.resumed_ok and len(report.outcome) == 2


def test_a_failed_job_publishes_nothing_and_a_crash_mid_publish_is_recovered(tmp_path):
    work = tmp_path / "work"
    (work / "segment").mkdir(parents=True)
    (work / "segment" / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_outputs(work, "segment", "segment") as stage:
            (stage / "a.txt").unlink()
            (stage / "a.txt").write_text("new")
            raise RuntimeError("killed half-way")
    assert (work / "segment" / "a.txt").read_text() == "old"  # the published set is untouched
    with staged_outputs(work, "segment", "segment") as stage:  # the next run starts from the staged one
        assert (stage / "a.txt").read_text() == "new"
    assert (work / "segment" / "a.txt").read_text() == "new"
    # a crash between the two renames of a publish: the old folder is put back at the next start
    (work / "segment").rename(work / STAGING / "segment.old")
    recover(work, "segment")
    assert (work / "segment" / "a.txt").read_text() == "new"


def test_leftover_tmp_files_of_a_killed_write_are_removed_at_the_next_start(tmp_path):
    work = tmp_path / "work"
    (work / "fuse").mkdir(parents=True)
    (work / "fuse" / ".fused.npy.abc123.tmp").write_bytes(b"half a file")
    with staged_outputs(work, "fuse", "fuse") as stage:
        assert not list(stage.glob(".*.tmp"))
    assert not list((work / "fuse").glob(".*.tmp"))
