"""``gpuseg segment``: k-means segments for every customer, with confidence and outliers."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.cluster._source import Source
from gpuseg.cluster.confidence import (
    calibrated_confidence,
    margin,
    match_labels,
    outlier_thresholds,
    two_nearest,
)
from gpuseg.cluster.hierarchy import choose_n_macro, cut_tree, ward_linkage
from gpuseg.cluster.matching import center_spread, match_centers, reorder_clusters
from gpuseg.cluster.metrics import calinski_harabasz, davies_bouldin, silhouette
from gpuseg.cluster.selection import LABELS, select_k
from gpuseg.jobs.common import (
    customer_label,
    finish,
    load_validated,
    matrix_input,
    memory_budget,
    staged,
    start,
    work_dir,
)
from gpuseg.report.svg import small_multiples
from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import atomic_path, read_json, write_json, write_parquet
from gpuseg.runtime.layout import ARTIFACTS, JOB_DIRS, artifact, job_dir
from gpuseg.runtime.logistic import fit_logistic
from gpuseg.runtime.matrix import BlockFile, MatrixFile, matrix_within
from gpuseg.runtime.tables import join_on_customer_id
from gpuseg.runtime.validation import check_int

log = logging.getLogger(__name__)

def _kmeans(k: int, seed: int, device: torch.device, params: dict[str, Any]) -> MiniBatchKMeans:
    return MiniBatchKMeans(n_clusters=k, random_state=seed, device=device, **params)


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


#: rows per block of the per-customer passes when the matrix is in memory (as before the budget)
_RESIDENT_BLOCK = 65536
#: float32 copies of a block alive at once in a pass (the read block, its device copy, distances,
#: the metrics' float64 temporaries): the block is this share of ``segment.memory_mb``
_BLOCK_COPIES = 8


class _Rows:
    """The input matrix as the job reads it: a tensor on the device, or a :class:`MatrixFile`.

    Indexing gives device tensors either way (a row slice, or the rows of an index array), so
    the k search, the metrics and the per-customer passes need not know where the rows live.
    Per-row results do not depend on the block size, so both give the same segments.
    """

    def __init__(self, data: torch.Tensor | MatrixFile, device: torch.device, block_rows: int):
        self.data, self.device, self.block_rows = data, device, int(block_rows)
        self.shape = tuple(data.shape)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(self.data, torch.Tensor):
            if not isinstance(key, slice):
                key = torch.as_tensor(key, device=self.device)
            return self.data[key]
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return torch.from_numpy(self.data[key]).to(self.device)

    def blocks(self):
        """Row blocks of ``block_rows``, in order, as device tensors."""
        for s in range(0, self.shape[0], self.block_rows):
            yield self[s:s + self.block_rows]

    def fit_input(self, lo: int, hi: int, world: int):
        """What the final fit reads: this rank's rows (all of them without torchrun)."""
        if isinstance(self.data, torch.Tensor):
            return self.data[lo:hi] if world > 1 else self.data
        return _FileSource(self.data.view(lo, hi) if world > 1 else self.data, self.device)


class _FileSource(Source):
    """k-means input read from a :class:`MatrixFile`, in the order a resident tensor gives.

    Mini-batches are the rows of one permutation of all rows, gathered from the file, and
    samples the same sorted draw, so a fit on the file equals one on the matrix in memory.
    Rows were checked finite when the file was opened.
    """

    def __init__(self, data: MatrixFile, device: torch.device):
        super().__init__(device, "X")
        self.data = data
        self.n_samples, self.n_features = data.shape

    def chunks(self, rows, rng=None):
        perm = None if rng is None else rng.permutation(self.n_samples)
        for s in range(0, self.n_samples, rows):
            block = self.data[s:s + rows] if perm is None else self.data.take(perm[s:s + rows])
            yield torch.from_numpy(block).to(self.device)

    def sample(self, m, rng):
        n = self.n_samples
        idx = np.arange(n) if m >= n else np.sort(rng.choice(n, size=m, replace=False))
        return torch.from_numpy(self.data.take(idx)).to(self.device)


def _open_input(source: Path, budget: int, device: torch.device, scratch: contextlib.ExitStack,
                out: Path) -> tuple[pa.Array, _Rows, list[str]]:
    """Ids, rows and column names of the input: whole in memory below ``budget`` bytes, else a file.

    Above the budget the rows are read block by block from the ``.npy`` beside the Parquet file
    (or one streamed into a temporary folder of ``out``), blocks of ``budget / _BLOCK_COPIES``.
    """
    d = len(BlockFile(source, [c for c in pq.ParquetFile(source).schema_arrow.names if c != "customer_id"]).names)
    block_rows = max(1, min(_RESIDENT_BLOCK, budget // (_BLOCK_COPIES * 4 * max(d, 1))))
    folder = scratch.enter_context(tempfile.TemporaryDirectory(dir=out, prefix=".matrix-"))
    ids, matrix, names = matrix_within(source, budget, folder, batch_rows=block_rows)
    if isinstance(matrix, np.ndarray):
        return ids, _Rows(torch.from_numpy(matrix).to(device), device, _RESIDENT_BLOCK), names
    scratch.callback(matrix.close)
    log.info("segment: %d x %d matrix above segment.memory_mb: read from %s in blocks of %d rows",
             *matrix.shape, matrix.path, block_rows)
    return ids, _Rows(matrix, device, block_rows), names


def _nearest_two(model: MiniBatchKMeans, x: _Rows):
    """Nearest and second-nearest centre of every row, block by block (never n x k at once)."""
    parts = [two_nearest(model.transform(block)) for block in x.blocks()]
    return [torch.cat([p[i] for p in parts]).cpu().numpy() for i in range(4)]


def _predict(model: MiniBatchKMeans, x: _Rows) -> np.ndarray:
    """Nearest centre of every row (int64), block by block."""
    return torch.cat([model.predict(block).cpu() for block in x.blocks()]).numpy().astype(np.int64)


#: the value proxy that ``segment.selection.business.value: auto`` takes when the features have it
VALUE_AUTO = "monetary_sum"


def _business(cfg: DictConfig, work: Path, ids: pa.Array) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Churn label and value per customer of ``ids`` for the business separation of each k.

    The label is the validated customers' label column (``segment.selection.business.label``,
    auto: the first label); the value a column of ``features/features.parquet``
    (``segment.selection.business.value``, auto: monetary_sum). What is absent is said, and the
    rule then decides on the evidence (and the figures it has) alone.
    """
    bcfg = cfg.segment.selection.get("business") or {}
    label_setting, value_setting = bcfg.get("label", "auto"), bcfg.get("value", "auto")
    figures: dict[str, np.ndarray] = {}
    sources: dict[str, Any] = {"churn": None, "value": None, "notes": []}
    base = pa.table({"customer_id": ids})
    try:
        schema, customers = load_validated(work)
    except UserInputError:
        schema = customers = None
        if label_setting not in (None, "auto"):
            raise
        sources["notes"].append("no validated customers table: no churn label")
    if customers is not None:
        name, y = customer_label(label_setting, schema, customers, key="segment.selection.business.label")
        if name is None:
            sources["notes"].append("segment.selection.business.label is null: churn spread not used"
                                    if label_setting is None else
                                    "the customers table has no (known) label: churn spread not used")
        else:
            joined = _joined(base, pa.table({"customer_id": customers["customer_id"], "_y": y}), "customers")
            if joined is not None:
                figures["churn"] = joined
                sources["churn"] = f"customers.{name}"
            else:
                sources["notes"].append("the segmented customers are not those of the validated customers "
                                        "table: churn spread not used")
    path = artifact(work, "features", "table")
    if value_setting is None:
        sources["notes"].append("segment.selection.business.value is null: value spread not used")
        return figures, sources
    columns = pq.read_schema(path).names if path.exists() else []
    column = VALUE_AUTO if value_setting == "auto" else str(value_setting)
    if column not in columns:
        if value_setting != "auto":
            raise ConfigError(f"segment.selection.business.value={column!r} is not a column of {path} "
                              f"({'columns: ' + ', '.join(c for c in columns if c != 'customer_id') if columns else 'no such file'})",
                              config_key="segment.selection.business.value")
        sources["notes"].append(f"no {VALUE_AUTO} column in {path.name if columns else 'the work directory'}: "
                                "value spread not used")
        return figures, sources
    table = pq.read_table(path, columns=["customer_id", column])
    values = table[column].cast(pa.float64()).fill_null(np.nan)
    joined = _joined(base, pa.table({"customer_id": table["customer_id"], "_y": values}), str(path))
    if joined is None:
        sources["notes"].append(f"{path.name} lacks some segmented customers: value spread not used")
    else:
        figures["value"] = joined
        sources["value"] = f"features.{column}"
    return figures, sources


def _joined(base: pa.Table, other: pa.Table, name: str) -> np.ndarray | None:
    """Column ``_y`` of ``other`` in ``base``'s customer order, or None when it lacks customers."""
    try:
        return join_on_customer_id(base, other, names=(name,))["_y"].to_numpy(zero_copy_only=False)
    except UserInputError:
        return None


def _k_selection_chart(evidence: dict[str, Any]) -> str:
    """``k_selection.svg``: one panel per criterion, its better direction and floor in the title."""
    ks = [c["k"] for c in evidence["candidates"]]
    lo, hi = evidence["prefer"]

    def title(name: str) -> str:
        better = "higher" if evidence["criteria"].get(name, "higher").startswith("higher") else "lower"
        return f"{LABELS.get(name, name)} ({better} is better)"

    panels = {title(name): (ks, [c[name] for c in evidence["candidates"]])
              for name in ("silhouette", "calinski_harabasz", "davies_bouldin")}
    panels[f"stability (higher; floor {evidence['stability_floor']:.2f})"] = (
        ks, [c["stability"] for c in evidence["candidates"]])
    panels[f"inertia (lower; knee at k={evidence['knee_k']})"] = (ks, [c["inertia"] for c in evidence["candidates"]])
    panels[f"smallest segment share (floor {evidence['min_share']:.0%})"] = (
        ks, [c["min_share"] for c in evidence["candidates"]])
    for name in evidence["business"] or []:
        seps = [c["business"][name] for c in evidence["candidates"]]
        if name == "churn":  # a rate: its spread in rate units
            panels["churn-rate spread across segments (higher)"] = (ks, [sep["spread"] for sep in seps])
        else:  # money: relative to the average customer's, so the axis reads without units
            panels[f"{name} spread / mean {name} (higher)"] = (
                ks, [sep["spread"] / sep["overall"] if sep["overall"] > 0 else float("nan") for sep in seps])
    rule = f"prefer {lo}-{hi}" if evidence["rule"] == "prefer" else evidence["rule"]
    return small_multiples(panels, title=f"k selection: chosen k = {evidence['k']} (rule: {rule}; dashed line)",
                           marker_x=evidence["k"], x_ticks=ks, width=320)


def _choose_k(cfg: DictConfig, x: _Rows, ids: pa.Array, seed: int, device, params,
              work: Path) -> tuple[int, dict | None]:
    scfg = cfg.segment
    if scfg.n_clusters != "auto":
        k = scfg.n_clusters
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"n_clusters must be a positive integer or 'auto', got {k!r}",
                              config_key="segment.n_clusters")
        return int(k), None
    sel = scfg.selection
    rows = _sample(x.shape[0], int(sel.sample_size), seed)
    sample = x[rows]
    k_max = min(int(scfg.k_max), sample.shape[0] - 1)
    ks = list(range(max(2, int(scfg.k_min)), k_max + 1))
    if not ks:
        raise ConfigError(f"no candidate k in [{scfg.k_min}, {scfg.k_max}] for {x.shape[0]} customers",
                          config_key="segment.k_min")
    prefer = list(sel.get("prefer") or [scfg.k_min, scfg.k_max])
    if len(prefer) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in prefer) \
            or not 2 <= prefer[0] <= prefer[1]:
        raise ConfigError(f"segment.selection.prefer must be two integers [low, high] with 2 <= low <= high, "
                          f"got {prefer!r}", config_key="segment.selection.prefer")
    if prefer[1] < int(scfg.k_min) or prefer[0] > int(scfg.k_max):
        raise ConfigError(f"segment.selection.prefer {prefer} lies outside the candidates "
                          f"[segment.k_min, segment.k_max] = [{scfg.k_min}, {scfg.k_max}]",
                          config_key="segment.selection.prefer")
    business, sources = _business(cfg, work, ids.take(pa.array(rows))) if sel.rule == "prefer" else ({}, None)

    # one seeding per candidate is cheap but noisy: a seed on a handful of outliers leaves a tiny
    # segment that the share floor then holds against that k (Online Retail: 23 big buyers at
    # every k >= 5 with one seeding, none with three); the final fit uses segment.kmeans.n_init
    n_init = sel.get("n_init", 3)
    check_int("segment", "selection.n_init", n_init, low=1, config_key="segment.selection.n_init")
    search_params = {**params, "n_init": int(n_init)}

    def fit(k: int, data: torch.Tensor, s: int) -> torch.Tensor:
        return torch.as_tensor(_kmeans(k, s, device, search_params).fit(data).cluster_centers_)

    evidence = select_k(sample, ks, fit, seed=seed, min_share=float(sel.min_share),
                        silhouette_sample=int(sel.silhouette_sample), n_bootstrap=int(sel.n_bootstrap),
                        bootstrap_fraction=float(sel.bootstrap_fraction), rule=str(sel.rule), prefer=prefer,
                        min_stability=float(sel.get("min_stability", 0.6)),
                        stability_tolerance=float(sel.get("stability_tolerance", 0.2)), business=business)
    evidence = {**evidence, "n_customers_searched": len(rows), "business_sources": sources}
    write_json(artifact(work, "segment", "k_selection"), evidence)
    with atomic_path(artifact(work, "segment", "k_selection_svg")) as tmp:
        tmp.write_text(_k_selection_chart(evidence))
    log.info("auto k: %d (%s); knee at %d. %s", evidence["k"], evidence["rule"], evidence["knee_k"],
             evidence["reason"])
    for note in (sources or {}).get("notes", []):
        log.info("auto k: %s", note)
    return int(evidence["k"]), evidence


def _calibrate(cfg, x, labels_full, margins, k, seed, device, params) -> dict[str, Any]:
    """Fit P(same segment on a resampled refit | margin) from bootstrap refits."""
    ccfg = cfg.segment.confidence
    n = x.shape[0]
    if int(ccfg.n_bootstrap) < 1 or k < 2:
        return {"method": "margin", "a": None, "b": None}
    m_all, agree_all = [], []
    for b in range(int(ccfg.n_bootstrap)):
        sub = _sample(n, max(k + 1, min(int(ccfg.sample_size), int(0.8 * n))), seed + 7919 * (b + 1))
        refit = _kmeans(k, seed + b + 1, device, {**params, "n_init": 1}).fit(x[sub])
        other = _predict(refit, x)
        mapped = match_labels(labels_full, other, k, k)
        m_all.append(margins)
        agree_all.append((mapped == labels_full).astype(np.float64))
    m, y = np.concatenate(m_all), np.concatenate(agree_all)
    if y.min() == y.max():
        # every customer kept (or lost) its segment: the calibration is the observed rate
        return {"method": "constant", "a": float(np.log((y[0] + 1e-3) / (1 - y[0] + 1e-3))), "b": 0.0,
                "agreement": float(y.mean())}
    coef, a = fit_logistic(m[:, None], y)
    b = float(coef[0])
    return {"method": "bootstrap_logistic", "a": a, "b": b, "agreement": float(y.mean()),
            "n_bootstrap": int(ccfg.n_bootstrap)}


def _macro(cfg, centers: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    mcfg = cfg.segment.macro
    k = centers.shape[0]
    if mcfg.n_clusters is None or k <= 2:
        return np.arange(k), {"n_clusters": k, "method": "none (one level)"}
    linkage = ward_linkage(centers, np.maximum(counts, 1e-6))
    if mcfg.n_clusters == "auto":
        n = choose_n_macro(linkage, int(mcfg.min_clusters), int(mcfg.max_clusters))
    else:
        n = int(mcfg.n_clusters)
        if not 1 <= n <= k:
            raise ConfigError(f"macro.n_clusters must be in [1, {k}] or auto, got {n}",
                              config_key="segment.macro.n_clusters")
    return cut_tree(linkage, n), {"n_clusters": n, "method": "ward on micro centres weighted by size",
                                  "linkage_heights": linkage[:, 2].tolist()}


def _quality(x: _Rows, labels: np.ndarray, n: int, seed: int, device) -> dict[str, float]:
    """Silhouette (sampled), Calinski-Harabasz and Davies-Bouldin, where they are defined (2 <= k < n)."""
    sample = torch.as_tensor(_sample(n, 20000, seed), device=device)
    lab = torch.as_tensor(labels, device=device)
    n_labels = len(np.unique(labels))
    if not 1 < n_labels < n:
        return {}
    quality = {"calinski_harabasz": calinski_harabasz(x, lab), "davies_bouldin": davies_bouldin(x, lab)}
    if 1 < len(torch.unique(lab[sample])) < len(sample):
        quality["silhouette_sampled"] = silhouette(x[sample], lab[sample], sample_size=None)
    return quality


def _size_notes(counts: np.ndarray, n: int) -> list[str]:
    """A warning when most segments are tiny: k is too large for these customers."""
    tiny = max(5, int(0.001 * n))
    n_tiny = int((counts < tiny).sum())
    if n_tiny <= len(counts) / 2:
        return []
    note = (f"{n_tiny} of {len(counts)} segments have fewer than {tiny} customers ({int((counts == 1).sum())} "
            f"hold a single one): segment.n_clusters is too large for {n} customers")
    log.warning("segment: %s", note)
    return [note]


def _previous_run(previous: Any, columns: list[str]) -> tuple[Path, np.ndarray]:
    """The folder and centres (in id order) of an earlier segment run, checked against this one.

    ``segment.previous`` names that run's segment folder or its work directory.
    """
    names = ARTIFACTS["segment"]
    given = Path(str(previous))
    folder = next((f for f in (given, given / JOB_DIRS["segment"]) if (f / names["segmentation"]).is_file()), None)
    if folder is None:
        raise ConfigError(f"segment.previous='{given}' holds no segment run: point it at an earlier run's "
                          f"segment folder (with {names['segmentation']} and {names['model']}.json) or its "
                          "work directory", config_key="segment.previous")
    before = read_json(folder / names["segmentation"])
    old_columns = [str(c) for c in before.get("columns", [])]
    if old_columns != columns:
        pairs = enumerate(zip(old_columns, columns, strict=False))
        diff = next((f"column {i}: '{a}' then, '{b}' now" for i, (a, b) in pairs if a != b), "")
        raise ConfigError(f"segment.previous='{given}' was fitted on another feature space ({len(old_columns)} "
                          f"columns, now {len(columns)}{'; ' + diff if diff else ''}): ids can only be kept "
                          "between runs on the same columns", config_key="segment.previous")
    old = MiniBatchKMeans.load(folder / names["model"], device="cpu").cluster_centers_
    if old.shape[1] != len(columns):
        raise ConfigError(f"segment.previous='{given}': its model has {old.shape[1]} dimensions, the input "
                          f"{len(columns)}", config_key="segment.previous")
    return folder, np.asarray(old, dtype=np.float64)


def _match_limit(mcfg: DictConfig, old: np.ndarray) -> tuple[float | None, float]:
    """``segment.match.max_distance`` resolved: a number, null (no limit) or auto (relative x spread)."""
    spread = center_spread(old)
    value = mcfg.max_distance
    if value is None:
        return None, spread
    if value == "auto":
        rel = mcfg.relative
        if isinstance(rel, bool) or not isinstance(rel, (int, float)) or not rel > 0:
            raise ConfigError(f"segment.match.relative must be a positive number, got {rel!r}",
                              config_key="segment.match.relative")
        return (None if not np.isfinite(spread) else float(rel) * spread), spread
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"segment.match.max_distance must be auto, null or a non-negative number, got {value!r}",
                          config_key="segment.match.max_distance")
    return float(value), spread


def _keep_ids(cfg: DictConfig, model: MiniBatchKMeans, columns: list[str]) -> dict[str, Any] | None:
    """Renumber a fresh fit so that segments matching the previous run's keep their ids.

    The model's centres are put in id order: every artifact written after this (segments,
    model, thresholds, macro segments, sizes) then carries the kept ids.
    """
    previous = cfg.segment.get("previous")
    if previous in (None, ""):
        return None
    folder, old = _previous_run(previous, columns)
    limit, spread = _match_limit(cfg.segment.match, old)
    match = match_centers(old, model.cluster_centers_, limit)
    reorder_clusters(model, match.order)
    log.info("segment: %d of %d segments keep their id from %s (limit %s); births %s, deaths %s%s",
             len(match.matched), len(match.ids), folder, "none" if limit is None else f"{limit:.4g}",
             match.births or "none", match.deaths or "none",
             f", renumbered {match.renumbered}" if match.renumbered else "")
    return {
        "previous": str(folder), "previous_n_clusters": int(old.shape[0]),
        "max_distance": limit, "spread": spread if np.isfinite(spread) else None,
        "matched": [{"segment": i, "previous_segment": j, "distance": d} for i, j, d in match.matched],
        "births": match.births, "deaths": match.deaths,
        "renumbered": {str(k_): v for k_, v in match.renumbered.items()},
    }


@staged("segment")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Segment every customer of the input matrix and write segments, model and evidence."""
    ctx = start(cfg, "segment", needs_device=True)
    work = work_dir(cfg)
    out = job_dir(work, "segment")
    out.mkdir(parents=True, exist_ok=True)
    source = matrix_input(cfg.segment.input, "segment.input", work)
    budget = memory_budget(cfg, "segment")
    with contextlib.ExitStack() as scratch:  # a streamed input's temporary matrix goes at the end
        ids, x, names = _open_input(source, budget, ctx["device"], scratch, out)
        t0 = time.perf_counter()
        return _segment(cfg, ctx, work, out, source, (ids, names), x, t0)


def _segment(cfg: DictConfig, ctx: dict[str, Any], work: Path, out: Path, source: Path, data: tuple,
             x: _Rows, t0: float) -> dict[str, Any]:
    """Choose k, fit (each torchrun rank its shard) and, on rank 0, describe the segments."""
    device: torch.device = ctx["device"]
    seed = int(cfg.seed)
    ids = data[0]
    n = x.shape[0]
    if n < 2:
        raise UserInputError(f"'{source}' has {n} customer(s); segmentation needs at least 2")
    params = OmegaConf.to_container(cfg.segment.kmeans, resolve=True)
    rank, world = ddp.rank_and_world()
    # under torchrun: k is chosen on rank 0 (a search on a sample), the final fit is shared (each
    # rank's rows, statistics all-reduced, the same model on every rank), rank 0 does the rest
    chosen = ddp.on_main(lambda: _choose_k(cfg, x, ids, seed, device, params, work), what="choosing k")
    k = ddp.broadcast_int(chosen[0] if rank == 0 else 0)
    evidence = chosen[1] if rank == 0 else None
    if k > n:
        raise ConfigError(f"n_clusters={k} is more than the {n} customers", config_key="segment.n_clusters")
    lo, hi = ddp.shard_bounds(n)
    model = _kmeans(k, seed, device, params).fit(x.fit_input(lo, hi, world))
    if rank != 0:
        return {"rank": rank, "world_size": world, "fitted_rows": [lo, hi]}
    with ddp.local_only():  # rank 0 alone from here: its calibration refits are its own
        return _describe(cfg, ctx, work, out, source, data, x, model, evidence, t0, world)


def _describe(cfg: DictConfig, ctx: dict[str, Any], work: Path, out: Path, source: Path, data: tuple,
              x: _Rows, model: MiniBatchKMeans, evidence: dict | None, t0: float,
              world: int) -> dict[str, Any]:
    """Label, calibrate and describe the fitted segments, then write every output."""
    ids, names = data
    device: torch.device = ctx["device"]
    seed, n, k = int(cfg.seed), x.shape[0], int(model.n_clusters)
    params = OmegaConf.to_container(cfg.segment.kmeans, resolve=True)
    matching = _keep_ids(cfg, model, names)
    labels, d1, second, d2 = _nearest_two(model, x)
    m = margin(d1, d2)
    calibration = _calibrate(cfg, x, labels.astype(np.int64), m, k, seed, device, params)
    conf = m if calibration["a"] is None else calibrated_confidence(m, calibration["a"], calibration["b"])
    thresholds = outlier_thresholds(labels, d1, k, float(cfg.segment.outliers.quantile))
    outlier = d1 > thresholds[labels]
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    macro_of, macro_info = _macro(cfg, np.asarray(model.cluster_centers_, dtype=np.float64), counts)
    seconds = time.perf_counter() - t0

    segments = pa.table({
        "customer_id": ids,
        "segment": pa.array(labels.astype(np.int32)),
        "macro_segment": pa.array(macro_of[labels].astype(np.int32)),
        "distance": pa.array(d1.astype(np.float32)),
        "confidence": pa.array(conf.astype(np.float32)),
        "margin": pa.array(m.astype(np.float32)),
        "second_segment": pa.array(np.where(np.isfinite(d2), second, -1).astype(np.int32)),
        "is_outlier": pa.array(outlier),
    })
    # every figure is computed before anything is written: a failure leaves the old outputs whole
    quality = _quality(x, labels, n, seed, device)
    notes = _size_notes(counts, n)
    write_parquet(artifact(work, "segment", "segments"), segments)
    model.save(artifact(work, "segment", "model"))
    segmentation = {
        "schema_version": 1,
        "input": str(source),
        "columns": names,
        "n_clusters": k,
        "macro": {"of_segment": macro_of.tolist(), **{k_: v for k_, v in macro_info.items()
                                                      if k_ != "linkage_heights"}},
        "outlier_quantile": float(cfg.segment.outliers.quantile),
        "outlier_thresholds": thresholds.tolist(),
        "calibration": calibration,
        "model": "kmeans.json",
        **({"matching": matching} if matching else {}),
        "config_hash": ctx["manifest"]["config_hash"],
    }
    write_json(artifact(work, "segment", "segmentation"), segmentation)
    metrics = {
        "n_customers": n,
        "n_features": x.shape[1],
        # above segment.memory_mb the matrix is read from disk by blocks (same results)
        "read_by_blocks": None if isinstance(x.data, torch.Tensor) else x.block_rows,
        "n_clusters": k,
        "n_macro": int(macro_info["n_clusters"]),
        "k_chosen_by": evidence["rule"] if evidence else "config",
        "inertia": float(model.inertia_),
        "n_iter": int(model.n_iter_),
        "sizes": counts.astype(int).tolist(),
        "outlier_rate": float(outlier.mean()),
        "mean_confidence": float(conf.mean()),
        **quality,
        **({"n_matched": len(matching["matched"]), "births": matching["births"], "deaths": matching["deaths"],
            "renumbered": matching["renumbered"]} if matching else {}),
        "notes": notes,
        "device": str(device),
        "world_size": world,
        "seconds": round(seconds, 3),
    }
    write_json(artifact(work, "segment", "metrics"), metrics)
    log.info("segment: %d customers into %d segments (%d macro) in %.1fs", n, k, metrics["n_macro"], seconds)
    result = {**metrics, "output_dir": str(out), "segments_path": str(artifact(work, "segment", "segments"))}
    return finish(cfg, "segment", ctx["manifest"], result)
