"""What every job does around its work: device, seed, work dir, manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.io import write_json
from gpuseg.runtime.manifest import run_manifest
from gpuseg.runtime.seeding import seed_everything

log = logging.getLogger(__name__)


def work_dir(cfg: DictConfig) -> Path:
    """The project work directory, created if needed."""
    path = Path(cfg.paths.work_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    """Write ``<work_dir>/manifests/<job>.json`` (manifest + result) and return the result."""
    write_json(work_dir(cfg) / "manifests" / f"{job}.json", {**manifest, "result": result})
    return result


def data_mapping(cfg: DictConfig) -> dict[str, Any]:
    """The ``data`` config section as a plain dict, resolved."""
    return OmegaConf.to_container(cfg.data, resolve=True)
