"""``gpuseg`` forgives typos (a suggestion, exit 2, no traceback) and keeps its console quiet."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from gpuseg.cli import check_overrides, unknown_key_message
from gpuseg.runtime.logging_setup import quiet_console
from gpuseg.text.model_path import default_model_dir

GPUSEG = shutil.which("gpuseg")
HYDRA_NOISE = ("Traceback", "To append to your config use", "HYDRA_FULL_ERROR")


def _gpuseg(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [GPUSEG] if GPUSEG else [sys.executable, "-m", "gpuseg"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("HYDRA_FULL_ERROR", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize(("job", "args", "expected"), [
    ("segment", ["segment.n_clusterz=5"],
     "gpuseg segment: error: unknown key 'segment.n_clusterz'; did you mean 'segment.n_clusters'?"),
    ("segment", ["device=cdua"],
     "gpuseg segment: error: unknown option 'cdua' for 'device'; did you mean 'cuda'? "
     "(options of 'device': auto, cpu, cuda)"),
    ("segment", ["sed=3"], "gpuseg segment: error: unknown key 'sed'; did you mean 'seed'?"),
    # a multirun's sweep, a deletion and a Hydra key are checked the same way
    ("features", ["-m", "features.recent_window_dayz=30,60"],
     "gpuseg features: error: unknown key 'features.recent_window_dayz'; did you mean 'features.recent_window_days'?"),
    ("segment", ["~sedd"], "gpuseg segment: error: unknown key 'sedd'; did you mean 'seed'?"),
    ("segment", ["hydra.job.chdr=true"],
     "gpuseg segment: error: unknown key 'hydra.job.chdr'; did you mean 'hydra.job.chdir'?"),
])
def test_a_typo_is_a_suggestion_with_exit_2(tmp_path, job, args, expected):
    out = _gpuseg(job, *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert expected in out.stderr
    for noise in HYDRA_NOISE:
        assert noise not in out.stderr
    assert not (tmp_path / "gpuseg_work").exists()  # nothing ran


def test_every_typo_is_reported_at_once(tmp_path):
    out = _gpuseg("segment", "sed=1", "segment.n_clusterz=4", "progres=false", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == ["gpuseg segment: error: unknown key 'sed'; did you mean 'seed'?",
                     "gpuseg segment: error: unknown key 'segment.n_clusterz'; did you mean 'segment.n_clusters'?",
                     "gpuseg segment: error: unknown key 'progres'; did you mean 'progress'?"]


def test_a_key_like_none_lists_the_keys_at_its_level(tmp_path):
    out = _gpuseg("segment", "segment.zzz=1", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "gpuseg segment: error: unknown key 'segment.zzz'; keys of 'segment': input, n_clusters," in out.stderr
    assert "did you mean" not in out.stderr


def test_a_mistyped_override_grammar_is_exit_2(tmp_path):
    out = _gpuseg("segment", "segment.n_clusters=[", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr
    assert "gpuseg segment: error: cannot read the override 'segment.n_clusters=['" in out.stderr


def test_correct_overrides_appends_deletes_and_hydra_keys_still_work(tmp_path):
    out = _gpuseg("segment", "segment.n_clusters=5", "+new.key=1", "~progress", "device=cpu",
                  "hydra.run.dir=somewhere_else", "--cfg", "all", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = yaml.safe_load(out.stdout)
    assert cfg["segment"]["n_clusters"] == 5
    assert cfg["new"] == {"key": 1}
    assert "progress" not in cfg and cfg["seed"] == 0
    assert cfg["device"]["type"] == "cpu"
    assert cfg["hydra"]["run"]["dir"] == "somewhere_else"


def test_job_help_is_still_hydras(tmp_path):
    out = _gpuseg("segment", "--help", cwd=tmp_path)
    assert out.returncode == 0
    assert "Configuration groups" in out.stdout and "n_clusters" in out.stdout


def test_multirun_still_sweeps(tmp_path):
    out = _gpuseg("generate", "-m", "paths.work_dir=wa,wb", "data.generator.n_customers=30", "progress=false",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for work in ("wa", "wb"):
        assert (tmp_path / work / "data" / "customers.parquet").exists()
        assert len(list((tmp_path / work / "logs" / "multirun").glob("generate/*/*/.hydra/config.yaml"))) == 1


def test_check_overrides_sees_every_option_of_a_sweep():
    errors, cfg = check_overrides("segment", ["-m", "device=cpu,cdua"])
    assert errors == ["unknown option 'cdua' for 'device'; did you mean 'cuda'? (options of 'device': auto, cpu, cuda)"]
    errors, cfg = check_overrides("segment", ["-m", "device=cpu,cuda", "segment.n_clusters=3,4"])
    assert errors == [] and cfg["segment"]["n_clusters"] == 3  # the first job's config


def test_check_overrides_leaves_what_it_cannot_judge_to_hydra(monkeypatch):
    assert check_overrides("segment", ["--help", "sed=1"]) == ([], None)
    assert check_overrides("segment", ["--config-name", "features", "sed=1"]) == ([], None)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert check_overrides("segment", ["sed=1"]) == ([], None)


def test_unknown_key_messages():
    cfg = {"seed": 0, "paths": {"work_dir": "w"}, "segment": {"n_clusters": 4, "kmeans": {"n_init": 3}},
           "hydra": {"job": {"name": "x"}}}
    assert unknown_key_message("segment.n_clusters", cfg) is None
    # the right name at the wrong level
    assert unknown_key_message("n_init", cfg) == "unknown key 'n_init'; did you mean 'segment.kmeans.n_init'?"
    # a typo above the last part keeps the rest of the key
    assert unknown_key_message("segmnt.kmeans.n_init", cfg) == (
        "unknown key 'segmnt.kmeans.n_init'; did you mean 'segment.kmeans.n_init'?")
    # nothing close: the keys at that level (Hydra's own left out at the top)
    top = unknown_key_message("zzz", cfg)
    assert top.startswith("unknown key 'zzz'; top-level keys: seed, paths, segment\n") and "hydra" not in top
    assert unknown_key_message("seed.x", cfg) == "unknown key 'seed.x': 'seed' holds a value, not keys"


def test_quiet_console_sets_library_defaults_and_keeps_user_choices(monkeypatch):
    monkeypatch.setattr(os, "environ", {"HF_HUB_VERBOSITY": "info"})
    for name in ("transformers", "huggingface_hub"):  # leave this process's libraries alone
        monkeypatch.delitem(sys.modules, name, raising=False)
    faiss_logger = logging.getLogger("faiss")
    level = faiss_logger.level
    faiss_logger.setLevel(logging.NOTSET)
    try:
        quiet_console(progress=False)
        assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
        assert logging.getLogger("faiss.loader").isEnabledFor(logging.WARNING)
    finally:
        faiss_logger.setLevel(level)
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["HF_HUB_VERBOSITY"] == "info"  # the user's own setting wins
    assert logging.getLogger("gpuseg").level == logging.NOTSET  # our own lines are not touched


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A small validated + featurised project made by the CLI."""
    root = tmp_path_factory.mktemp("quiet")
    out = _gpuseg("run", "data.generator.n_customers=80", "progress=false", "stages=[validate,features]", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_lookalike_console_has_no_faiss_loader_lines(project):
    ids = pq.read_table(project / "gpuseg_work" / "data" / "customers.parquet")["customer_id"].to_pylist()[:2]
    out = _gpuseg("lookalike", f"lookalike.seeds=[{ids[0]},{ids[1]}]", "lookalike.size=10",
                  "lookalike.index.rebuild=true", "progress=false", cwd=project)
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert "faiss.IndexFlatIP" in console  # faiss was loaded, and our own INFO lines are there
    assert "[gpuseg.jobs.lookalike][INFO] - lookalike audience: 2 seeds -> 10 customers" in console
    assert "faiss.loader" not in console and "Loading faiss" not in console


@pytest.mark.skipif(default_model_dir() is None, reason="gpuseg[models] is not installed")
def test_text_console_has_no_weight_loading_bar(project):
    out = _gpuseg("text", "progress=false", cwd=project)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[gpuseg.jobs.text][INFO] - text:" in out.stdout
    assert "Loading weights" not in out.stderr and "it/s]" not in out.stderr
