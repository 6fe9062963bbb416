"""``gpuseg audience``: select customers by a rule or a plain-words request, and profile them.

``audience.rule="churn_risk == 'high' and expected_value > p80"`` is parsed and evaluated over
every customer of the base (the validated customers) against the per-customer outputs found in
the work directory: the features, the segments, the profile's scores, the lookalike audience and
the customer attributes. ``audience.query="high-value customers showing declining engagement"``
is first compiled to such a rule with the local text model; the rule and the candidate fields
are logged and kept in the JSON. Writes ``audiences/<name>.parquet`` (``customer_id`` and the
fields the rule uses) and ``audiences/<name>.json`` (rule, query, size, share and the audience's
lifts against the base). Personal-data columns (``pii`` in ``schema.json``) are never fields.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig

from gpuseg.audience.fields import FieldSet, build_fields, check_name
from gpuseg.audience.rules import Evaluator, field_refs, fields_used, parse
from gpuseg.audience.words import QueryCompiler, describe_candidates
from gpuseg.jobs.common import finish, load_validated, staged, start, work_dir
from gpuseg.profile.lifts import categorical_indicators, segment_lifts
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import write_json, write_parquet
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.validation import is_real

log = logging.getLogger(__name__)

#: per-customer outputs read as fields: job -> artifact
OUTPUTS = {"features": "table", "segment": "segments", "profile": "scores", "lookalike": "audience"}


def load_fields(work: Path) -> FieldSet:
    """Every per-customer output of the work directory as fields over the validated customers.

    Never reads ``validated/pii.parquet``; columns listed as ``pii`` in ``schema.json`` are left out
    wherever they appear.
    """
    schema, customers = load_validated(work)
    spec = schema.get("customers") or {}
    pii = [str(c) for c in spec.get("pii") or []]
    roles = {**{c: "attribute" for c in (spec.get("numeric") or []) + (spec.get("categorical") or [])},
             **{c: "label" for c in spec.get("labels") or []}}
    outputs: dict[str, pa.Table | None] = {}
    for job, name in OUTPUTS.items():
        path = artifact(work, job, name)
        outputs[job] = pq.read_table(path) if path.exists() else None
    keep = [c for c in customers.column_names if c not in pii]
    return build_fields(customers.select(keep), outputs, attributes=roles, excluded=pii)


def audience_paths(work: Path, name: str) -> tuple[Path, Path]:
    """``audiences/<name>.parquet`` and ``audiences/<name>.json`` (in the staging folder while running)."""
    return artifact(work, "audience", "table", name=name), artifact(work, "audience", "summary", name=name)


def query_compiler(cfg: DictConfig, fields: FieldSet, device) -> QueryCompiler:
    """The plain-words compiler over ``fields``, with the local text model (never downloaded)."""
    from gpuseg.text import TextEmbedder

    wcfg = cfg.audience.words
    for key in ("high", "low", "min_score"):
        value = wcfg[key]
        if not is_real(value) or not (0 <= float(value) <= 100 if key != "min_score" else -1 <= float(value) <= 1):
            raise ConfigError(f"audience.words.{key} must be a number in "
                              f"{'[0, 100]' if key != 'min_score' else '[-1, 1]'}, got {value!r}",
                              config_key=f"audience.words.{key}")
    try:
        embedder = TextEmbedder(wcfg.model, device=device or "cpu", progress=False)
    except UserInputError as exc:  # the text model's own errors name text.model
        exc.config_key = "audience.words.model"
        raise
    return QueryCompiler(fields.fields, embedder.encode, high=float(wcfg.high), low=float(wcfg.low),
                         min_score=float(wcfg.min_score), n_candidates=int(wcfg.n_candidates))


def _profile(fields: FieldSet, mask: np.ndarray, top: int) -> list[dict[str, Any]]:
    """The audience's lifts against the base (``gpuseg.profile.lifts``), largest first."""
    numeric, labels = {}, {}
    for name, f in fields.fields.items():
        values = fields.columns[name]
        if f.kind == "text" or "category" in f.tags:
            labels[name] = values.cast(pa.string())
        elif f.kind == "bool":
            numeric[name] = values.cast(pa.float64())
        else:
            numeric[name] = values.cast(pa.float64())
    table = pa.table(numeric) if numeric else pa.table({"_": pa.nulls(fields.n, pa.float64())}).drop(["_"])
    indicators = categorical_indicators(pa.table(labels)) if labels else pa.table({})
    for name in indicators.column_names:
        table = table.append_column(name, indicators[name])
    if table.num_columns == 0 or fields.n == 0:
        return []
    lifts = segment_lifts(table, mask.astype(np.int64), n_segments=2)
    rows = lifts.filter(pc.equal(lifts["segment"], 1)).to_pylist()
    out = [{"field": r["feature"], "audience_mean": r["mean"], "base_mean": r["population_mean"],
            "base_std": r["population_std"], "lift_z": r["lift_z"]} for r in rows]
    shown = [r for r in out if r["lift_z"] is not None and np.isfinite(r["lift_z"])]
    shown.sort(key=lambda r: -abs(r["lift_z"]))
    for line in shown[:top]:
        log.info("audience profile: %-32s mean %.4g vs base %.4g (lift %+.2f sd)", line["field"],
                 line["audience_mean"], line["base_mean"], line["lift_z"])
    return out


def _source(cfg: DictConfig) -> tuple[str | None, str | None]:
    acfg = cfg.audience
    rule = None if acfg.rule is None else str(acfg.rule)
    query = None if acfg.query is None else str(acfg.query)
    if (rule is None) == (query is None):
        raise ConfigError("give the audience either as a rule (audience.rule=\"churn_risk == 'high' and "
                          "expected_value > p80\") or in words (audience.query=\"high-value customers showing "
                          "declining engagement\"), not " + ("both" if rule is not None else "neither"),
                          config_key="audience.rule")
    return rule, query


@staged("audience")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Select, describe and write one audience (or, with ``audience.dry_run``, only show its rule)."""
    acfg = cfg.audience
    rule, query = _source(cfg)
    dry_run = bool(acfg.dry_run)
    name = None if acfg.name is None else str(acfg.name)
    if name is None and not dry_run:
        raise ConfigError("name the audience: audience.name=at_risk_vip (its files are audiences/<name>.*)",
                          config_key="audience.name")
    if name is not None:
        check_name(name)
    ctx = start(cfg, "audience", needs_device=query is not None)
    work = work_dir(cfg)
    fields = load_fields(work)

    compiled = None
    if query is not None:
        compiled = query_compiler(cfg, fields, ctx["device"]).compile(query)
        rule = compiled.rule
        log.info("audience query: %s", query)
        for line in describe_candidates(compiled):
            log.info("audience words: %s", line)
    key = "audience.query" if query is not None else "audience.rule"
    tree = parse(rule, key=key)
    canonical = str(tree)
    log.info("audience rule: %s", canonical)
    missing = {r.name: job for r in field_refs(tree)
               if r.name not in fields.columns and (job := fields.source_of_missing(r.name)) is not None}
    mask = Evaluator(fields.columns, rule, key=key, missing=missing).mask(tree)
    used = fields_used(tree)
    size, n = int(mask.sum()), fields.n
    share = size / n if n else 0.0
    log.info("audience %s: %d of %d customers (%.1f%%)", name or "(dry run)", size, n, 100 * share)
    if size == 0:
        log.warning("audience %s is empty: no customer matches %s", name or "(dry run)", canonical)
    elif size == n:
        log.warning("audience %s holds every customer (%d): %s selects everyone", name or "(dry run)", n, canonical)
    summary: dict[str, Any] = {
        "name": name, "rule": canonical, "query": query, "size": size, "share": share, "n_base": n,
        "fields": {f: {"source": fields.fields[f].source, "description": fields.fields[f].description}
                   for f in used},
        "words": compiled.to_dict() if compiled is not None else None,
        "nulls_match": False,
    }
    if dry_run:
        log.info("audience.dry_run=true: nothing written")
        return finish(cfg, "audience", ctx["manifest"], {**summary, "dry_run": True})

    summary["profile"] = _profile(fields, mask, int(acfg.profile.top))
    rows = pa.array(np.flatnonzero(mask))
    table = pa.table({"customer_id": fields.ids.take(rows), **{f: fields.columns[f].take(rows) for f in used}})
    out = job_dir(work, "audience")
    out.mkdir(parents=True, exist_ok=True)
    parquet, summary_path = audience_paths(work, name)
    write_parquet(parquet, table)
    write_json(summary_path, summary)
    result = {k: summary[k] for k in ("name", "rule", "query", "size", "share", "n_base")}
    result.update({"fields_used": used, "output_dir": str(out), "audience_path": str(parquet),
                   "summary_path": str(summary_path)})
    return finish(cfg, "audience", ctx["manifest"], result)
