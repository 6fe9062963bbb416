"""``gpuseg features``: RFM+ features at ``data.as_of`` for every customer, and their transform."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from gpuseg.data.schema import validated_dir
from gpuseg.features.rfm import RFMFeaturizer
from gpuseg.features.transform import TabularTransform
from gpuseg.jobs.common import finish, load_validated, start, work_dir
from gpuseg.runtime.io import write_json, write_parquet

log = logging.getLogger(__name__)


def features_dir(work: Path) -> Path:
    """Folder of the features block artifacts."""
    return Path(work) / "features"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Compute the raw RFM+ table and the scaled model matrix, and save the fitted transforms."""
    ctx = start(cfg, "features")
    work = work_dir(cfg)
    schema, customers = load_validated(work)
    folder = validated_dir(work)
    fcfg = cfg.features
    as_of = str(cfg.data.as_of)
    if schema.get("as_of") not in (None, as_of):
        log.warning("data was validated with as_of=%s but features use as_of=%s", schema["as_of"], as_of)
    t0 = time.perf_counter()
    featurizer = RFMFeaturizer(
        as_of=as_of,
        roles=OmegaConf.to_container(cfg.data.roles, resolve=True),
        recent_window_days=int(fcfg.recent_window_days),
        top_n_event_types=int(fcfg.top_n_event_types),
        top_n_channels=int(fcfg.top_n_channels),
        top_n_categories=int(fcfg.top_n_categories),
        progress=bool(cfg.progress),
    )
    texts = folder / "texts.parquet" if (folder / "texts.parquet").exists() else None
    raw = featurizer.fit(folder / "events.parquet", texts_path=texts).transform(
        folder / "events.parquet", customers["customer_id"].combine_chunks(), texts_path=texts)
    numeric_attrs = list(schema["customers"]["numeric"])
    categorical_attrs = list(schema["customers"]["categorical"])
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
    write_parquet(out / "features.parquet", table)
    model = pa.table({"customer_id": table["customer_id"],
                      **{name: pa.array(matrix[:, j]) for j, name in enumerate(names)}})
    write_parquet(out / "matrix.parquet", model)
    featurizer.save(out / "featurizer.json")
    transform.save(out / "transform.json")
    no_events = int(np.sum(np.asarray(raw["n_events"].to_numpy(zero_copy_only=False)) == 0))
    metrics = {
        "n_customers": table.num_rows,
        "n_raw_features": table.num_columns - 1,
        "n_model_features": len(names),
        "customers_without_events": no_events,
        "as_of": as_of,
        "seconds": round(seconds, 3),
        "featurizer_stats": getattr(featurizer, "stats_", {}),
    }
    write_json(out / "metrics.json", metrics)
    log.info("features: %d customers x %d model columns (%d without events) in %.1fs",
             table.num_rows, len(names), no_events, seconds)
    result = {**metrics, "output_dir": str(out), "features_path": str(out / "features.parquet"),
              "matrix_path": str(out / "matrix.parquet")}
    return finish(cfg, "features", ctx["manifest"], result)
