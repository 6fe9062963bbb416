"""``gpuseg generate``: write the synthetic dataset (the embedded default) to ``data.dir``."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpuseg.data.synthetic import check_generation_target, generate_synthetic, generated_files
from gpuseg.jobs.common import data_as_of, finish, start
from gpuseg.runtime.errors import ConfigError

log = logging.getLogger(__name__)


def exists(cfg: DictConfig) -> bool:
    """Whether a complete dataset written by the generator (its manifest says so) is in ``data.dir``."""
    files = generated_files(cfg.data.dir)
    return files is not None and all(path.exists() for path in files)


def _transitions(value: Any) -> dict[str, str] | None:
    """``data.generator.transitions`` as a plain mapping of persona names (None: the defaults)."""
    if value is None:
        return None
    if not isinstance(value, DictConfig):
        raise ConfigError(f"data.generator.transitions must map a persona to the persona it moves to, "
                          f"e.g. {{new_customer: eco_planner}}, got {value!r}", config_key="data.generator.transitions")
    # a null target removes a default transition (data.generator.transitions.high_value_loyalist=null)
    return {str(k): str(v) for k, v in OmegaConf.to_container(value).items() if v is not None}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Generate the synthetic tables; refuse to overwrite unless ``overwrite=true``."""
    ctx = start(cfg, "generate")
    if cfg.data.get("name") != "synthetic" or "generator" not in cfg.data:
        raise ConfigError("generate writes the synthetic dataset: use data=synthetic", config_key="data")
    if exists(cfg) and not cfg.get("overwrite", False):
        raise ConfigError(f"'{cfg.data.dir}' already holds a generated dataset; pass overwrite=true to "
                          "replace it", config_key="overwrite")
    # before anything is written: a folder holding the user's own files is never generated into
    check_generation_target(cfg.data.dir)
    gen = cfg.data.generator
    result = generate_synthetic(
        cfg.data.dir,
        n_customers=int(gen.n_customers),
        seed=int(cfg.seed),
        as_of=data_as_of(cfg),
        history_days=int(gen.history_days),
        holdout_days=int(gen.holdout_days),
        chunk_size=int(gen.chunk_size),
        periods=gen.get("periods", 1),
        period_days=gen.get("period_days", 365),
        mover_share=gen.get("mover_share", 0.3),
        transitions=_transitions(gen.get("transitions")),
        amount_drift=gen.get("amount_drift", 0.1),
        progress=bool(cfg.progress),
    )
    log.info("synthetic data written to %s: %s", cfg.data.dir, result["rows"])
    summary = {"output_dir": str(result["out_dir"]), "rows": result["rows"],
               "paths": {name: str(path) for name, path in result["paths"].items()}}
    return finish(cfg, "generate", ctx["manifest"], summary)
