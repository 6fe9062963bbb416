"""Shared fixtures: composed configs, tiny canonical tables, CUDA parametrisation."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = REPO.parent / "shared" / "data" / "online_retail" / "online_retail_II_2009_2011_combined.csv.gz"

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.requires_cuda),
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make_cfg(tmp_path):
    """Compose a job's config the way ``gpuseg <job> overrides`` does, with a tmp work dir."""

    def _make(job: str, *overrides: str):
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={tmp_path / 'work'}", "progress=false",
                                                       *overrides])

    return _make


def write_table(path: Path, columns: dict) -> Path:
    """Write a small table as Parquet or CSV (by extension) for a test."""
    table = pa.table(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return path


def synthetic_project(work: Path, n_customers: int):
    """Generate, validate and featurise a synthetic project in ``work``.

    Returns ``cfg(job, *overrides)``, which composes a job's config for that project.
    """
    from gpuseg.jobs import features, generate, validate

    def cfg(job: str, *overrides: str):
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false",
                                                       f"data.generator.n_customers={n_customers}", *overrides])

    generate.run(cfg("generate"))
    validate.run(cfg("validate"))
    features.run(cfg("features"))
    return cfg


def headless_chromium(profile_dir: Path, *args: str):
    """Run Debian's headless Chromium on ``args``; return ``(process, page_lines)``.

    ``page_lines`` are the lines of Chromium's log that come from a page, which a test expects to be
    none: every console message ("CONSOLE(12)" in older builds, "INFO:CONSOLE:12]" in newer ones) and
    the errors a page can raise without one (an uncaught exception, a load refused by a content
    policy, a resource that failed to load). Skips the test where Chromium is not installed (CI
    installs it, see .ci/run); ``profile_dir`` is a fresh user-data directory for this run.
    """
    import re
    import shutil
    import subprocess

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("needs Debian's chromium package (installed by .ci/run)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile_dir}"]
    out = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)
    page = re.compile(r"CONSOLE|Uncaught|Refused to|Failed to load")
    return out, [line for line in out.stderr.splitlines() if page.search(line)]
