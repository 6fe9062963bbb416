"""``gpuseg validate``: check the mapped inputs and write the canonical tables."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpuseg.data.mapping import DataMapping
from gpuseg.data.validate import validate_tables
from gpuseg.jobs.common import data_as_of, data_mapping, finish, staged, start, work_dir

log = logging.getLogger(__name__)


@staged("validate")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``data.*`` tables into ``<work_dir>/validated``; bad data raises UserInputError."""
    ctx = start(cfg, "validate")
    mapping = DataMapping.from_dict(data_mapping(cfg))
    roles = OmegaConf.to_container(cfg.data.roles, resolve=True) if "roles" in cfg.data else None
    report = validate_tables(mapping, work_dir(cfg), as_of=data_as_of(cfg), roles=roles,
                             progress=bool(cfg.progress))
    for table, r in report["tables"].items():
        rejected = sum(r["rejected"].values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in r["rejected"].items())
        log.info("%s: %d rows read, %d kept, %d rejected%s", table, r["rows_read"], r["rows_kept"],
                 rejected, f" ({reasons})" if reasons else "")
    return finish(cfg, "validate", ctx["manifest"], report)
