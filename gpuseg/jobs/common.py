"""What every job does around its work: device, seed, work dir, manifest."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from gpuseg.data.events import to_microseconds
from gpuseg.data.schema import validated_dir
from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import read_json, write_json
from gpuseg.runtime.layout import JOB_DIRS, artifact, manifest_path, read_checked
from gpuseg.runtime.machine import peak_memory
from gpuseg.runtime.manifest import run_manifest
from gpuseg.runtime.publish import staged_outputs
from gpuseg.runtime.seeding import seed_everything
from gpuseg.runtime.tables import join_on_customer_id
from gpuseg.runtime.validation import check_real

log = logging.getLogger(__name__)


def work_dir(cfg: DictConfig) -> Path:
    """The project work directory, created if needed; in a Hydra multirun, this run's own one.

    Each run of a sweep (``gpuseg features -m features.recent_window_days=30,90``) gets
    ``<work_dir>/sweeps/<job>/<time>/<num>/``: the upstream job folders of the work directory are
    linked in, and the job writes its own outputs there, so the runs of a sweep never overwrite
    each other or the project's own results.
    """
    path = Path(cfg.paths.work_dir)
    sweep = _sweep_run(path)
    if sweep is not None:
        return sweep
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sweep_run(base: Path) -> Path | None:
    """This multirun job's folder (upstream job folders linked from ``base``), or None outside a sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # not inside a Hydra app (tests and the Python API call run(cfg))
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    job = str(hydra_cfg.job.name)
    folder = base / "sweeps" / job / Path(str(hydra_cfg.sweep.dir)).name / str(hydra_cfg.job.num)
    if not folder.exists():
        folder.mkdir(parents=True)
        # a `run` sweep makes every stage anew; a single job reads the others' folders through links
        for other, name in ({} if job == "run" else JOB_DIRS).items():
            if other != job and (base / name).is_dir():
                (folder / name).symlink_to((base / name).resolve(), target_is_directory=True)
        log.info("multirun: this run's artifacts go to %s", folder)
    return folder


def start(cfg: DictConfig, job: str, *, needs_device: bool = False) -> dict[str, Any]:
    """Seed, resolve the device (when the job uses one) and describe the run."""
    seed_everything(int(cfg.seed))
    device = None
    if needs_device:
        device = resolve_device(cfg.device.type, key="device")
    plain = OmegaConf.to_container(cfg, resolve=True)
    manifest = run_manifest(job, plain, int(cfg.seed), str(device) if device else None)
    return {"device": device, "manifest": manifest}


def finish(cfg: DictConfig, job: str, manifest: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Write ``<work_dir>/manifests/<job>.json`` (manifest + result) and return the result.

    The manifest also records this process's peak memory so far (host RSS, CUDA allocations)
    under ``resources``: what ``gpuseg bench`` reads for each stage it runs.
    """
    resources = peak_memory()
    write_json(manifest_path(work_dir(cfg), job), {**manifest, "resources": resources, "result": result})
    return result


def data_mapping(cfg: DictConfig) -> dict[str, Any]:
    """The ``data`` config section as a plain dict, resolved (``data.as_of`` checked first)."""
    data_as_of(cfg)
    return OmegaConf.to_container(cfg.data, resolve=True)


def data_as_of(cfg: DictConfig) -> str:
    """``data.as_of``, the observation cut-off, checked: missing or unparseable is a ConfigError."""
    try:
        value = cfg.data.as_of
    except MissingMandatoryValue:
        value = None
    if value is None or str(value).strip() in ("", "???"):
        raise ConfigError("data.as_of is required: the observation cut-off (features and journeys use what "
                          "happened before it, churn and value are checked on what came after), e.g. "
                          "data.as_of=2024-06-30", config_key="data.as_of")
    text = str(value).strip()
    try:
        to_microseconds(text)  # the parser every job reads as_of with: what passes here works there
    except ConfigError:
        raise ConfigError(f"data.as_of must be a date or timestamp such as 2024-06-30 or "
                          f"'2024-06-30 12:00:00', got {text!r}", config_key="data.as_of") from None
    return text


def table_configured(cfg: DictConfig, table: str) -> bool:
    """Whether the ``data`` config maps ``table`` (a file path or a query)."""
    spec = cfg.data.get(table) or {}
    return bool(spec.get("path") or spec.get("query"))


def has_validated_table(work: Path, table: str) -> bool:
    """Whether ``gpuseg validate`` wrote the canonical ``table`` (events and texts are optional)."""
    return artifact(work, "validate", table).exists()


def load_validated(work: Path) -> tuple[dict[str, Any], pa.Table]:
    """The validated schema and customers table, or a clear error telling to validate first."""
    folder = validated_dir(work)
    if not artifact(work, "validate", "schema").exists():
        raise UserInputError(f"no validated data in '{folder}': run `gpuseg validate` (or `gpuseg run`) first "
                             "with the same paths.work_dir", config_key="paths.work_dir")
    return read_json(artifact(work, "validate", "schema")), pq.read_table(artifact(work, "validate", "customers"))


#: per-customer matrices a job can take, in order of preference for ``input: auto``
MATRIX_INPUTS = (("fuse", "fused"), ("features", "matrix"))


def matrix_input(configured: str | None, key: str, work: Path) -> Path:
    """The customer matrix a job reads: the configured path, else the fused matrix, else the features.

    Parameters
    ----------
    configured : str or None
        The job's ``input`` setting (``auto``/None, or a path).
    key : str
        Its config key, named in errors.
    work : Path
        The work directory.
    """
    if configured not in (None, "auto"):
        path = Path(str(configured))
        if not path.exists():
            raise UserInputError(f"input '{path}' does not exist", config_key=key)
        return read_checked(work, path)
    for job, name in MATRIX_INPUTS:
        if artifact(work, job, name).exists():
            return artifact(work, job, name)
    raise UserInputError(f"no customer matrix in '{work}': run `gpuseg features` (and `gpuseg fuse`) or "
                         "`gpuseg run` first", config_key="paths.work_dir")


def memory_budget(cfg: DictConfig, job: str, default_mb: float = 1024) -> int:
    """``<job>.memory_mb`` in bytes, checked: how large a matrix the job reads whole.

    Used by the jobs that read the fused matrix (segment, profile); a larger matrix is read
    from disk by blocks (:func:`gpuseg.runtime.matrix.matrix_within`).
    """
    budget = cfg[job].get("memory_mb", default_mb)
    check_real(job, "memory_mb", budget, low=0.0, closed_low=False, config_key=f"{job}.memory_mb")
    return int(float(budget) * 2**20)


def segments_with_scores(work: Path) -> pa.Table:
    """``segment/segments.parquet`` with the profile job's ``profile/customer_scores.parquet`` beside it."""
    segments = pq.read_table(artifact(work, "segment", "segments"))
    scores = artifact(work, "profile", "scores")
    if not scores.exists():
        return segments
    return join_on_customer_id(segments, pq.read_table(scores), names=(str(scores),))


def customer_label(setting: Any, schema: dict[str, Any], customers: pa.Table, *,
                   key: str) -> tuple[str | None, np.ndarray | None]:
    """The label column a job's ``label`` setting names: ``auto``, a column, or null for none.

    ``auto`` is the first label of the customers table (None when it has none). Values are
    float with NaN for unknown. A label without a single known value is skipped with a warning:
    there is nothing to learn from it, and that is no reason to stop the pipeline.

    Parameters
    ----------
    setting : str or None
        The job's setting (``journey.label``, ``profile.churn.label``).
    schema : dict
        The validated ``schema.json``.
    customers : pyarrow.Table
        The validated customers table.
    key : str
        The setting's config key, named in errors.
    """
    labels = list((schema.get("customers") or {}).get("labels") or [])
    if setting is None or str(setting).lower() in ("null", "none", ""):
        return None, None
    name = str(setting)
    if name == "auto":
        if not labels:
            return None, None
        name = labels[0]
    if name not in customers.column_names:
        raise ConfigError(f"label {name!r} is not a column of the customers table; labels there: {labels}",
                          config_key=key)
    values = np.asarray(customers[name].cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False),
                        dtype=np.float64)
    if not np.isfinite(values).any():
        log.warning("label %r has no known value (every cell is empty): skipped (%s)", name, key)
        return None, None
    return name, values


#: jobs that share their work across torchrun's ranks: every rank runs them (text: alternate
#: chunks; journeys: DDP training; segment: the k-means fit on each rank's rows; lookalike: an
#: index shard per rank), rank 0 writes. Every other job runs on rank 0 alone while the others wait.
EVERY_RANK = frozenset({"text", "journeys", "segment", "lookalike"})


def join_process_group(cfg: DictConfig) -> ddp.Rank:
    """This process's rank, joining torchrun's process group first when there is one (once per process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ddp.Rank()
    device = cfg.get("device")
    return ddp.init_from_env(resolve_device(device.type, key="device") if device is not None
                             else torch.device("cpu"))


def staged(job: str) -> Callable[[Callable[[DictConfig], dict[str, Any]]], Callable[[DictConfig], dict[str, Any]]]:
    """Decorate a job's ``run(cfg)`` so its outputs are published together or not at all.

    The job writes into a staging folder (see :mod:`gpuseg.runtime.publish`); only a run that
    returns replaces the published folder, so a killed or failed run leaves the previous set
    whole. Under torchrun a job of :data:`EVERY_RANK` runs on every rank, writing into the one
    staging folder that rank 0 publishes; any other job runs on rank 0 alone (the other ranks
    wait, then return ``{"rank": r, "ran_on_rank": 0}``), so every artifact is written once.
    """
    def decorate(run: Callable[[DictConfig], dict[str, Any]]) -> Callable[[DictConfig], dict[str, Any]]:
        @functools.wraps(run)
        def staged_run(cfg: DictConfig) -> dict[str, Any]:
            place = join_process_group(cfg)
            if place.world > 1 and job not in EVERY_RANK:
                result = ddp.on_main(lambda: _staged_run(run, cfg, job), what=f"gpuseg {job}")
                return result if place.is_main else {"rank": place.rank, "ran_on_rank": 0}
            return _staged_run(run, cfg, job)
        return staged_run
    return decorate


def _staged_run(run: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig, job: str) -> dict[str, Any]:
    work = work_dir(cfg)
    with staged_outputs(work, job, JOB_DIRS[job]) as stage:
        result = run(cfg)
    # the paths a job reports pointed into its staging folder: they are published now
    published = str(work / JOB_DIRS[job])
    result = _moved(result, str(stage), published)
    manifest = manifest_path(work, job)
    if ddp.rank_and_world()[0] == 0 and manifest.exists():
        write_json(manifest, _moved(read_json(manifest), str(stage), published))
    return result


def _moved(value: Any, old: str, new: str) -> Any:
    """``value`` with every string that starts with folder ``old`` starting with ``new`` instead."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + os.sep) else value
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_moved(v, old, new) for v in value)
    return value
