"""``gpuseg features``: RFM+ features at ``data.as_of`` for every customer, and their transform."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from gpuseg.features.rfm import RFMFeaturizer
from gpuseg.features.transform import TabularTransform
from gpuseg.jobs.common import (
    data_as_of,
    finish,
    has_validated_table,
    load_validated,
    staged,
    start,
    work_dir,
)
from gpuseg.runtime.errors import ConfigError
from gpuseg.runtime.io import write_json, write_parquet
from gpuseg.runtime.layout import artifact, job_dir

log = logging.getLogger(__name__)


def features_dir(work: Path) -> Path:
    """Folder of the features block artifacts."""
    return job_dir(work, "features")


def _check_purchases(raw: pa.Table, schema: dict[str, Any]) -> None:
    """A role mapping under which nobody ever purchased gives RFM features of zeros: an error."""
    n_events = raw["n_events"].to_numpy(zero_copy_only=False)
    purchases = raw["n_purchase_events"].to_numpy(zero_copy_only=False)
    if np.any(n_events > 0) and not np.any(purchases > 0):
        types = list((schema.get("events") or {}).get("event_types") or {})
        raise ConfigError(
            f"no event before as_of is a purchase under data.roles.purchase, so frequency and monetary "
            f"value would be zero for every customer; the event types in the data are {types[:20]}: "
            "list the purchase types there, e.g. data.roles.purchase=[order]", config_key="data.roles.purchase")


@staged("features")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Compute the raw RFM+ table and the scaled model matrix, and save the fitted transforms."""
    ctx = start(cfg, "features")
    work = work_dir(cfg)
    schema, customers = load_validated(work)
    fcfg = cfg.features
    as_of = data_as_of(cfg)
    if schema.get("as_of") not in (None, as_of):
        log.warning("data was validated with as_of=%s but features use as_of=%s", schema["as_of"], as_of)
    t0 = time.perf_counter()
    ids = customers["customer_id"].combine_chunks()
    numeric_attrs = list(schema["customers"]["numeric"])
    categorical_attrs = list(schema["customers"]["categorical"])
    events = artifact(work, "validate", "events")
    texts = artifact(work, "validate", "texts") if has_validated_table(work, "texts") else None
    featurizer = None
    if has_validated_table(work, "events"):
        featurizer = RFMFeaturizer(
            as_of=as_of,
            roles=OmegaConf.to_container(cfg.data.roles, resolve=True),
            recent_window_days=int(fcfg.recent_window_days),
            top_n_event_types=int(fcfg.top_n_event_types),
            top_n_channels=int(fcfg.top_n_channels),
            top_n_categories=int(fcfg.top_n_categories),
            progress=bool(cfg.progress),
        )
        raw = featurizer.fit(events, texts_path=texts).transform(events, ids, texts_path=texts)
        _check_purchases(raw, schema)
    else:
        # a customers-only snapshot: the features are its attributes, with no event columns of zeros
        if not numeric_attrs + categorical_attrs:
            raise ConfigError("nothing to segment on: the data have no events table and no customer "
                              "attributes; map attribute columns (data.customers.numeric / categorical) "
                              "or an events table", config_key="data.customers.numeric")
        log.info("features: no events table, the features are the %d customer attributes",
                 len(numeric_attrs) + len(categorical_attrs))
        raw = pa.table({"customer_id": ids})
    table = raw
    for name in numeric_attrs + categorical_attrs:
        # attribute names may collide with feature names: prefix them so nothing is overwritten
        column = f"attr_{name}" if name in table.column_names else name
        table = table.append_column(column, customers[name])
    attr_names = [f"attr_{n}" if n in raw.column_names else n for n in numeric_attrs + categorical_attrs]
    categorical = attr_names[len(numeric_attrs):]
    tcfg = fcfg.transform
    # labels (e.g. churned) are outcomes, never features: they are not in `table` at all
    transform = TabularTransform(
        numeric=[c for c in table.column_names if c != "customer_id" and c not in categorical],
        categorical=categorical,
        log1p=tcfg.log1p,
        skew_threshold=float(tcfg.skew_threshold),
        top_n_categories=int(tcfg.top_n_categories),
        scaling=str(tcfg.scaling),
    )
    matrix, names = transform.fit(table).transform(table)
    seconds = time.perf_counter() - t0

    out = features_dir(work)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(artifact(work, "features", "table"), table)
    model = pa.table({"customer_id": table["customer_id"],
                      **{name: pa.array(matrix[:, j]) for j, name in enumerate(names)}})
    write_parquet(artifact(work, "features", "matrix"), model)
    artifact(work, "features", "featurizer").unlink(missing_ok=True)
    if featurizer is not None:
        featurizer.save(artifact(work, "features", "featurizer"))
    transform.save(artifact(work, "features", "transform"))
    no_events = int(np.sum(np.asarray(raw["n_events"].to_numpy(zero_copy_only=False)) == 0)) \
        if "n_events" in raw.column_names else table.num_rows
    metrics = {
        "n_customers": table.num_rows,
        "n_raw_features": table.num_columns - 1,
        "n_model_features": len(names),
        "customers_without_events": no_events,
        "as_of": as_of,
        "seconds": round(seconds, 3),
        "featurizer_stats": getattr(featurizer, "stats_", {}),
        "has_events": featurizer is not None,
    }
    write_json(artifact(work, "features", "metrics"), metrics)
    log.info("features: %d customers x %d model columns (%d without events) in %.1fs",
             table.num_rows, len(names), no_events, seconds)
    result = {**metrics, "output_dir": str(out), "features_path": str(artifact(work, "features", "table")),
              "matrix_path": str(artifact(work, "features", "matrix"))}
    return finish(cfg, "features", ctx["manifest"], result)
