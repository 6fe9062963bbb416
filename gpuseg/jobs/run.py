"""``gpuseg run``: chain the pipeline's jobs; a first run makes synthetic data.

Under torchrun (``torchrun --nproc_per_node N -m gpuseg run``) every rank chains the same
stages: the jobs that share their work (text, journeys, segment) run on every rank, the others
on rank 0 alone while the rest wait (see :func:`gpuseg.jobs.common.staged`). Rank 0 decides
which stages are reused and writes the run's records; every artifact is written once.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from gpuseg.jobs import generate, registry, reuse
from gpuseg.jobs.common import finish, join_process_group, start, table_configured, work_dir
from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.errors import ConfigError
from gpuseg.runtime.io import read_json
from gpuseg.runtime.layout import manifest_path

log = logging.getLogger(__name__)

#: stages that have nothing to do without an input table (a customers-only snapshot has no events)
_STAGE_NEEDS = {"text": "texts", "journeys": "events"}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run ``stages`` in order and return each stage's result plus where the outputs are."""
    ctx = start(cfg, "run", needs_device=True)
    place = join_process_group(cfg)  # once for the process: every job then finds the group
    work = work_dir(cfg)
    results: dict[str, Any] = {}
    if cfg.data.get("generate_if_missing", False) and ddp.broadcast_int(int(place.is_main and not generate.exists(cfg))):
        log.warning("no dataset in %s: generating the synthetic dataset there (point paths.data_dir at your "
                    "files and choose a data config, e.g. data=custom, to use your own)", cfg.data.dir)
        results["generate"] = ddp.on_main(lambda: generate.run(cfg), what="gpuseg generate") or {}
    force = bool(cfg.get("force", False))
    record = reuse.recorded(work)
    prints = reuse.known_prints(work, record)
    reused: list[str] = []
    for stage in cfg.stages:
        if stage not in registry.JOBS or stage == "run":
            raise ConfigError(f"unknown stage {stage!r}; stages are jobs among "
                              f"{[j for j in registry.JOBS if registry.available(j) and j != 'run']}",
                              config_key="stages")
        if not registry.available(stage):
            raise ConfigError(f"stage {stage!r} is not available in this version of gpuseg", config_key="stages")
        missing = _STAGE_NEEDS.get(stage)
        if missing and not table_configured(cfg, missing):
            log.info("== %s: skipped (this data has no %s table) ==", stage, missing)
            continue
        prints[stage] = reuse.fingerprint(cfg, stage, prints)
        # rank 0's judgement, for every rank: the ranks must run the same stages
        if not force and ddp.broadcast_int(int(place.is_main and reuse.reusable(work, stage, prints[stage], record))):
            log.info("== %s: reused (same inputs and config as its last run; force=true runs it again) ==", stage)
            results[stage] = read_json(manifest_path(work, stage)).get("result", {})
            reused.append(stage)
            continue
        log.info("== %s ==", stage)
        results[stage] = registry.load(stage).run(cfg)
        if place.is_main:
            reuse.remember(work, stage, prints[stage], record)
    outputs = {"work_dir": str(work.resolve())}
    for stage, result in results.items():
        for key, value in result.items():
            if key.endswith(("_path", "_dir")) or key in ("output_dir", "outputs"):
                outputs[f"{stage}.{key}"] = value
    result = {"stages": list(results), "reused": reused, "outputs": outputs, "results": results,
              "world_size": place.world}
    if not place.is_main:
        return {**result, "rank": place.rank}
    return finish(cfg, "run", ctx["manifest"], result)
