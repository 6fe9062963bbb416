"""``gpuseg lookalike``: expand seed customers into a ranked audience of lookalikes.

Builds (or reuses) a :class:`~gpuseg.lookalike.LookalikeIndex` over the fused matrix (else the
features matrix) in ``lookalike/index/``, expands the seeds and writes
``lookalike/audience.parquet`` (``[query,] rank, customer_id, score, nearest_seed,
nearest_seed_score, is_seed, why_similar``), ``lookalike/reach_curve.json`` (audience size vs
the similarity it takes to reach it, per query, with the expansion presets' points) and
``lookalike/reach_curve.svg``, and ``lookalike/metrics.json`` with, per query, the features that
set the seeds apart from the base (see :mod:`gpuseg.lookalike.explain`).

How many: ``lookalike.size`` (customers) or ``lookalike.expansion`` (``narrow | balanced |
broad``: a share of the base, ``lookalike.expansion_shares``), and/or a similarity
``lookalike.threshold``. The seeds are left out of their own audience unless
``lookalike.include_seeds=true``. Degenerate cases (identical seeds, features without spread, an
audience smaller than asked) are warnings, listed again under ``notes`` in metrics.json.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from gpuseg.jobs.common import finish, matrix_input, staged, start, work_dir
from gpuseg.lookalike import LookalikeIndex, reach_curve
from gpuseg.lookalike.expand import reach_at
from gpuseg.lookalike.explain import (
    WHY_TYPE,
    explainable_features,
    seed_profile,
    seeds_identical,
    why_similar,
)
from gpuseg.lookalike.sharded import ShardedIndex
from gpuseg.report.lookalike import render_lookalike
from gpuseg.report.svg import small_multiples
from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import atomic_path, read_json, write_json, write_parquet
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.matrix import read_matrix, read_matrix_rows
from gpuseg.runtime.validation import is_int, is_real

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


def _index(cfg: DictConfig, work: Path, device) -> tuple[LookalikeIndex | ShardedIndex, bool, Path]:
    """The index over the job's matrix, reused from ``lookalike/index/`` when built from the same
    bytes and settings; under torchrun each rank builds (and keeps) an index of its own rows."""
    icfg = cfg.lookalike.index
    folder = artifact(work, "lookalike", "index")
    source = matrix_input(cfg.lookalike.input, "lookalike.input", work)
    rank, world = ddp.rank_and_world()
    if world == 1:
        index, reused = _cached(icfg, folder, _fingerprint(source, icfg), lambda: read_matrix(source)[:2],
                                device, {"input": str(source)})
        return index, reused, source
    ids = pq.read_table(source, columns=["customer_id"])["customer_id"].combine_chunks().cast(pa.string())
    if len(ids) < world:
        raise UserInputError(f"'{source}' has {len(ids)} customers, fewer than the {world} torchrun ranks that "
                             "would each hold a shard of the lookalike index: run it with fewer processes")
    lo, hi = ddp.shard_bounds(len(ids))
    local, reused = _cached(icfg, folder / f"shard-{rank}-of-{world}", f"{_fingerprint(source, icfg)}|{lo}:{hi}",
                            lambda: read_matrix_rows(source, lo, hi)[:2], device,
                            {"input": str(source), "rows": [lo, hi]})
    # reused only where every rank's shard was: a report that says so speaks for all of them
    every = int(ddp.all_reduce_(torch.tensor([int(reused)], dtype=torch.int64)).item()) == world
    return ShardedIndex(local, ids, lo), every, source


def _cached(icfg: DictConfig, folder: Path, fingerprint: str, read, device,
            stamp: dict[str, Any]) -> tuple[LookalikeIndex, bool]:
    """The index saved in ``folder`` when its stamp has ``fingerprint``, else one built from
    ``read()`` (ids, matrix) and saved there with the stamp; and whether it was reused."""
    stamp_path = folder / "source.json"
    if not bool(icfg.rebuild) and stamp_path.exists() and read_json(stamp_path).get("fingerprint") == fingerprint:
        return LookalikeIndex.load(folder, device=device), True
    # no name holds the matrix read here: once faiss has its copy, this one is freed before the save
    index = _built(icfg, *read(), device)
    index.save(folder)
    write_json(stamp_path, {"fingerprint": fingerprint, **stamp})
    return index, False


def _built(icfg: DictConfig, ids, matrix, device) -> LookalikeIndex:
    """A LookalikeIndex over ``matrix`` (this job's own array: normalised in place for cosine)."""
    params = OmegaConf.to_container(icfg.params, resolve=True)
    index = LookalikeIndex(str(icfg.backend), str(icfg.metric), device=device, **params)
    try:
        index.build(matrix, ids, copy=False)
    except UserInputError as exc:
        if exc.config_key is None:
            exc.config_key = "lookalike.index"
        raise
    return index


def _available(index: LookalikeIndex | ShardedIndex, seeds: list[str], exclude: list[str] | None, include_seeds: bool) -> int:
    banned = set() if include_seeds else set(index.rows_of(seeds)[0].tolist())
    if exclude:
        banned |= set(index.rows_of(exclude)[0].tolist())
    return index.ntotal - len(banned)


def _or_nan(value: float | None) -> float:
    """A score for a log line: an empty audience has none (a score of 0.0 is a score)."""
    return float("nan") if value is None else float(value)


def _how_many(lcfg: DictConfig) -> tuple[int | None, float | None, str | None, dict[str, float]]:
    """``size``, ``threshold``, ``expansion`` and the preset shares, checked before any work is done."""
    size = lcfg.size
    threshold = None if lcfg.threshold is None else float(lcfg.threshold)
    expansion = lcfg.get("expansion")
    shares = OmegaConf.to_container(lcfg.expansion_shares, resolve=True) if lcfg.get("expansion_shares") else {}
    for name, share in shares.items():
        if not is_real(share) or not 0 < share <= 1:
            raise ConfigError(f"lookalike.expansion_shares.{name} must be a share of the base in (0, 1], "
                              f"got {share!r}", config_key=f"lookalike.expansion_shares.{name}")
    if expansion is not None:
        if size is not None:
            raise ConfigError(f"lookalike.expansion={expansion} and lookalike.size={size} are both set: give one "
                              "(a preset is a share of the base, size a number of customers)",
                              config_key="lookalike.expansion")
        if str(expansion) not in shares:
            raise ConfigError(f"lookalike.expansion must be one of {sorted(shares)} (lookalike.expansion_shares), "
                              f"got {expansion!r}", config_key="lookalike.expansion")
        expansion = str(expansion)
    if size is None and threshold is None and expansion is None:
        raise ConfigError("give an audience size (lookalike.size), an expansion preset (lookalike.expansion: "
                          f"{' | '.join(shares)}) or a similarity threshold (lookalike.threshold)",
                          config_key="lookalike.size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(f"lookalike.size must be a positive integer, got {size!r}", config_key="lookalike.size")
    top_n = lcfg.explain.top_n
    if not is_int(top_n) or top_n < 0:
        raise ConfigError(f"lookalike.explain.top_n must be an integer >= 0 (0: no explanations), got {top_n!r}",
                          config_key="lookalike.explain.top_n")
    return size, threshold, expansion, shares


def _explain_base(work: Path, top_n: int, notes: list[str]) -> pa.Table | None:
    """The features table the explanations read (None when they are off or it is missing)."""
    if top_n == 0:
        return None
    path = artifact(work, "features", "table")
    if not path.exists():
        _note(notes, None, f"no features table '{path}' (run `gpuseg features`): the audience is not explained "
                           "(why_similar is null, no seed-vs-base features); lookalike.explain.top_n=0 says so quietly")
        return None
    return explainable_features(pq.read_table(path))


def _note(notes: list[str], label: str | None, text: str) -> None:
    """A degenerate case, said loudly (once): logged as a warning and kept for metrics.json."""
    text = text if label is None else f"{label}: {text}"
    if text not in notes:
        log.warning("lookalike: %s", text)
        notes.append(text)


def _audience(index: LookalikeIndex | ShardedIndex, ids: list[str], size: int | None, threshold: float | None,
              curve_size: int, kwargs: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
    """The audience and the (longer) ranked list its reach curve is read from."""
    if size is None:
        table = index.expand(ids, None, threshold, **kwargs)
        if table.num_rows >= curve_size:
            return table, table
        return table, index.expand(ids, curve_size, None, **kwargs)
    # one pass gives both the audience and the reach curve beyond it
    curve_table = index.expand(ids, curve_size, None, **kwargs)  # curve_size >= the size reachable
    keep = pc.less_equal(curve_table["rank"], size)
    if threshold is not None:
        keep = pc.and_(keep, pc.greater_equal(curve_table["score"], threshold))
    return curve_table.filter(keep), curve_table


def _one_query(index: LookalikeIndex | ShardedIndex, name: str | None, ids: list[str], plan: dict[str, Any],
               base: pa.Table | None, notes: list[str]) -> tuple[pa.Table, dict[str, Any], dict[str, Any]]:
    """Expand one seed list: its audience (with why_similar), reach curve and summary."""
    label = "audience" if name is None else str(name)
    where = None if name is None else f"query {label!r}"
    size, threshold, exclude, lcfg = plan["size"], plan["threshold"], plan["exclude"], plan["lcfg"]
    include_seeds = plan["include_seeds"]
    kwargs = {"mode": str(lcfg.mode), "top_m": int(lcfg.top_m), "exclude": exclude,
              "on_unknown": str(lcfg.on_unknown), "candidates": str(lcfg.candidates),
              "include_seeds": include_seeds}
    available = _available(index, ids, exclude, include_seeds)
    if size is not None and size > available:
        _note(notes, where, f"lookalike.size={size} (asked{plan['via']}) is more than the {available} customers "
                            f"that are neither {'' if include_seeds else 'seeds nor '}excluded: the audience is "
                            f"capped at {available}")
    wanted = [size or 0, int(lcfg.reach_curve.max_size), *plan["presets"].values()]
    curve_size = max(1, min(max(wanted), available))
    try:
        table, curve_table = _audience(index, ids, size, threshold, curve_size, kwargs)
    except UserInputError as exc:
        if exc.config_key is None:
            exc.config_key = "lookalike.seeds"
        raise
    seed_rows, _ = index.rows_of(ids)
    if seeds_identical(index.vectors_of(np.unique(seed_rows))):
        _note(notes, where, f"all {len(seed_rows)} seeds have the same vector: the audience is the neighbours of "
                            f"one point, whatever lookalike.mode; give seeds that differ")
    if size is not None and threshold is not None and table.num_rows < min(size, available):
        _note(notes, where, f"lookalike.threshold={threshold} leaves {table.num_rows} of the {min(size, available)} "
                            "customers asked")
    if table.num_rows == 0:
        _note(notes, where, "the audience is empty" + (f": nobody scores lookalike.threshold={threshold} or more"
                                                        if threshold is not None else ""))
    is_seed = pc.is_in(table["customer_id"], value_set=pa.array(ids, pa.string()))
    table = table.append_column("is_seed", is_seed)
    summary: dict[str, Any] = {"n_seeds": len(ids), "audience_size": table.num_rows, "asked": size}
    if base is not None:
        top_n = int(lcfg.explain.top_n)
        profile = seed_profile(base, ids)
        if profile.no_spread:
            _note(notes, None, f"{len(profile.no_spread)} feature(s) have zero spread over the base, so no z-score: "
                               f"left out of the explanations ({', '.join(profile.no_spread)})")
        for text in profile.notes:
            _note(notes, where, text)
        why, why_notes = why_similar(base, table["customer_id"].to_pylist(), profile, top_n=top_n,
                                     min_abs_z=float(lcfg.explain.min_abs_z))
        for text in why_notes:
            _note(notes, where, text)
        table = table.append_column("why_similar", why)
        summary["seed_vs_base"] = profile.top(top_n)
    elif int(lcfg.explain.top_n) > 0:
        table = table.append_column("why_similar", pa.nulls(table.num_rows, WHY_TYPE))
    curve = reach_curve(curve_table["score"].to_numpy(), int(lcfg.reach_curve.n_points))
    scores = curve_table["score"].to_numpy()
    curve["presets"] = reach_at(scores, plan["presets"])
    curve["chosen"] = reach_at(scores, {"chosen": table.num_rows})["chosen"]
    summary["reach"] = {"chosen": curve["chosen"], "presets": curve["presets"]}
    if name is not None:
        table = table.add_column(0, "query", pa.array([label] * table.num_rows, pa.string()))
    log.info("lookalike %s: %d seeds -> %d customers (scores %.3f .. %.3f)", label, len(ids), table.num_rows,
             _or_nan(pc.max(table["score"]).as_py()), _or_nan(pc.min(table["score"]).as_py()))
    return table, curve, summary


@staged("lookalike")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Expand the configured seeds into ranked, explained audiences and write them with their reach curves."""
    ctx = start(cfg, "lookalike", needs_device=True)
    device = ctx["device"]
    lcfg = cfg.lookalike
    work = work_dir(cfg)
    out = job_dir(work, "lookalike")
    out.mkdir(parents=True, exist_ok=True)
    size, threshold, expansion, shares = _how_many(lcfg)
    include_seeds = lcfg.get("include_seeds", False)
    if not isinstance(include_seeds, bool):
        raise ConfigError(f"lookalike.include_seeds must be true or false, got {include_seeds!r}",
                          config_key="lookalike.include_seeds")
    seeds = read_seeds(lcfg.seeds)
    exclude = _excluded(cfg, work)
    notes: list[str] = []
    # under torchrun every rank holds a shard and takes part in each expansion; rank 0 explains and writes
    rank, world = ddp.rank_and_world()
    base = _explain_base(work, int(lcfg.explain.top_n), notes) if rank == 0 else None
    t0 = time.perf_counter()
    index, reused, source = _index(cfg, work, device)
    t_index = time.perf_counter() - t0
    log.info("lookalike: %s index (%s) over %d customers from %s", "reused" if reused else "built",
             index.backend_used_, index.ntotal, source)
    # a preset is a share of the whole base, as the ad platforms' percentages are of a country
    presets = {name: max(1, round(share * index.ntotal)) for name, share in shares.items()}
    if expansion is not None:
        size = presets[expansion]
        log.info("lookalike.expansion=%s: %.1f%% of %d customers = %d", expansion, 100 * shares[expansion],
                 index.ntotal, size)
    plan = {"size": size, "threshold": threshold, "exclude": exclude, "lcfg": lcfg, "presets": presets,
            "include_seeds": include_seeds, "via": f" by lookalike.expansion={expansion}" if expansion else ""}

    t1 = time.perf_counter()
    audiences, curves, queries = [], {}, {}
    for name, ids in seeds.items():
        table, curve, summary = _one_query(index, name, ids, plan, base, notes)
        label = "audience" if name is None else str(name)
        audiences.append(table)
        curves[label], queries[label] = curve, summary
    t_expand = time.perf_counter() - t1
    if rank != 0:
        return {"rank": rank, "world_size": world, "shard_rows": index.local.ntotal}
    audience = pa.concat_tables(audiences)
    write_parquet(artifact(work, "lookalike", "audience"), audience)
    write_json(artifact(work, "lookalike", "reach_curve"), {"mode": str(lcfg.mode), "metric": index.metric,
                                          "score": "similarity" if index.metric != "l2" else
                                          "minus squared L2 distance", "expansion_shares": shares,
                                          "curves": curves})
    panels = {f"{q}: min score": (c["size"], c["min_score"]) for q, c in curves.items()}
    marks = ", ".join(f"{k} {v}" for k, v in presets.items())
    reach_svg = small_multiples(panels, title=f"reach vs similarity ({lcfg.mode}, {index.metric}; presets: {marks})",
                                marker_x=size)
    with atomic_path(artifact(work, "lookalike", "reach_curve_svg")) as tmp:
        tmp.write_text(reach_svg)
    metrics = {
        "n_customers": index.ntotal,
        "n_queries": len(seeds),
        "n_seeds": {("audience" if q is None else str(q)): len(s) for q, s in seeds.items()},
        "n_excluded": 0 if exclude is None else len(exclude),
        "audience_size": audience.num_rows,
        "size": size,
        "expansion": expansion,
        "expansion_sizes": presets,
        "threshold": threshold,
        "include_seeds": include_seeds,
        "mode": str(lcfg.mode),
        "backend": index.backend,
        "backend_used": index.backend_used_,
        "index_reused": reused,
        "input": str(source),
        "device": str(device),
        "world_size": world,
        "queries": queries,
        "notes": notes,
        "seconds": {"index": round(t_index, 3), "expand": round(t_expand, 3)},
    }
    write_json(artifact(work, "lookalike", "metrics"), metrics)
    with atomic_path(artifact(work, "lookalike", "report")) as tmp:
        tmp.write_text(render_lookalike(metrics, reach_svg, audience), encoding="utf-8")
    result = {**metrics, "output_dir": str(out), "audience_path": str(artifact(work, "lookalike", "audience")),
              "reach_curve_path": str(artifact(work, "lookalike", "reach_curve")),
              "report_path": str(artifact(work, "lookalike", "report")),
              "index_dir": str(artifact(work, "lookalike", "index"))}
    return finish(cfg, "lookalike", ctx["manifest"], result)
