"""Run manifest: what ran, with which seed, config and library versions."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

_PACKAGES = ("gpuseg", "torch", "numpy", "pyarrow", "hydra-core", "transformers", "faiss-cpu")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries whose behaviour shapes results."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a plain (resolved) config dictionary."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_manifest(job: str, config: dict[str, Any], seed: int | None, device: str | None) -> dict[str, Any]:
    """Describe one job run; stored beside its artifacts."""
    return {
        "job": job,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "device": device,
        "config_hash": config_hash(config),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "versions": library_versions(),
    }
