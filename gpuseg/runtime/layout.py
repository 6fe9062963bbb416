"""Where every job's artifacts live in a work directory: the one place that spells their paths.

A job writes only under its own folder (``job_dir``); a reader asks for another job's artifact
by job and name (``artifact(work, "segment", "segments")``), so renaming a file is a change here
and nowhere else, and a typo is an error naming the valid names instead of a missing file.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpuseg.runtime.publish import check_upstream, staged_folder

#: job -> its folder under the work directory
JOB_DIRS = {"validate": "validated", "features": "features", "text": "text", "journeys": "journeys",
            "fuse": "fuse", "segment": "segment", "profile": "profile", "lookalike": "lookalike",
            "assign": "assign", "audience": "audiences", "export": "exports"}

#: job -> artifact name -> file (or folder, or file stem for safetensors + JSON pairs) in its folder
ARTIFACTS: dict[str, dict[str, str]] = {
    "validate": {"customers": "customers.parquet", "events": "events.parquet", "texts": "texts.parquet",
                 "schema": "schema.json", "report": "validation.json", "rejects": "rejects", "pii": "pii.parquet"},
    "features": {"table": "features.parquet", "matrix": "matrix.parquet", "featurizer": "featurizer.json",
                 "transform": "transform.json", "metrics": "metrics.json"},
    "text": {"embeddings": "embeddings.parquet", "parts": "parts", "metrics": "metrics.json",
             "static_model": "static_model"},
    "journeys": {"embeddings": "embeddings.parquet", "encoder": "encoder", "encoder_meta": "encoder.json",
                 "encoder_weights": "encoder.safetensors", "vocabularies": "vocabularies.json",
                 "checkpoints": "checkpoints", "metrics": "metrics.json"},
    "fuse": {"fused": "fused.parquet", "matrix": "fused.npy", "transform": "transform",
             "transform_meta": "transform.json", "metrics": "metrics.json"},
    "segment": {"segments": "segments.parquet", "model": "kmeans", "segmentation": "segmentation.json",
                "k_selection": "k_selection.json", "k_selection_svg": "k_selection.svg", "metrics": "metrics.json"},
    "profile": {"scores": "customer_scores.parquet", "profiles": "profiles.json", "profiles_table": "profiles.parquet",
                "lifts": "lifts.parquet", "report": "report.html", "metrics": "metrics.json"},
    "lookalike": {"audience": "audience.parquet", "reach_curve": "reach_curve.json",
                  "reach_curve_svg": "reach_curve.svg", "index": "index", "metrics": "metrics.json",
                  "report": "report.html"},
    "assign": {"ledger": "ledger.json", "increments": "increments"},
    "audience": {"table": "{name}.parquet", "summary": "{name}.json"},  # one pair per audience.name
    "export": {"table": "{name}.{format}", "summary": "{name}.json"},  # one pair per export.name
}


def job_dir(work: str | os.PathLike, job: str) -> Path:
    """The folder a job writes into (its staging folder while that job runs, see runtime/publish).

    Asked by a running job for another job's folder, it checks that folder first: complete as
    published, and made from the upstream runs there now (an error naming the job to re-run).
    """
    if job not in JOB_DIRS:
        raise KeyError(f"unknown job {job!r}; jobs with artifacts: {sorted(JOB_DIRS)}")
    staged = staged_folder(work, job)
    if staged is not None:
        return staged
    folder = Path(work) / JOB_DIRS[job]
    check_upstream(work, job, folder, JOB_DIRS)
    return folder


def read_checked(work: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path``, checked like :func:`job_dir` checks a folder when it lies in a job folder of ``work``.

    For the inputs a config names by path (``fuse.blocks.features.path``): a path into another
    job's folder gets the same checks as one asked for by name.
    """
    path = Path(path)
    try:
        relative = path.resolve().relative_to(Path(work).resolve())
    except ValueError:
        return path
    for job, name in JOB_DIRS.items():
        if relative.parts and relative.parts[0] == name:
            job_dir(work, job)
    return path


def artifact(work: str | os.PathLike, job: str, name: str, /, **fields: str) -> Path:
    """Path of artifact ``name`` of ``job`` in the work directory ``work``.

    A job writing one file per named list spells it as a template (``"{name}.parquet"``): its
    ``fields`` fill it in, e.g. ``artifact(work, "audience", "table", name="at_risk_vip")``.
    """
    names = ARTIFACTS[job] if job in ARTIFACTS else {}
    if name not in names:
        raise KeyError(f"job {job!r} has no artifact {name!r}; its artifacts: {sorted(names)}")
    file = names[name]
    for key, value in fields.items():
        file = file.replace("{" + key + "}", str(value))
    return job_dir(work, job) / file


def manifest_path(work: str | os.PathLike, job: str) -> Path:
    """The run manifest every job writes (seed, config hash, versions, result)."""
    return Path(work) / "manifests" / f"{job}.json"
