"""Where every job's artifacts live in a work directory: the one place that spells their paths.

A job writes only under its own folder (``job_dir``); a reader asks for another job's artifact
by job and name (``artifact(work, "segment", "segments")``), so renaming a file is a change here
and nowhere else, and a typo is an error naming the valid names instead of a missing file.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpuseg.runtime.publish import staged_folder

#: job -> its folder under the work directory
JOB_DIRS = {"validate": "validated", "features": "features", "text": "text", "journeys": "journeys",
            "fuse": "fuse", "segment": "segment", "profile": "profile", "lookalike": "lookalike",
            "assign": "assign", "audience": "audiences", "export": "exports"}

#: job -> artifact name -> file (or folder, or file stem for safetensors + JSON pairs) in its folder
ARTIFACTS: dict[str, dict[str, str]] = {
    "validate": {"customers": "customers.parquet", "events": "events.parquet", "texts": "texts.parquet",
                 "schema": "schema.json", "report": "validation.json", "rejects": "rejects"},
    "features": {"table": "features.parquet", "matrix": "matrix.parquet", "featurizer": "featurizer.json",
                 "transform": "transform.json", "metrics": "metrics.json"},
    "text": {"embeddings": "embeddings.parquet", "parts": "parts", "metrics": "metrics.json"},
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
                  "reach_curve_svg": "reach_curve.svg", "index": "index", "metrics": "metrics.json"},
    "assign": {},
    "audience": {},
    "export": {},
}


def job_dir(work: str | os.PathLike, job: str) -> Path:
    """The folder a job writes into (its staging folder while that job runs, see runtime/publish)."""
    if job not in JOB_DIRS:
        raise KeyError(f"unknown job {job!r}; jobs with artifacts: {sorted(JOB_DIRS)}")
    staged = staged_folder(work, job)
    return staged if staged is not None else Path(work) / JOB_DIRS[job]


def artifact(work: str | os.PathLike, job: str, name: str) -> Path:
    """Path of artifact ``name`` of ``job`` in the work directory ``work``."""
    names = ARTIFACTS[job] if job in ARTIFACTS else {}
    if name not in names:
        raise KeyError(f"job {job!r} has no artifact {name!r}; its artifacts: {sorted(names)}")
    return job_dir(work, job) / names[name]


def manifest_path(work: str | os.PathLike, job: str) -> Path:
    """The run manifest every job writes (seed, config hash, versions, result)."""
    return Path(work) / "manifests" / f"{job}.json"
