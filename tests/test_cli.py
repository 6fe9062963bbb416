"""The ``gpuseg`` command end to end, from a directory outside the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

GPUSEG = shutil.which("gpuseg")


def _gpuseg(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [GPUSEG] if GPUSEG else [sys.executable, "-m", "gpuseg"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_help_lists_every_job(tmp_path):
    out = _gpuseg("--help", cwd=tmp_path)
    assert out.returncode == 0
    for job in ("generate", "validate", "features", "text", "journeys", "fuse", "segment", "profile",
                "lookalike", "assign", "bench", "run"):
        assert f"\n  {job} " in out.stdout


def test_job_help_is_hydras(tmp_path):
    out = _gpuseg("features", "--help", cwd=tmp_path)
    assert out.returncode == 0
    assert "Configuration groups" in out.stdout and "recent_window_days" in out.stdout


def test_unknown_job_is_exit_2(tmp_path):
    out = _gpuseg("segmnt", cwd=tmp_path)
    assert out.returncode == 2 and "unknown job 'segmnt'" in out.stderr


def test_run_generates_validates_and_features_from_any_directory(tmp_path):
    out = _gpuseg("run", "data.generator.n_customers=400", "progress=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gpuseg run finished. Outputs:" in out.stdout
    work = tmp_path / "gpuseg_work"
    customers = pq.read_table(work / "data" / "customers.parquet")
    features = pq.read_table(work / "features" / "features.parquet")
    features_bytes = (work / "features" / "features.parquet").read_bytes()
    matrix = pq.read_table(work / "features" / "matrix.parquet")
    # nobody is lost: every input customer has a feature row, in the customers' order
    assert features["customer_id"].to_pylist() == customers["customer_id"].to_pylist()
    assert matrix.num_rows == customers.num_rows
    assert (work / "manifests" / "run.json").exists()
    assert list((work / "logs" / "run").glob("*/.hydra/config.yaml"))
    # a second job finds the first one's artifacts through paths.work_dir; multirun works
    out = _gpuseg("features", "-m", "features.recent_window_days=30,60", "progress=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((work / "logs" / "multirun").glob("features/*/*/.hydra/config.yaml"))) == 2
    # each run of the sweep keeps its own artifacts, and the project's own features stay as they were
    runs = sorted((work / "sweeps" / "features").glob("*/*/features/features.parquet"))
    assert len(runs) == 2
    # (bytes, not Table.equals: NaN features never compare equal)
    assert runs[0].read_bytes() != runs[1].read_bytes()  # 30- and 60-day windows differ
    assert (work / "features" / "features.parquet").read_bytes() == features_bytes
    assert (runs[0].parent.parent / "validated").is_symlink()


def test_bad_data_is_a_message_with_exit_2_not_a_traceback(tmp_path):
    bad = tmp_path / "events.csv"
    bad.write_text("customer_id,timestamp,event_type,amount\nc1,2024-01-01,purchase,12\nc2,yesterday,purchase,3\n")
    out = _gpuseg("validate", "data=custom", f"paths.data_dir={tmp_path}", "data.as_of=2024-06-01",
                  "data.customers.path=null", "data.events.columns.category=null",
                  "data.events.columns.channel=null", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "table 'events', column 'timestamp'" in out.stderr and "yesterday" in out.stderr
    assert "data.events.timestamp_format" in out.stderr


@pytest.mark.parametrize("job", ["features", "validate"])
def test_missing_upstream_or_inputs_is_exit_2(tmp_path, job):
    out = _gpuseg(job, f"paths.work_dir={tmp_path / 'empty'}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "config key to change" in out.stderr


def test_explicit_cuda_without_gpu_names_the_key(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so device=cuda is valid here")
    out = _gpuseg("run", "device=cuda", cwd=tmp_path)
    assert out.returncode == 2 and "no CUDA device is available" in out.stderr
    assert "config key to change: device" in out.stderr


def test_run_skips_the_text_job_for_data_without_texts(make_cfg):
    from gpuseg.jobs import run

    cfg = make_cfg("run", "data.generator.n_customers=300", "data.texts.path=null", "stages=[validate,text,features]")
    result = run.run(cfg)
    assert result["stages"] == ["generate", "validate", "features"]


def test_ranks_other_than_0_log_to_their_own_file(monkeypatch):
    from gpuseg.cli import _rank_log_overrides

    for name in ("RANK", "WORLD_SIZE", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    assert _rank_log_overrides([]) == []  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert _rank_log_overrides([]) == []  # rank 0 keeps <job>.log and the .hydra record
    monkeypatch.setenv("RANK", "1")
    extra = _rank_log_overrides(["seed=1"])
    assert "hydra.output_subdir=null" in extra
    assert any(e.startswith("hydra.job_logging.handlers.file.filename=") and e.endswith(".rank1.log") for e in extra)
    assert _rank_log_overrides(["hydra.output_subdir=mine"]) == [e for e in extra if "output_subdir" not in e]
    # a Slurm task whose torchrun variables are set later, inside the job
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert any(e.endswith(".rank3.log") for e in _rank_log_overrides([]))
