"""``gpuseg profile``: segment profiles, personas, churn risk, customer value and report.html.

Reads the segments, features, validated events and texts of one work directory and writes only
under ``profile/``: ``customer_scores.parquet`` holds ``churn_score``, ``churn_risk``,
``expected_purchases`` and ``expected_value`` for every customer (join it to the segments with
:func:`gpuseg.jobs.common.segments_with_scores`, so "high churn risk" is a one-line filter).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from gpuseg.data.events import to_microseconds
from gpuseg.jobs.common import (
    customer_label,
    data_as_of,
    finish,
    has_validated_table,
    load_validated,
    memory_budget,
    staged,
    start,
    work_dir,
)
from gpuseg.journey.sequences import SPECIAL_TOKENS, SequenceBuilder
from gpuseg.profile.actions import NextBestAction, next_best_action
from gpuseg.profile.lifts import (
    categorical_indicators,
    lifts_by_segment,
    representatives,
    segment_lifts,
    segment_means,
    segment_sizes,
    value_concentration,
)
from gpuseg.profile.naming import SegmentName, name_segments
from gpuseg.profile.ngrams import journey_ngrams, top_event_types
from gpuseg.profile.personas import churn_contradictions
from gpuseg.profile.words import distinctive_words_by_source
from gpuseg.report.html import lift_matrix, pca_2d, render_report, write_report
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import read_json, write_json, write_parquet
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.matrix import MatrixFile, matrix_within, read_matrix
from gpuseg.runtime.validation import check_int, check_real
from gpuseg.value import BetaGeoModel, ChurnModel, DegenerateFitError, GammaGammaModel, btyd_summary
from gpuseg.value.churn import binary_metrics, risk_tier
from gpuseg.value.summary import (
    HOLDOUT_CHURN,
    holdout_by_frequency,
    holdout_end_after,
    no_purchase_in_holdout,
)

log = logging.getLogger(__name__)

#: rows per block when the churn model scores a matrix read from disk
_SCORE_ROWS = 65536

_DAY = np.timedelta64(1, "D")


def _note(notes: list[str], text: str) -> None:
    """Record something that could not be estimated: a warning in the log, a line in the report."""
    log.warning("profile: %s", text)
    notes.append(text)


def _holdout_end(schema: dict[str, Any], as_of: str) -> tuple[np.datetime64 | None, float]:
    """End of the hold-out (the day after the last event) when the data reach past as_of."""
    end = holdout_end_after((schema.get("events") or {}).get("last"), as_of)
    if end is None:
        return None, 0.0
    return end, float((end - np.datetime64(to_microseconds(as_of), "us")) / _DAY)


def _fit_sample(eligible: np.ndarray, limit: Any, seed: int, key: str = "value_fit_customers") -> np.ndarray:
    """The ``eligible`` rows, or a seeded sample of ``limit`` of them (``profile.<key>``; None: all).

    For the BG/NBD and Gamma-Gamma fits: four and three parameters are pinned down long before a
    million customers, while every likelihood evaluation of the optimiser walks all the rows it
    is given; the predictions are still made for everyone.
    """
    rows = np.flatnonzero(eligible)
    if limit is None:
        return rows
    check_int("profile", key, limit, low=1000, config_key=f"profile.{key}")
    limit = int(limit)
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng([seed, 17]).choice(rows, size=limit, replace=False))


def _value(cfg, ids, events: Path | None, roles, as_of, holdout_end, holdout_days, device,
           notes: list[str], seed: int = 0) -> dict[str, Any]:
    """BG/NBD + Gamma-Gamma: expected purchases and value over the horizon, and the hold-out check.

    A fit that cannot be trusted leaves the predictions NaN and says why in ``notes`` (and in
    ``report["not_estimated"]``), never a silent NaN for everyone.
    """
    n = len(ids)
    out: dict[str, Any] = {"summary": None, "expected_purchases": np.full(n, np.nan),
                           "expected_value": np.full(n, np.nan), "report": {}}
    if events is None:
        return _not_estimated(out, notes, "the data have no events table")
    summary = btyd_summary(events, ids, as_of, roles=roles, time_unit="D", holdout_end=holdout_end)
    out["summary"] = summary
    f, r, t = (summary[c].to_numpy(zero_copy_only=False) for c in ("frequency", "recency", "T"))
    m = summary["monetary_value"].to_numpy(zero_copy_only=False)
    horizon = float(cfg.profile.horizon_days)
    has_history = np.isfinite(t)
    repeat = int((f[has_history] > 0).sum())
    if has_history.sum() < 20 or repeat < 10:
        return _not_estimated(out, notes, f"too few customers with a purchase history ({int(has_history.sum())} "
                                          f"with a purchase before as_of, {repeat} of them repeat buyers; BG/NBD "
                                          "needs at least 20 and 10)")
    fit_rows = _fit_sample(has_history, cfg.profile.get("value_fit_customers"), seed)
    bg = BetaGeoModel(device=device).fit(f[fit_rows], r[fit_rows], t[fit_rows])
    report: dict[str, Any] = {"bgnbd": dict(bg.params_), "horizon_days": horizon}
    out["report"] = report
    problem = bg.degenerate_
    try:
        expected = bg.conditional_expected_number_of_purchases_up_to_time(horizon, f, r, t) if problem is None \
            else None
    except DegenerateFitError as exc:  # predictions that came out non-finite
        problem = exc.reason
    if problem is not None:
        return _not_estimated(out, notes, f"BG/NBD fit is degenerate: {problem}")
    out["expected_purchases"] = expected
    try:
        gg = GammaGammaModel(device=device).fit(f[fit_rows], m[fit_rows])
        problem = gg.degenerate_
        if problem is None:
            out["expected_value"] = expected * gg.conditional_expected_average_profit(f, m)
            report["gamma_gamma"] = dict(gg.params_)
    except DegenerateFitError as exc:
        problem = exc.reason
    except UserInputError as exc:  # no usable customer for Gamma-Gamma
        problem = str(exc.args[0])
    if problem is not None:
        _note(notes, f"customer value not estimated (expected purchases are): Gamma-Gamma: {problem}")
        report["value_not_estimated"] = problem
    if holdout_end is not None and "holdout_purchases" in summary.column_names:
        predicted = bg.conditional_expected_number_of_purchases_up_to_time(holdout_days, f, r, t)
        actual = summary["holdout_purchases"].to_numpy(zero_copy_only=False)
        keep = has_history
        report["holdout"] = {
            "days": holdout_days,
            "predicted_total": float(np.nansum(predicted[keep])),
            "actual_total": float(np.nansum(actual[keep])),
            "by_frequency": holdout_by_frequency(f[keep], predicted[keep], actual[keep]),
        }
    return out


def _not_estimated(out: dict[str, Any], notes: list[str], reason: str) -> dict[str, Any]:
    _note(notes, f"value not estimated: {reason}")
    out["report"] = {**out["report"], "not_estimated": reason}
    return out


def _churn_label(cfg, schema, customers: pa.Table, value: dict[str, Any]) -> tuple[str | None, np.ndarray | None]:
    """The churn label: the configured or first customers label, else no purchase in the hold-out."""
    name, y = customer_label(cfg.profile.churn.label, schema, customers, key="profile.churn.label")
    if name is not None or cfg.profile.churn.label != "auto":
        return name, y
    y = None if value["summary"] is None else no_purchase_in_holdout(value["summary"])
    return (None, None) if y is None else (HOLDOUT_CHURN, y)


def _baseline(work: Path, segmentation: dict[str, Any], has_events: bool) -> tuple[np.ndarray | None, str | None]:
    """The RFM+ matrix for the churn baseline, or None and why there is no honest baseline.

    A baseline fed the same information as the model (the segmented matrix is the features
    matrix, or a fusion of the tabular block alone) would only repeat the model's AUC.
    """
    if not has_events:
        return None, "no RFM+ baseline: the data have no events table"
    features = artifact(work, "features", "matrix").resolve()
    source = Path(segmentation["input"]).resolve()
    fused_blocks = None
    fuse_metrics = artifact(work, "fuse", "metrics")
    if source == artifact(work, "fuse", "fused").resolve() and fuse_metrics.exists():
        fused_blocks = sorted(read_json(fuse_metrics).get("blocks", {}))
    if source == features or fused_blocks == ["tabular"]:
        return None, ("no RFM+ baseline: the segmented matrix holds the RFM+ features alone, so the "
                      "baseline would be the model itself")
    return read_matrix(features)[1], None


def _churn(cfg, x: np.ndarray | MatrixFile, x_rfm: np.ndarray | None, y: np.ndarray, device, seed,
           notes: list[str]) -> dict[str, Any]:
    """Fit on a customer split; report held-out AUC + calibration next to a logistic model on RFM+."""
    ccfg = cfg.profile.churn
    known = np.flatnonzero(np.isfinite(y))
    if len(known) < 50 or len(np.unique(y[known])) < 2:
        _note(notes, f"no churn model: the churn label has {len(known)} known values and "
                     f"{len(np.unique(y[known]))} distinct ones (at least 50 and 2 needed)")
        return {}
    rng = np.random.default_rng(seed)
    order = rng.permutation(known)
    n_test = max(1, int(float(ccfg.test_fraction) * len(order)))
    test, train = order[:n_test], order[n_test:]
    limit = ccfg.get("max_train_customers")
    if limit is not None:
        check_int("profile", "churn.max_train_customers", limit, low=100,
                  config_key="profile.churn.max_train_customers")
        train = train[:int(limit)]  # ``order`` is a seeded shuffle: its head is a random sample
    params = {"epochs": int(ccfg.epochs), "device": device, "random_state": seed, "holdout_fraction": 0.1}
    model = ChurnModel(hidden=int(ccfg.hidden), **params).fit(x[train], y[train])
    scores = model.churn_probability(x) if isinstance(x, np.ndarray) else \
        np.concatenate([model.churn_probability(block) for _, block in x.blocks(_SCORE_ROWS)])
    metrics = {"model": binary_metrics(y[test], scores[test]),
               "n_train": len(train), "n_test": len(test), "positive_rate": float(np.mean(y[known]))}
    minority = int(min(y[test].sum(), len(test) - y[test].sum()))
    if minority < 20:
        _note(notes, f"churn AUC is measured on {len(test)} held-out customers of whom {minority} are in the "
                     "smaller class: too few for a reliable figure")
    if x_rfm is not None:
        baseline = ChurnModel(hidden=0, **params).fit(x_rfm[train], y[train])
        metrics["rfm_logistic"] = binary_metrics(y[test], baseline.churn_probability(x_rfm[test]))
    return {"scores": scores, "metrics": metrics}


def _sequences(events: Path, ids: pa.Array, as_of: str, max_len: int) -> tuple[np.ndarray, list[str]]:
    builder = SequenceBuilder(max_len=max_len, as_of=to_microseconds(as_of), categorical=("event_type",))
    builder.fit(events, ids)
    vocab = list(SPECIAL_TOKENS) + builder.vocabularies_["event_type"].tokens
    return _field_codes(builder.store(events, ids), 0), vocab


def _field_codes(store, field: int, chunk: int = 65_536) -> np.ndarray:
    """One categorical field's codes, (customers, max_len), padded a chunk of customers at a time.

    The padded arrays of every field and every continuous value of a million customers would be
    gigabytes; the store holds only the steps.
    """
    out = np.zeros((len(store), int(store.max_len)), dtype=store.codes.dtype)
    for first, seqs in store.chunks(chunk):
        out[first:first + len(seqs)] = seqs.categorical[:, :, field]
    return out


def _texts(work: Path, ids: pa.Array, labels: np.ndarray, as_of: str):
    path = artifact(work, "validate", "texts")
    if not path.exists():
        return None
    texts = pq.read_table(path)
    texts = texts.filter(pc.less(texts["timestamp"], pa.scalar(to_microseconds(as_of), pa.timestamp("us"))))
    index = pc.index_in(texts["customer_id"], value_set=ids).to_numpy(zero_copy_only=False).astype(np.int64)
    return texts, index, labels[index]


def _load_inputs(cfg: DictConfig, work: Path) -> dict[str, Any]:
    """The upstream artifacts the profile reads, checked to come from the same customers."""
    schema, customers = load_validated(work)
    seg_path = artifact(work, "segment", "segments")
    if not seg_path.exists():
        raise UserInputError(f"no segments in '{seg_path.parent}': run `gpuseg segment` first",
                             config_key="paths.work_dir")
    segments = pq.read_table(seg_path)
    ids = customers["customer_id"].combine_chunks()
    if not segments["customer_id"].combine_chunks().equals(ids):
        raise UserInputError("segments.parquet and the validated customers differ: re-run `gpuseg segment` "
                             "after `gpuseg validate`", config_key="paths.work_dir")
    segmentation = read_json(artifact(work, "segment", "segmentation"))
    return {
        "schema": schema, "customers": customers, "ids": ids, "segments": segments,
        "labels": segments["segment"].to_numpy().astype(np.int64),
        "segmentation": segmentation, "k": int(segmentation["n_clusters"]),
        "features": pq.read_table(artifact(work, "features", "table")),
        "work": work, "as_of": data_as_of(cfg),
        "events": artifact(work, "validate", "events") if has_validated_table(work, "events") else None,
    }


def _score_customers(cfg: DictConfig, work: Path, inputs: dict[str, Any], device, seed: int,
                     notes: list[str], scratch: str, cleanup: contextlib.ExitStack) -> dict[str, Any]:
    """Churn score and risk tier, expected purchases and value for every customer.

    ``scratch`` takes a temporary copy of a matrix above ``profile.memory_mb`` with no ``.npy``
    beside it; ``cleanup`` closes the matrix file (the report's projection reads it later).
    """
    ids, as_of, events = inputs["ids"], inputs["as_of"], inputs["events"]
    roles = OmegaConf.to_container(cfg.data.roles, resolve=True) if "roles" in cfg.data else None
    holdout_end, holdout_days = _holdout_end(inputs["schema"], as_of)
    value = _value(cfg, ids, events, roles, as_of, holdout_end, holdout_days, device, notes, seed)
    label_name, y = _churn_label(cfg, inputs["schema"], inputs["customers"], value)
    # Arrow keeps the buffers of the events it just read cached for reuse; give them back before
    # the matrix is read (at 1M customers, about 1 GB of the peak)
    pa.default_memory_pool().release_unused()
    # the churn model and the projection use the matrix that was segmented: whole within
    # profile.memory_mb, else read from disk (the model fits on a sample and scores by blocks)
    _, x, _ = matrix_within(inputs["segmentation"]["input"], memory_budget(cfg, "profile"), scratch)
    if isinstance(x, MatrixFile):
        cleanup.callback(x.close)
        log.info("profile: the %d x %d matrix is above profile.memory_mb: read from %s by blocks",
                 *x.shape, x.path)
    pa.default_memory_pool().release_unused()
    x_rfm, no_baseline = _baseline(work, inputs["segmentation"], events is not None) if y is not None \
        else (None, None)
    if no_baseline:
        _note(notes, no_baseline)
    churn = _churn(cfg, x, x_rfm, y, device, seed, notes) if y is not None else {}
    scores = churn.get("scores", np.full(len(ids), np.nan))
    tiers = risk_tier(np.nan_to_num(scores, nan=0.0), tuple(cfg.profile.churn.thresholds)) if churn else \
        np.full(len(ids), None)
    table = pa.table({"customer_id": ids, "churn_score": pa.array(scores.astype(np.float32)),
                      "churn_risk": pa.array(tiers.tolist(), pa.string()),
                      "expected_purchases": pa.array(value["expected_purchases"].astype(np.float32)),
                      "expected_value": pa.array(value["expected_value"].astype(np.float32))})
    return {"table": table, "value": value, "label": label_name, "y": y, "churn": churn, "scores": scores, "x": x}


def _journey_codes(work: Path, events: Path, ids: pa.Array, as_of: str, max_len: int) -> tuple[np.ndarray, list[str]]:
    """Event-type codes of every customer, with the journeys job's own sequence settings when it ran."""
    encoder = artifact(work, "journeys", "encoder_meta")
    state = read_json(encoder) if encoder.exists() else {}
    if state.get("as_of") == as_of and "sequences" in state:
        builder = SequenceBuilder.from_dict(state["sequences"])
        if "event_type" in builder.fields_:
            store = builder.store(events, ids)
            field = store.categorical_names.index("event_type")
            vocab = list(SPECIAL_TOKENS) + builder.vocabularies_["event_type"].tokens
            return _field_codes(store, field), vocab
    log.info("profile: no journeys encoder for as_of=%s, sequences built with profile.journeys.max_len=%d",
             as_of, max_len)
    return _sequences(events, ids, as_of, max_len)


def _profile_segments(cfg: DictConfig, work: Path, inputs: dict[str, Any],
                      scored: dict[str, Any], notes: list[str]) -> tuple[list[dict[str, Any]], pa.Table, dict]:
    """One profile per segment: persona, lifts, words, journeys, churn and value."""
    pcfg = cfg.profile
    features, labels, k, ids = inputs["features"], inputs["labels"], inputs["k"], inputs["ids"]
    numeric = [c for c in features.column_names if c != "customer_id" and
               (pa.types.is_floating(features.schema.field(c).type) or pa.types.is_integer(features.schema.field(c).type))]
    # categorical attributes (contract, region, ...) profile as value shares
    indicators = categorical_indicators(features)
    profiled = features.select(["customer_id", *numeric])
    for name in indicators.column_names:
        profiled = profiled.append_column(name, indicators[name])
    lifts = segment_lifts(profiled, labels, n_segments=k)
    by_segment = lifts_by_segment(lifts)
    sizes = segment_sizes(labels, k).to_pylist()
    monetary = features["monetary_sum"].to_numpy(zero_copy_only=False) if "monetary_sum" in features.column_names \
        else np.zeros(len(labels))
    concentration = value_concentration(np.nan_to_num(monetary), labels, k).to_pylist()
    events_top, ngrams = {}, {}
    if inputs["events"] is not None:
        # event mixes and n-gram rates per segment settle long before a million customers: a seeded
        # sample keeps the n-gram arrays (8 bytes per step and order) to a bounded size
        rows = _fit_sample(np.ones(len(labels), dtype=bool), pcfg.journeys.get("max_customers"), int(cfg.seed),
                           key="journeys.max_customers")
        codes, vocab = _journey_codes(work, inputs["events"], ids.take(pa.array(rows)), inputs["as_of"],
                                      int(pcfg.journeys.max_len))
        events_top = top_event_types(codes, labels[rows], k, vocab=vocab, top_n=int(pcfg.journeys.top_n))
        ngrams = journey_ngrams(codes, labels[rows], k, vocab=vocab, top_n=int(pcfg.journeys.top_n))
        del codes
    words, snippets = _words(cfg, inputs)
    reps = representatives(inputs["segments"]["distance"].to_numpy(), labels, n=int(pcfg.representatives),
                           n_segments=k)
    rating = segment_means(features["mean_rating"].to_numpy(zero_copy_only=False), labels, k) \
        if "mean_rating" in features.column_names else np.full(k, np.nan)
    y = scored["y"]
    churn_rate = segment_means(y, labels, k) if y is not None else np.full(k, np.nan)
    churn_labelled, churn_reliable = _churn_support(pcfg, y, labels, k, notes)
    overall_churn = float(np.nanmean(y)) if y is not None and np.isfinite(y).any() else float("nan")
    churn_score = segment_means(scored["scores"], labels, k)
    per_customer_value = scored["value"]["expected_value"]
    expected_value = segment_means(per_customer_value, labels, k)
    overall_value = float(np.nanmean(per_customer_value)) if np.isfinite(per_customer_value).any() else float("nan")
    names, actions = _names_and_actions(cfg, k, by_segment, words, np.where(churn_reliable, churn_rate, np.nan),
                                        overall_churn, expected_value,
                                        overall_value, _without_history(features, labels, k, inputs["as_of"], notes),
                                        notes)
    id_list = ids.to_pylist()
    profiles = []
    for s in range(k):
        n, a = names[s], actions[s]
        top = sorted(by_segment.get(s, {}).items(), key=lambda kv: -abs(kv[1]))[:8]
        at_stake = sizes[s]["size"] * float(expected_value[s]) if np.isfinite(expected_value[s]) else None
        profiles.append({
            "segment": s, "name": n.name, "name_source": n.source, "rule": n.rule, "name_evidence": n.evidence,
            "action": a.text, "action_kind": a.kind, "action_evidence": a.evidence,
            "value_at_stake": at_stake,
            "size": sizes[s]["size"], "share": sizes[s]["share"],
            "value_share": concentration[s].get("value_share"),
            "top_lifts": top,
            "words": {source: w.get(s, []) for source, w in words.items()},
            "top_events": events_top.get(s, []),
            "ngrams": [(list(g), c, r) for g, c, r in ngrams.get(s, [])],
            "mean_rating": float(rating[s]), "churn_rate": float(churn_rate[s]),
            "churn_labelled": int(churn_labelled[s]), "churn_rate_reliable": bool(churn_reliable[s]),
            "churn_score": float(churn_score[s]), "expected_value": float(expected_value[s]),
            "representatives": [{"customer_id": id_list[i], "snippet": (snippets.get(i) or "")[:200]}
                                for i in reps.get(s, [])],
        })
    return profiles, lifts, by_segment


def _churn_support(pcfg: DictConfig, y: np.ndarray | None, labels: np.ndarray, k: int,
                   notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labelled customers per segment, and whether its observed churn rate rests on enough of them.

    A rate over a handful of labelled customers (a segment of newcomers, say, where only the few
    with a history before as_of have a label) can read 0% or 100% by chance: below
    ``profile.churn.min_labelled`` it is kept with its count, and names and actions do not use
    it, unless it differs from the base rate beyond chance (the base rate lies outside its 95%
    Wilson interval): 12 churners out of 12 against a base of 24% is a finding, not noise, and a
    name implying loyalty must not ignore it.
    """
    minimum = pcfg.churn.get("min_labelled", 30)
    check_int("profile", "churn.min_labelled", minimum, low=1, config_key="profile.churn.min_labelled")
    if y is None:
        return np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)
    known = np.isfinite(y)
    labelled = np.bincount(labels[known], minlength=k)
    churned = np.bincount(labels[known], weights=y[known], minlength=k)
    low, high = _wilson_interval(churned, labelled)
    base = float(np.mean(y[known])) if known.any() else float("nan")
    reliable = (labelled >= minimum) | ((labelled > 0) & ((base < low) | (base > high)))
    for s in np.flatnonzero((labelled > 0) & ~reliable):
        _note(notes, f"segment {int(s)}: its observed churn rate rests on {int(labelled[s])} labelled customers "
                     f"(fewer than profile.churn.min_labelled={minimum}) and is within chance of the base rate: "
                     "reported, not used for its name or action")
    return labelled, reliable


def _wilson_interval(successes: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval of a proportion per entry (``[0, 1]`` where ``n`` is 0)."""
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, successes / np.maximum(n, 1), 0.5)
        denom = 1 + z * z / np.maximum(n, 1)
        centre = (p + z * z / (2 * np.maximum(n, 1))) / denom
        half = z * np.sqrt(p * (1 - p) / np.maximum(n, 1) + z * z / (4 * np.maximum(n, 1) ** 2)) / denom
    return np.where(n > 0, centre - half, 0.0), np.where(n > 0, centre + half, 1.0)


def _without_history(features: pa.Table, labels: np.ndarray, k: int, as_of: str,
                     notes: list[str]) -> dict[int, float]:
    """Segments made mostly of customers with no event before as_of, and that share of them.

    Their features are imputed, so lift rules would call them "Dormant" or the like: they had not
    arrived yet (their first event comes after as_of), which is another thing altogether, and
    they are named for it.
    """
    if "n_events" not in features.column_names:
        return {}
    empty = features["n_events"].to_numpy(zero_copy_only=False) == 0
    share = np.bincount(labels, weights=empty.astype(np.float64), minlength=k) / np.maximum(
        np.bincount(labels, minlength=k), 1)
    out = {int(s): float(share[s]) for s in np.flatnonzero(share > 0.5)}
    for s in out:
        _note(notes, f"segment {s}: {share[s]:.0%} of its customers have no event before as_of={as_of} "
                     f"(they arrived later); it is named for that, not by its imputed features")
    return out


def _name_overrides(cfg: DictConfig, k: int) -> dict[int, str]:
    """``profile.names`` as ``segment -> name``, checked: ids of existing segments, distinct names."""
    given = cfg.profile.get("names")
    if given is None:
        return {}
    if not OmegaConf.is_dict(given):
        raise ConfigError(f"profile.names must map segment ids to names, e.g. {{3: Weekend gardeners}}; "
                          f"got {OmegaConf.to_container(given) if OmegaConf.is_config(given) else given!r}",
                          config_key="profile.names")
    out: dict[int, str] = {}
    for key, name in OmegaConf.to_container(given, resolve=True).items():
        try:
            seg = int(str(key))
        except ValueError:
            seg = -1
        if not 0 <= seg < k:
            raise ConfigError(f"profile.names names segment {key!r}, but the segments are 0..{k - 1}: "
                              "use the ids of profiles.json or the report", config_key="profile.names")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"profile.names gives segment {seg} the name {name!r}; expected a non-empty string",
                              config_key="profile.names")
        out[seg] = name.strip()
    twice = sorted({n for n in out.values() if list(out.values()).count(n) > 1})
    if twice:
        raise ConfigError(f"profile.names gives the same name to several segments: {twice}; names must be "
                          "distinct", config_key="profile.names")
    return out


def _names_and_actions(cfg: DictConfig, k: int, by_segment: dict, words: dict[str, dict[int, list]],
                       churn_rate: np.ndarray, overall_churn: float, expected_value: np.ndarray,
                       overall_value: float, no_history: dict[int, float], notes: list[str]
                       ) -> tuple[dict[int, SegmentName], dict[int, NextBestAction]]:
    """A distinct name and a next-best action with its evidence for every segment."""
    pcfg = cfg.profile
    for key in ("churn_tolerance", "churn_high"):
        check_real("profile", key, pcfg.personas[key], low=1.0, config_key=f"profile.personas.{key}")
    rules = OmegaConf.to_container(pcfg.personas.rules, resolve=True) if pcfg.personas.rules else None
    as_of = data_as_of(cfg)
    fixed = {s: (f"No activity before {as_of}", [f"{share:.0%} of its customers have no event before as_of"])
             for s, share in no_history.items()}
    seg_words: dict[int, list[str]] = {}
    for by_seg in words.values():  # every source's words, in source order, as tie-breakers
        for s, pairs in by_seg.items():
            seg_words.setdefault(int(s), []).extend(w for w, *_ in pairs)
    rates = {s: float(churn_rate[s]) for s in range(k)}
    value_ratio = {s: float(expected_value[s]) / overall_value for s in range(k)} if overall_value > 0 else None
    names = name_segments({s: by_segment.get(s, {}) for s in range(k)}, rules, churn_rate=rates,
                          value_ratio=value_ratio,
                          overall_churn=overall_churn, churn_tolerance=pcfg.personas.churn_tolerance,
                          churn_high=pcfg.personas.churn_high, words=seg_words, fixed=fixed,
                          overrides=_name_overrides(cfg, k))
    if np.isfinite(overall_churn):  # a rule name within the tolerance but on the wrong side is said
        for text in churn_contradictions(names, rules, churn_rate, overall_churn):
            _note(notes, text)
    texts = OmegaConf.to_container(pcfg.personas.actions, resolve=True) or {}
    actions = {}
    for s in range(k):
        if s in no_history:
            action = NextBestAction("onboarding", NO_HISTORY_ACTION, fixed[s][1])
        else:
            action = next_best_action(by_segment.get(s, {}), churn_rate=rates[s], overall_churn=overall_churn,
                                      value=float(expected_value[s]), overall_value=overall_value)
        # the user's own text, by segment name, persona rule or action kind
        n = names[s]
        custom = next((texts[key] for key in (n.name, n.rule, action.kind) if key and key in texts), None)
        actions[s] = action._replace(text=str(custom)) if custom else action
    return names, actions


NO_HISTORY_ACTION = "Not customers yet at as_of: profile and score them once they have a history."


def _words(cfg: DictConfig, inputs: dict[str, Any]) -> tuple[dict[str, dict[int, list]], dict[int, str]]:
    """Distinctive words per source and segment, and each customer's first text as a snippet."""
    text_info = _texts(inputs["work"], inputs["ids"], inputs["labels"], inputs["as_of"])
    words: dict[str, dict[int, list]] = {}
    snippets: dict[int, str] = {}
    if text_info is None or not text_info[0].num_rows:
        return words, snippets
    texts, text_index, text_segments = text_info
    body = texts["text"].to_pylist()
    # the words block's keys are the function's keywords (stop lists, the common-word rule)
    words = distinctive_words_by_source(body, texts["source"].to_pylist(), text_segments, inputs["k"],
                                        **OmegaConf.to_container(cfg.profile.words, resolve=True))
    for row in range(len(body) - 1, -1, -1):  # keep each customer's first text
        if body[row]:  # rating-only reviews have no text
            snippets[int(text_index[row])] = body[row]
    return words, snippets


def _write_profiles(work: Path, as_of: str, k: int, profiles: list[dict[str, Any]], lifts: pa.Table) -> None:
    write_json(artifact(work, "profile", "profiles"), {"as_of": as_of, "n_segments": k, "segments": profiles})
    columns = ("name", "action_kind", "action", "size", "share", "value_share", "mean_rating", "churn_rate",
               "churn_labelled", "churn_rate_reliable", "churn_score", "expected_value")
    flat = pa.table({"segment": pa.array([p["segment"] for p in profiles], pa.int32()),
                     **{c: [p[c] for p in profiles] for c in columns},
                     "value_at_stake": pa.array([p["value_at_stake"] for p in profiles], pa.float64())})
    write_parquet(artifact(work, "profile", "profiles_table"), flat)
    write_parquet(artifact(work, "profile", "lifts"), lifts)


def _write_report(cfg: DictConfig, work: Path, inputs: dict[str, Any], scored: dict[str, Any],
                  profiles: list[dict[str, Any]], by_segment: dict, notes: list[str], seed: int) -> Path:
    as_of, k, churn = inputs["as_of"], inputs["k"], scored["churn"]
    names = {p["segment"]: p["name"] for p in profiles}
    xy, rows = pca_2d(scored["x"], n_sample=int(cfg.profile.projection_sample), seed=seed)
    k_svg = artifact(work, "segment", "k_selection_svg")
    overview = {"as of": as_of}
    if churn:
        overview["churn AUC (held out)"] = round(churn["metrics"]["model"]["roc_auc"], 3)
        if "rfm_logistic" in churn["metrics"]:
            overview["RFM-only AUC"] = round(churn["metrics"]["rfm_logistic"]["roc_auc"], 3)
    context = {
        "title": "gpuseg segment report",
        "subtitle": f"{len(inputs['ids']):,} customers, {k} segments, data as of {as_of}",
        "overview": overview,
        "segments": [{**p, "ngrams": [(tuple(g), c, r) for g, c, r in p["ngrams"]]} for p in profiles],
        "projection": {"xy": xy, "segments": inputs["labels"][rows]},
        "lift_matrix": lift_matrix(by_segment, names),
        "value_note": _value_note(scored["value"]["report"]),
        "notes": notes,
        **({"k_selection_svg": k_svg.read_text()} if k_svg.exists() else {}),
        # segment.previous was used: the report says which ids were kept, born, dead or renumbered
        **({"matching": inputs["segmentation"]["matching"]} if inputs["segmentation"].get("matching") else {}),
    }
    return write_report(artifact(work, "profile", "report"), render_report(context))


def _value_note(report: dict[str, Any]) -> str | None:
    """Why the expected value at stake is not estimated, or None when it is."""
    reason = report.get("not_estimated") or report.get("value_not_estimated")
    return f"expected value not estimated: {reason}" if reason else None


@staged("profile")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Profile every segment, score churn and value for every customer, and write report.html."""
    ctx = start(cfg, "profile", needs_device=True)
    seed = int(cfg.seed)
    work = work_dir(cfg)
    out = job_dir(work, "profile")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    inputs = _load_inputs(cfg, work)
    notes: list[str] = []
    with contextlib.ExitStack() as cleanup:
        scratch = cleanup.enter_context(tempfile.TemporaryDirectory(dir=out, prefix=".matrix-"))
        scored = _score_customers(cfg, work, inputs, ctx["device"], seed, notes, scratch, cleanup)
        # the profile's own artifact: segment/segments.parquet stays as the segment job wrote it
        write_parquet(artifact(work, "profile", "scores"), scored["table"])
        profiles, lifts, by_segment = _profile_segments(cfg, work, inputs, scored, notes)
        _write_profiles(work, inputs["as_of"], inputs["k"], profiles, lifts)
        report_path = _write_report(cfg, work, inputs, scored, profiles, by_segment, notes, seed)
    k = inputs["k"]
    metrics = {
        "n_customers": len(inputs["ids"]), "n_segments": k, "as_of": inputs["as_of"],
        "value": scored["value"]["report"],
        "churn": {"label": scored["label"], **scored["churn"].get("metrics", {})},
        "personas": {p["segment"]: p["name"] for p in profiles},
        "actions": {p["segment"]: p["action_kind"] for p in profiles},
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(artifact(work, "profile", "metrics"), metrics)
    log.info("profile: %d segments; report at %s", k, report_path)
    result = {"n_segments": k, "churn_label": scored["label"], "notes": notes, "output_dir": str(out),
              "report_path": str(report_path), "profiles_path": str(artifact(work, "profile", "profiles")),
              "scores_path": str(artifact(work, "profile", "scores"))}
    return finish(cfg, "profile", ctx["manifest"], result)
