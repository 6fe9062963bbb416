"""Slurm: Hydra's submitit launcher composes, and a Slurm task without torchrun joins one job."""

from __future__ import annotations

import os
import sys

import pytest

from gpuseg.cli import check_overrides
from gpuseg.runtime.distributed import export_slurm_environment
from gpuseg.runtime.errors import ConfigError

TORCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
#: task 3 of a 4-task step on 2 nodes (the second task of the second node)
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2",
         "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}


@pytest.fixture
def clean_env(monkeypatch):
    """No torch.distributed variables, and whatever a test sets is undone afterwards."""
    for name in (*TORCH_VARS, *SLURM, "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SUBMITIT_EXECUTOR"):
        monkeypatch.setenv(name, "unset")  # recorded, so the teardown restores the original state
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_submitit_launcher_composes_with_the_documented_settings():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs gpuseg[slurm]")
    errors, cfg = check_overrides("journeys", ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                               "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4",
                                               "hydra.launcher.gpus_per_node=4", "hydra.launcher.timeout_min=120",
                                               "device=cuda"])
    assert errors == []
    launcher = cfg["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == \
        ("gpu", 2, 4, 4)


def test_a_slurm_task_gets_torchruns_variables_from_submitit(clean_env):
    pytest.importorskip("submitit", reason="needs gpuseg[slurm]")
    for name, value in SLURM.items():
        clean_env.setenv(name, value)
    assert export_slurm_environment() is True
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"]) \
        == ("3", "4", "1", "2")
    assert os.environ["MASTER_ADDR"] == "gpu07" and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000


def test_outside_a_multi_task_step_or_under_torchrun_nothing_changes(clean_env):
    assert export_slurm_environment() is False  # not in Slurm
    for name, value in SLURM.items():
        clean_env.setenv(name, value)
    clean_env.setenv("SLURM_STEP_NUM_TASKS", "1")  # an sbatch script's own step: one task
    assert export_slurm_environment() is False
    clean_env.setenv("SLURM_STEP_NUM_TASKS", "4")
    clean_env.setenv("WORLD_SIZE", "8")  # torchrun inside srun already set them
    assert export_slurm_environment() is False and "RANK" not in os.environ


def test_several_tasks_without_submitit_is_an_error_saying_what_to_do(clean_env):
    for name, value in SLURM.items():
        clean_env.setenv(name, value)
    clean_env.setitem(sys.modules, "submitit.helpers", None)  # as if gpuseg[slurm] were not installed
    with pytest.raises(ConfigError, match=r"one of 4 tasks of a Slurm job step.*gpuseg\[slurm\].*WORLD_SIZE=1"):
        export_slurm_environment()
    assert "WORLD_SIZE" not in os.environ
