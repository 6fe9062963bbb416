"""``gpuseg lookalike``: expand seed customers into a ranked audience of lookalikes.

Builds (or reuses) a :class:`~gpuseg.lookalike.LookalikeIndex` over the fused matrix (else the
features matrix) in ``lookalike/index/``, expands the seeds and writes
``lookalike/audience.parquet`` (``[query,] rank, customer_id, score, nearest_seed,
nearest_seed_score``), ``lookalike/reach_curve.json`` (audience size vs the similarity it takes
to reach it, per query) and ``lookalike/reach_curve.svg``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from omegaconf import DictConfig, ListConfig, OmegaConf

from gpuseg.jobs.common import finish, matrix_input, staged, start, work_dir
from gpuseg.lookalike import LookalikeIndex, reach_curve
from gpuseg.report.svg import small_multiples
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import atomic_path, read_json, write_json, write_parquet
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.matrix import read_matrix

log = logging.getLogger(__name__)


def read_seeds(spec: Any) -> dict[str | None, list[str]]:
    """Seed lists from the config value: a list of ids, or a CSV/Parquet/text file.

    Returns ``{None: ids}`` for one audience, or ``{query: ids}`` when the file has a ``query``
    column.
    """
    key = "lookalike.seeds"
    if spec is None:
        raise UserInputError("no seeds given: set lookalike.seeds to a list of customer ids or a file",
                             config_key=key)
    if isinstance(spec, (list, tuple, ListConfig)):
        return {None: [str(s) for s in spec]}
    path = Path(str(spec))
    if not path.exists():
        raise UserInputError(f"seed file '{path}' does not exist (give a list of ids or a .csv/.parquet/.txt file)",
                             config_key=key)
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            table = pq.read_table(path)
        elif name.endswith((".csv", ".csv.gz", ".tsv")):
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t" if ".tsv" in name else ","),
                                   convert_options=pacsv.ConvertOptions(
                                       column_types={"customer_id": pa.string(), "query": pa.string()}))
        else:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            return {None: [line for line in lines if line and line != "customer_id"]}
    except UnicodeDecodeError as exc:
        raise UserInputError(f"seed file '{path}' is not UTF-8 text (byte {exc.start}): save it as UTF-8",
                             config_key=key) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserInputError(f"cannot read seed file '{path}': {exc}", config_key=key) from None
    if "customer_id" not in table.column_names:
        raise UserInputError(f"seed file '{path}' has no customer_id column (columns: {table.column_names})",
                             column="customer_id", config_key=key)
    ids = table["customer_id"].cast(pa.string())
    if "query" not in table.column_names:
        return {None: [i for i in ids.to_pylist() if i is not None]}
    queries = table["query"].cast(pa.string()).to_pylist()
    out: dict[str | None, list[str]] = {}
    for q, i in zip(queries, ids.to_pylist(), strict=True):
        if i is not None:
            out.setdefault(q, []).append(i)
    return out


def _excluded(cfg: DictConfig, work: Path) -> list[str] | None:
    spec = cfg.lookalike.exclude_segment
    if spec is None:
        return None
    wanted = [int(s) for s in (spec if isinstance(spec, (list, ListConfig)) else [spec])]
    path = artifact(work, "segment", "segments")
    if not path.exists():
        raise UserInputError(f"lookalike.exclude_segment needs '{path}': run `gpuseg segment` first",
                             config_key="lookalike.exclude_segment")
    seg = pq.read_table(path, columns=["customer_id", "segment"])
    known = set(seg["segment"].to_pylist())
    missing = [s for s in wanted if s not in known]
    if missing:
        raise UserInputError(f"segment(s) {missing} do not exist; segments are {sorted(known)}",
                             config_key="lookalike.exclude_segment")
    mask = pc.is_in(seg["segment"], value_set=pa.array(wanted, seg["segment"].type))
    return seg["customer_id"].filter(mask).to_pylist()


def _fingerprint(source: Path, icfg: DictConfig) -> str:
    """What the cached index was built from: the source matrix's bytes (not its size and time:
    rows reordered in a file of the same size would otherwise reuse a wrong index) and the settings."""
    digest = hashlib.sha256()
    files = sorted(f for f in source.rglob("*") if f.is_file()) if source.is_dir() else [source]
    for file in files:
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    params = OmegaConf.to_container(icfg.params, resolve=True)
    key = f"{digest.hexdigest()}|{icfg.backend}|{icfg.metric}|{sorted(params.items())}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _index(cfg: DictConfig, work: Path, device) -> tuple[LookalikeIndex, bool, Path]:
    icfg = cfg.lookalike.index
    folder = artifact(work, "lookalike", "index")
    source = matrix_input(cfg.lookalike.input, "lookalike.input", work)
    fingerprint = _fingerprint(source, icfg)
    stamp = folder / "source.json"
    if not bool(icfg.rebuild) and stamp.exists() and read_json(stamp).get("fingerprint") == fingerprint:
        return LookalikeIndex.load(folder, device=device), True, source
    ids, matrix, _ = read_matrix(source)
    params = OmegaConf.to_container(icfg.params, resolve=True)
    index = LookalikeIndex(str(icfg.backend), str(icfg.metric), device=device, **params)
    try:
        index.build(matrix, ids)
    except UserInputError as exc:
        if exc.config_key is None:
            exc.config_key = "lookalike.index"
        raise
    index.save(folder)
    write_json(stamp, {"fingerprint": fingerprint, "input": str(source)})
    return index, False, source


def _available(index: LookalikeIndex, seeds: list[str], exclude: list[str] | None) -> int:
    rows, _ = index.rows_of(seeds)
    banned = set(rows.tolist())
    if exclude:
        banned |= set(index.rows_of(exclude)[0].tolist())
    return index.ntotal - len(banned)


def _or_nan(value: float | None) -> float:
    """A score for a log line: an empty audience has none (a score of 0.0 is a score)."""
    return float("nan") if value is None else float(value)


@staged("lookalike")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Expand the configured seeds into ranked audiences and write them with their reach curves."""
    ctx = start(cfg, "lookalike", needs_device=True)
    device = ctx["device"]
    lcfg = cfg.lookalike
    work = work_dir(cfg)
    out = job_dir(work, "lookalike")
    out.mkdir(parents=True, exist_ok=True)
    size = None if lcfg.size is None else lcfg.size
    threshold = None if lcfg.threshold is None else float(lcfg.threshold)
    if size is None and threshold is None:
        raise ConfigError("give an audience size (lookalike.size) or a similarity threshold (lookalike.threshold)",
                          config_key="lookalike.size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(f"lookalike.size must be a positive integer, got {size!r}", config_key="lookalike.size")
    seeds = read_seeds(lcfg.seeds)
    exclude = _excluded(cfg, work)
    t0 = time.perf_counter()
    index, reused, source = _index(cfg, work, device)
    t_index = time.perf_counter() - t0
    log.info("lookalike: %s index (%s) over %d customers from %s", "reused" if reused else "built",
             index.backend_used_, index.ntotal, source)

    t1 = time.perf_counter()
    n_points = int(lcfg.reach_curve.n_points)
    audiences, curves = [], {}
    for name, ids in seeds.items():
        label = "audience" if name is None else str(name)
        kwargs = {"mode": str(lcfg.mode), "top_m": int(lcfg.top_m), "exclude": exclude,
                  "on_unknown": str(lcfg.on_unknown), "candidates": str(lcfg.candidates)}
        try:
            if size is None:
                table = index.expand(ids, None, threshold, **kwargs)
                curve_table = table
            else:
                available = _available(index, ids, exclude)
                if size > available:
                    log.warning("lookalike.size=%d is more than the %d customers that are neither seeds nor excluded"
                                "%s: the audience is capped at %d", size, available,
                                "" if name is None else f" (query {name!r})", available)
                # one pass gives both the audience and the reach curve beyond it
                curve_size = max(1, min(max(size, int(lcfg.reach_curve.max_size)), available))
                curve_table = index.expand(ids, curve_size, None, **kwargs)
                keep = pc.less_equal(curve_table["rank"], size)
                if threshold is not None:
                    keep = pc.and_(keep, pc.greater_equal(curve_table["score"], threshold))
                table = curve_table.filter(keep)
        except UserInputError as exc:
            if exc.config_key is None:
                exc.config_key = "lookalike.seeds"
            raise
        curves[label] = reach_curve(curve_table["score"].to_numpy(), n_points)
        if name is not None:
            table = table.add_column(0, "query", pa.array([label] * table.num_rows, pa.string()))
        audiences.append(table)
        log.info("lookalike %s: %d seeds -> %d customers (scores %.3f .. %.3f)", label, len(ids), table.num_rows,
                 _or_nan(pc.max(table["score"]).as_py()), _or_nan(pc.min(table["score"]).as_py()))
    t_expand = time.perf_counter() - t1
    audience = pa.concat_tables(audiences)
    write_parquet(artifact(work, "lookalike", "audience"), audience)
    write_json(artifact(work, "lookalike", "reach_curve"), {"mode": str(lcfg.mode), "metric": index.metric,
                                          "score": "similarity" if index.metric != "l2" else
                                          "minus squared L2 distance", "curves": curves})
    panels = {f"{q}: min score": (c["size"], c["min_score"]) for q, c in curves.items()}
    with atomic_path(artifact(work, "lookalike", "reach_curve_svg")) as tmp:
        tmp.write_text(small_multiples(panels, title=f"reach vs similarity ({lcfg.mode}, {index.metric})",
                                       marker_x=size))
    metrics = {
        "n_customers": index.ntotal,
        "n_queries": len(seeds),
        "n_seeds": {("audience" if q is None else str(q)): len(s) for q, s in seeds.items()},
        "n_excluded": 0 if exclude is None else len(exclude),
        "audience_size": audience.num_rows,
        "mode": str(lcfg.mode),
        "backend": index.backend,
        "backend_used": index.backend_used_,
        "index_reused": reused,
        "input": str(source),
        "device": str(device),
        "seconds": {"index": round(t_index, 3), "expand": round(t_expand, 3)},
    }
    write_json(artifact(work, "lookalike", "metrics"), metrics)
    result = {**metrics, "output_dir": str(out), "audience_path": str(artifact(work, "lookalike", "audience")),
              "reach_curve_path": str(artifact(work, "lookalike", "reach_curve")),
              "index_dir": str(artifact(work, "lookalike", "index"))}
    return finish(cfg, "lookalike", ctx["manifest"], result)
