"""``gpuseg assign``: the saved models of a finished run applied to newer data; nothing is refitted.

The data config is read as for ``gpuseg validate`` (point ``data.*`` / ``paths.data_dir`` at the
newer snapshot, set ``data.as_of`` later) and validated into ``assign/<as_of>/input/``; files of
``assign.input`` not consumed before are validated once into ``assign/increments/`` and recorded
in ``assign/ledger.json``. Every customer is then assigned in one streaming pass to the saved
centres, with hysteresis against the previous segments (the latest earlier assign run of the
same model, else the training segments). Outputs, in ``assign/<as_of>/``: ``segments.parquet``,
``transitions.parquet``, ``movers.parquet``, ``drift.json``, ``changes.html`` (the "Changes since
<previous as_of>" page) and the state the next run reads (``state.parquet``: pending moves and
their votes, ``features.parquet``: the raw features).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf

from gpuseg.cluster.confidence import calibrated_confidence, margin
from gpuseg.data.events import to_microseconds
from gpuseg.data.mapping import DataMapping
from gpuseg.data.validate import validate_tables
from gpuseg.dynamics.assign import (
    NONE,
    as_of_folder,
    assign_stream,
    flip_flops,
    folder_as_of_us,
    top_moves,
    transitions,
)
from gpuseg.dynamics.drift import psi_table
from gpuseg.dynamics.ledger import Ledger, input_files, sha256_of
from gpuseg.dynamics.rebuild import Trained, load_trained
from gpuseg.jobs.common import data_as_of, data_mapping, finish, staged, start, work_dir
from gpuseg.report.changes import profile_names, render_changes
from gpuseg.report.html import write_report
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import read_json, write_json, write_parquet
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.validation import check_int, check_real

log = logging.getLogger(__name__)

#: the files of one assign run, in ``assign/<as_of>/``
RUN_FILES = {"segments": "segments.parquet", "transitions": "transitions.parquet", "movers": "movers.parquet",
             "drift": "drift.json", "changes": "changes.html", "state": "state.parquet", "features": "features.parquet",
             "input": "input"}


def _settings(acfg: DictConfig) -> dict[str, Any]:
    """The ``assign`` settings, checked (each error names its key)."""
    m = 0.0 if acfg.margin is None else acfg.margin
    check_real("assign", "margin", m, low=0.0, high=1.0, closed_high=False, config_key="assign.margin")
    confirm = 0 if acfg.confirm_runs is None else acfg.confirm_runs
    check_int("assign", "confirm_runs", confirm, low=0, config_key="assign.confirm_runs")
    for key in ("chunk_rows", "psi_bins"):
        check_int("assign", key, acfg[key], low=1 if key == "chunk_rows" else 2, config_key=f"assign.{key}")
    check_int("assign", "movers_top_features", acfg.movers_top_features, low=0,
              config_key="assign.movers_top_features")
    thresholds = OmegaConf.to_container(acfg.thresholds, resolve=True)
    for key, value in thresholds.items():
        check_real("assign", f"thresholds.{key}", value, low=0.0, allow_none=True,
                   config_key=f"assign.thresholds.{key}")
    exempt = acfg.get("psi_exempt") or []
    if isinstance(exempt, str) or not all(isinstance(f, str) for f in exempt):
        raise ConfigError(f"assign.psi_exempt must be a list of feature names, got {exempt!r}",
                          config_key="assign.psi_exempt")
    return {"psi_exempt": [str(f) for f in exempt],
            "margin": float(m), "confirm_runs": int(confirm), "chunk_rows": int(acfg.chunk_rows),
            "psi_bins": int(acfg.psi_bins), "top": int(acfg.movers_top_features), "thresholds": thresholds}


# ------------------------------------------------------------------------------------ inputs


def _canonical(folder: Path, table: str) -> Path | None:
    path = folder / "validated" / f"{table}.parquet"
    return path if path.exists() else None


def _increment(data: dict[str, Any], path: Path, table: str, folder: Path, customers: Path | None) -> None:
    """Validate one incremental file (mapped like ``data.<table>``) into ``folder/validated``."""
    spec = {k: v for k, v in (data.get(table) or {}).items() if k not in ("query", "format")}
    if not spec.get("columns"):
        raise ConfigError(f"assign.input holds {table} file '{path}', but data.{table} maps no columns",
                          config_key=f"data.{table}.columns")
    spec["path"] = str(path)
    known = {"path": str(customers), "columns": {"customer_id": "customer_id"}} if customers else {"path": None}
    mapping = {"customers": known if table == "texts" else {"path": None}, "events": {"path": None},
               "texts": {"path": None}, table: spec, "policy": data.get("policy"),
               "batch_size": data.get("batch_size")}
    if folder.exists():
        shutil.rmtree(folder)
    # no as_of here: an increment may hold only events after this run's cut-off (they count later)
    validate_tables(DataMapping.from_dict(mapping, prefix="data"), folder)


def _consume(cfg: DictConfig, out: Path, as_of: str, as_of_us: int, customers: Path) -> tuple[Ledger, list[dict]]:
    """Consume the new files of ``assign.input`` (validated once each) and return the ledger."""
    ledger = Ledger.load(out / "ledger.json")
    consumed = []
    if cfg.assign.input is None:
        return ledger, consumed
    data = data_mapping(cfg)
    found = input_files(Path(str(cfg.assign.input)))
    # events first: the customers they add are known to the texts files of the same run
    for path, table in sorted(found, key=lambda f: (f[1] != "events", str(f[0]))):
        digest = sha256_of(path)
        if ledger.known(digest) is not None:
            continue
        target = out / "increments" / digest[:16]
        try:
            _increment(data, path, table, target, customers if table == "texts" else None)
        except UserInputError as exc:
            raise UserInputError(f"assign.input file '{path}': {exc}", config_key="assign.input") from None
        consumed.append(ledger.consume(path, digest, table, as_of, as_of_us))
        log.info("assign: consumed %s file '%s' (%s)", table, path, digest[:12])
    return ledger, consumed


def _merge(base: Path | None, parts: list[Path], folder: Path) -> Path | None:
    """One canonical table (a folder of Parquet parts) from the snapshot's and the increments'."""
    files = [p for p in [base, *parts] if p is not None]
    if not parts:
        return base
    folder.mkdir(parents=True, exist_ok=True)
    schema = pq.read_schema(files[0])
    for i, path in enumerate(files):
        table = pq.read_table(path)
        table = table.select([n for n in schema.names]).cast(schema) if i else table
        write_parquet(folder / f"part-{i:05d}.parquet", table)
    return folder


def _union_customers(customers: pa.Table, extra: list[Path]) -> pa.Table:
    """The snapshot's customers, then those the increments add (first seen first), columns aligned."""
    tables = [customers]
    for path in extra:
        add = pq.read_table(path)
        add = add.filter(pc.invert(pc.is_in(add["customer_id"], value_set=pa.concat_arrays(
            [t["customer_id"].combine_chunks() for t in tables]))))
        cols = {n: add[n].cast(customers.schema.field(n).type) if n in add.column_names
                else pa.nulls(add.num_rows, customers.schema.field(n).type) for n in customers.column_names}
        tables.append(pa.table(cols, schema=customers.schema))
    return pa.concat_tables(tables).combine_chunks()


def _inputs(cfg: DictConfig, out: Path, run: Path, as_of: str, as_of_us: int) -> dict[str, Any]:
    """Validate the snapshot into this run's folder, consume new files, merge what counts at as_of."""
    data = data_mapping(cfg)
    roles = data.get("roles")
    snapshot = run / RUN_FILES["input"]
    validate_tables(DataMapping.from_dict(data), snapshot, as_of=as_of, roles=roles, progress=bool(cfg.progress))
    customers_path = _canonical(snapshot, "customers")
    ledger, consumed = _consume(cfg, out, as_of, as_of_us, customers_path)
    used = ledger.up_to(as_of_us)
    parts = {t: [out / "increments" / e["sha256"][:16] / "validated" / f"{t}.parquet" for e in used
                 if e["table"] == t] for t in ("events", "texts")}
    customers = _union_customers(pq.read_table(customers_path),
                                 [out / "increments" / e["sha256"][:16] / "validated" / "customers.parquet"
                                  for e in used if e["table"] == "events"])
    return {"customers": customers, "ledger": ledger, "consumed": consumed,
            "increments": [e["sha256"] for e in used],
            "events": _merge(_canonical(snapshot, "events"), parts["events"], snapshot / "events"),
            "texts": _merge(_canonical(snapshot, "texts"), parts["texts"], snapshot / "texts")}


# ---------------------------------------------------------------------------------- previous


def _aligned(ids: pa.Array, table: pa.Table, column: str, fill: int = NONE) -> np.ndarray:
    """``table[column]`` (int) for each of ``ids`` (``fill`` where the id or the value is absent)."""
    index = pc.index_in(ids, value_set=table["customer_id"].combine_chunks())
    values = table[column].combine_chunks().fill_null(fill).to_numpy(zero_copy_only=False).astype(np.int64)
    idx = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(idx >= 0, values[np.maximum(idx, 0)] if len(values) else fill, fill)


def _previous(out: Path, trained: Trained, ids: pa.Array, as_of_us: int) -> dict[str, Any]:
    """The latest earlier assign run of this model, else the training segments, aligned to ``ids``."""
    earlier = []
    for folder in out.iterdir() if out.is_dir() else []:
        when = folder_as_of_us(folder.name)
        drift = folder / RUN_FILES["drift"]
        if when is None or when >= as_of_us or not drift.exists():
            continue
        if read_json(drift).get("model_id") == trained.model_id:
            earlier.append((when, folder))
    n = len(ids)
    if not earlier:
        seg = trained.segments()
        return {"source": "segment", "as_of": None, "segment": _aligned(ids, seg, "segment"),
                "before": np.full(n, NONE, np.int64), "candidate": None, "votes": None,
                "features": pq.read_table(artifact(trained.work, "features", "table"))}
    _, folder = max(earlier)
    seg = pq.read_table(folder / RUN_FILES["segments"])
    state = pq.read_table(folder / RUN_FILES["state"])
    return {"source": f"assign/{folder.name}", "as_of": folder.name, "segment": _aligned(ids, seg, "segment"),
            "before": _aligned(ids, seg, "previous_segment"), "candidate": _aligned(ids, state, "candidate"),
            "votes": _aligned(ids, state, "votes", fill=0), "features": pq.read_table(folder / RUN_FILES["features"])}


# ----------------------------------------------------------------------------------- outputs


def _numeric(table: pa.Table) -> list[str]:
    return [n for n in table.column_names if n != "customer_id"
            and (pa.types.is_floating(table[n].type) or pa.types.is_integer(table[n].type))]


def _columns(table: pa.Table, names: list[str], ids: pa.Array | None = None) -> np.ndarray:
    """float64 matrix of ``names`` (NaN for nulls), rows in the order of ``ids`` (NaN rows when absent)."""
    x = np.column_stack([table[n].cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
                         for n in names]) if names else np.zeros((table.num_rows, 0))
    if ids is None:
        return x
    idx = pc.index_in(ids, value_set=table["customer_id"].combine_chunks()).fill_null(-1)
    idx = idx.to_numpy(zero_copy_only=False).astype(np.int64)
    rows = x[np.maximum(idx, 0)] if len(x) else np.full((len(idx), len(names)), np.nan)
    rows[idx < 0] = np.nan
    return rows


def _movers(trained: Trained, now: pa.Table, before: pa.Table, ids: pa.Array, rows: np.ndarray,
            previous: np.ndarray, segment: np.ndarray, top: int) -> pa.Table:
    """Movers with the features that moved most, in profile z-score units (training population sd)."""
    train = pq.read_table(artifact(trained.work, "features", "table"))
    names = [n for n in _numeric(now) if n in set(_numeric(before)) & set(_numeric(train))]
    moved = ids.take(pa.array(rows, pa.int64()))
    scale = np.nanstd(_columns(train, names), axis=0) if names and train.num_rows else np.zeros(len(names))
    feats, moves = top_moves(_columns(before, names, moved), _columns(now, names, moved), scale, names, top) \
        if len(rows) else ([], [])
    return pa.table({"customer_id": moved, "from": pa.array(previous[rows].astype(np.int32)),
                     "to": pa.array(segment[rows].astype(np.int32)),
                     "features": pa.array(feats, pa.list_(pa.string())),
                     "moves_z": pa.array(moves, pa.list_(pa.float64()))})


def _drift(trained: Trained, tabular: np.ndarray, segment: np.ndarray, conf: np.ndarray, outlier: np.ndarray,
           settings: dict[str, Any]) -> dict[str, Any]:
    """Shares, PSI, confidence and outliers against training, each with its threshold and verdict."""
    thr, k, reasons = settings["thresholds"], trained.n_clusters, []
    seg_train = trained.segments()
    train_labels = seg_train["segment"].to_numpy().astype(np.int64)
    n, n_train = max(1, len(segment)), max(1, len(train_labels))
    share_now = np.bincount(segment, minlength=k) / n
    share_train = np.bincount(train_labels, minlength=k) / n_train
    shares = [{"segment": c, "train_share": round(float(share_train[c]), 6), "share": round(float(share_now[c]), 6),
               "shift": round(float(share_now[c] - share_train[c]), 6)} for c in range(k)]
    if thr.get("share_shift") is not None:
        reasons += [f"segment {s['segment']} share moved {s['shift']:+.3f} (threshold {thr['share_shift']})"
                    for s in shares if abs(s["shift"]) > thr["share_shift"]]
    train_matrix = pq.read_table(artifact(trained.work, "features", "matrix"))
    names = list(trained.transform.feature_names_out_)
    psi = psi_table(_columns(train_matrix, names), tabular, names, bins=settings["psi_bins"])
    exempt = [f for f in settings["psi_exempt"] if f in psi]
    if thr.get("psi") is not None:
        reasons += [f"feature {f} PSI {v:.3f} (threshold {thr['psi']})" for f, v in psi.items()
                    if v > thr["psi"] and f not in exempt]
    conf_train = float(seg_train["confidence"].to_numpy().mean()) if seg_train.num_rows else float("nan")
    out_train = float(seg_train["is_outlier"].to_numpy(zero_copy_only=False).mean()) if seg_train.num_rows else 0.0
    confidence = {"train": round(conf_train, 6), "now": round(float(conf.mean()), 6) if len(conf) else None}
    confidence["drop"] = None if confidence["now"] is None else round(conf_train - confidence["now"], 6)
    if thr.get("confidence_drop") is not None and confidence["drop"] is not None \
            and confidence["drop"] > thr["confidence_drop"]:
        reasons.append(f"mean confidence fell by {confidence['drop']:.3f} (threshold {thr['confidence_drop']})")
    outliers = {"train": round(out_train, 6), "now": round(float(outlier.mean()), 6) if len(outlier) else None}
    outliers["increase"] = None if outliers["now"] is None else round(outliers["now"] - out_train, 6)
    limit = thr.get("outlier_share_increase")
    if limit is not None and outliers["increase"] is not None and outliers["increase"] > limit:
        reasons.append(f"outlier share rose by {outliers['increase']:.3f} (threshold {limit})")
    for reason in reasons:
        log.warning("assign drift: %s", reason)
    return {"segment_share": shares, "psi": psi, "psi_max": max(psi.values()) if psi else None,
            "psi_exempt": exempt,
            "mean_confidence": confidence, "outlier_share": outliers, "centre_shift": None,
            "thresholds": thr, "refit_recommended": bool(reasons), "reasons": reasons}


def _changes_page(work: Path, trained: Trained, drift: dict[str, Any], trans: pa.Table, movers: pa.Table) -> str:
    """The run's "Changes since <previous as_of>" page, segments named as in the profile when there is one."""
    names: dict[int, str] = {}
    try:
        path = artifact(work, "profile", "profiles")
        if path.exists():
            names = profile_names(read_json(path), trained.n_clusters)
    except (UserInputError, OSError, ValueError) as exc:  # a stale or damaged profile: the page says "Segment N"
        log.warning("assign: segment names for changes.html not read from the profile (%s)", exc)
    previous = drift["previous"]["as_of"]
    if previous is None:  # compared with the training segments: the cut-off the features were built at
        metrics = artifact(work, "features", "metrics")
        previous = (read_json(metrics).get("as_of") if metrics.exists() else None) or "training"
    return render_changes(trans, movers, drift, previous_as_of=str(previous), names=names)


@staged("assign")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Assign every customer of the data as of ``data.as_of`` with the saved models; write drift."""
    ctx = start(cfg, "assign", needs_device=True)
    device: torch.device = ctx["device"]
    work = work_dir(cfg)
    settings = _settings(cfg.assign)
    as_of = data_as_of(cfg)
    as_of_us = to_microseconds(as_of)
    trained = load_trained(work, device)  # every artifact checked before anything is read or written
    out = job_dir(work, "assign")
    run_dir = out / as_of_folder(as_of)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a re-run at the same as_of replaces that run (the staged copy only)
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    inputs = _inputs(cfg, out, run_dir, as_of, as_of_us)
    built = trained.rebuild(inputs["events"], inputs["texts"], inputs["customers"], as_of,
                            half_life_days=float(cfg.text.half_life_days), progress=bool(cfg.progress))
    ids, n = built["ids"], len(built["ids"])
    prev = _previous(out, trained, ids, as_of_us)
    t1 = time.perf_counter()
    x = torch.from_numpy(built["x"]).to(device)
    res = assign_stream(trained.model, x, prev["segment"], margin=settings["margin"],
                        confirm_runs=settings["confirm_runs"], candidate=prev["candidate"], votes=prev["votes"],
                        chunk_rows=settings["chunk_rows"])
    assign_seconds = time.perf_counter() - t1

    seg_meta = trained.segmentation
    cal = seg_meta.get("calibration") or {}
    m = margin(res.distance, res.other)
    conf = m if cal.get("a") is None else calibrated_confidence(m, cal["a"], cal["b"])
    outlier = res.distance > np.asarray(seg_meta["outlier_thresholds"], dtype=np.float64)[res.segment]
    macro = np.asarray(seg_meta["macro"]["of_segment"], dtype=np.int64)
    known = prev["segment"] >= 0
    changed = known & (res.segment != prev["segment"])
    flips = flip_flops(prev["before"], prev["segment"], res.segment)
    with_history = int(((prev["before"] >= 0) & known).sum())

    segments = pa.table({
        "customer_id": ids,
        "segment": pa.array(res.segment.astype(np.int32)),
        "macro_segment": pa.array(macro[res.segment].astype(np.int32)),
        "confidence": pa.array(conf.astype(np.float32)),
        "is_outlier": pa.array(outlier),
        "previous_segment": pa.array(prev["segment"].astype(np.int32), mask=~known),
        "changed": pa.array(changed),
    })
    pending = np.flatnonzero(res.candidate >= 0)
    state = pa.table({"customer_id": ids.take(pa.array(pending, pa.int64())),
                      "candidate": pa.array(res.candidate[pending].astype(np.int32)),
                      "votes": pa.array(res.votes[pending].astype(np.int32))})
    movers = _movers(trained, built["table"], prev["features"], ids, np.flatnonzero(changed), prev["segment"],
                     res.segment, settings["top"])
    drift = {
        "schema_version": 1,
        "as_of": as_of,
        "model_id": trained.model_id,
        "previous": {"source": prev["source"], "as_of": prev["as_of"]},
        "n_customers": n,
        "n_new_customers": int((~known).sum()),
        "n_changed": int(changed.sum()),
        "changed_share": round(float(changed.sum() / max(1, known.sum())), 6),
        "n_held": int(res.held.sum()),
        "n_pending": int(len(pending)),
        "flip_flops": int(flips.sum()),
        "flip_flop_rate": round(float(flips.sum() / with_history), 6) if with_history else None,
        "hysteresis": {"margin": settings["margin"], "confirm_runs": settings["confirm_runs"] or None},
        "increments": inputs["increments"],
        **_drift(trained, built["tabular"], res.segment, conf, outlier, settings),
    }
    trans = transitions(prev["segment"], res.segment)
    page = _changes_page(work, trained, drift, trans, movers)
    # everything is computed before anything is written (and the folder is published as a whole)
    write_parquet(run_dir / RUN_FILES["segments"], segments)
    write_parquet(run_dir / RUN_FILES["transitions"], trans)
    write_parquet(run_dir / RUN_FILES["movers"], movers)
    write_parquet(run_dir / RUN_FILES["state"], state)
    write_parquet(run_dir / RUN_FILES["features"], built["table"])
    write_json(run_dir / RUN_FILES["drift"], drift)
    write_report(run_dir / RUN_FILES["changes"], page)
    inputs["ledger"].save(artifact(work, "assign", "ledger"))
    seconds = time.perf_counter() - t0
    log.info("assign %s: %d customers (%d new), %d changed segment, %d held by hysteresis; refit %s",
             as_of, n, drift["n_new_customers"], drift["n_changed"], drift["n_held"],
             "recommended" if drift["refit_recommended"] else "not needed")
    result = {**{key: drift[key] for key in ("as_of", "n_customers", "n_new_customers", "n_changed",
                                             "changed_share", "n_held", "flip_flop_rate", "refit_recommended",
                                             "reasons", "psi_max")},
              "consumed": [e["path"] for e in inputs["consumed"]], "device": str(device),
              "customers_per_s": round(n / assign_seconds, 1) if assign_seconds > 0 else None,
              "seconds": round(seconds, 3), "output_dir": str(run_dir),
              "segments_path": str(run_dir / RUN_FILES["segments"]), "drift_path": str(run_dir / RUN_FILES["drift"]),
              "changes_path": str(run_dir / RUN_FILES["changes"])}
    return finish(cfg, "assign", ctx["manifest"], result)

