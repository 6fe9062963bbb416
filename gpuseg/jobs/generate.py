"""``gpuseg generate``: write the synthetic dataset (the embedded default) to ``data.dir``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gpuseg.jobs.common import finish, start
from gpuseg.runtime.errors import ConfigError

log = logging.getLogger(__name__)

OUTPUTS = ("customers.parquet", "events.parquet", "texts.parquet", "ground_truth.parquet")


def exists(cfg: DictConfig) -> bool:
    """Whether a generated dataset is already in ``data.dir``."""
    return all((Path(cfg.data.dir) / name).exists() for name in OUTPUTS)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Generate the synthetic tables; refuse to overwrite unless ``overwrite=true``."""
    from gpuseg.data.synthetic import generate_synthetic

    ctx = start(cfg, "generate")
    if cfg.data.get("name") != "synthetic" or "generator" not in cfg.data:
        raise ConfigError("generate writes the synthetic dataset: use data=synthetic", config_key="data")
    if exists(cfg) and not cfg.get("overwrite", False):
        raise ConfigError(f"'{cfg.data.dir}' already holds a dataset; pass overwrite=true to replace it",
                          config_key="overwrite")
    gen = cfg.data.generator
    result = generate_synthetic(
        cfg.data.dir,
        n_customers=int(gen.n_customers),
        seed=int(cfg.seed),
        as_of=str(cfg.data.as_of),
        history_days=int(gen.history_days),
        holdout_days=int(gen.holdout_days),
        chunk_size=int(gen.chunk_size),
        progress=bool(cfg.progress),
    )
    log.info("synthetic data written to %s: %s", cfg.data.dir, result["rows"])
    summary = {"output_dir": str(result["out_dir"]), "rows": result["rows"],
               "paths": {name: str(path) for name, path in result["paths"].items()}}
    return finish(cfg, "generate", ctx["manifest"], summary)
