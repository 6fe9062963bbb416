"""``gpuseg journeys``: train the LSTM journey encoder on event sequences and embed every customer.

Customers are split once (by ``seed``) into train / validation (early stopping) / test; the
vocabularies and the network see only the training side, and ``metrics.json`` scores the
test customers: next-event accuracy against a unigram and a first-order Markov baseline, the
label head's ROC AUC against a logistic regression on the RFM+ features. A large population
trains on a bounded, stratified sample of each side (``journey.max_train_customers``); every
customer is then encoded in a streamed pass, ``journey.encode_chunk_customers`` at a time, so
the padded sequences of everyone never exist at once. (How the embeddings
separate the synthetic data's planted personas is scored by benchmarks/bench_journey.py with
:mod:`gpuseg.evaluation`, which no job imports.)
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
from omegaconf import DictConfig, OmegaConf

from gpuseg.data.events import to_microseconds
from gpuseg.jobs.common import (
    customer_label,
    data_as_of,
    finish,
    load_validated,
    staged,
    start,
    work_dir,
)
from gpuseg.journey.baselines import next_event_scores
from gpuseg.journey.model import JourneyEncoder
from gpuseg.journey.sampling import journey_strata, stratified_sample, stratum_counts
from gpuseg.journey.sequences import EventStore, SequenceBuilder, Sequences, count_events
from gpuseg.runtime.distributed import init_from_env
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import ParquetStreamWriter, write_json
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.metrics import roc_auc
from gpuseg.value.churn import ChurnModel
from gpuseg.value.summary import (
    HOLDOUT_CHURN,
    btyd_summary,
    holdout_end_after,
    no_purchase_in_holdout,
)

log = logging.getLogger(__name__)

#: training customers of ``journey.max_train_customers=auto`` per device type: on one CPU core
#: the LSTM trains 100-250 sequences/s (shared 2-core VM), so 10k customers x a few epochs take minutes
AUTO_TRAIN_CUSTOMERS = {"cpu": 10_000, "cuda": 1_000_000}


def journeys_dir(work: Path) -> Path:
    """Folder of the journey block artifacts."""
    return job_dir(work, "journeys")


def _split(n: int, val_fraction: float, test_fraction: float,
           seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Customer-level train / validation / test rows of ``n`` customers, drawn from ``seed``."""
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(f"journey.val_fraction ({val_fraction}) and journey.test_fraction ({test_fraction}) "
                          "must be in [0, 1) with a sum below 1", config_key="journey.test_fraction")
    rng = np.random.default_rng([seed, 5])
    rows = rng.permutation(n)
    n_test = int(round(len(rows) * test_fraction))
    n_val = int(round(len(rows) * val_fraction))
    test, val, train = rows[:n_test], rows[n_test:n_test + n_val], rows[n_test + n_val:]
    return np.sort(train), np.sort(val), np.sort(test)


def _rfm_matrix(work: Path, ids: pa.Array) -> np.ndarray | None:
    """RFM+ model matrix (or raw numeric features) aligned to ``ids``, if `gpuseg features` ran."""
    path = artifact(work, "features", "matrix")
    if not path.exists():
        path = artifact(work, "features", "table")
        if not path.exists():
            return None
    table = pq.read_table(path)
    cols = [c for c in table.column_names
            if c != "customer_id" and (pa.types.is_floating(table[c].type) or pa.types.is_integer(table[c].type))]
    if not cols:
        return None
    index = pc.index_in(ids, value_set=table["customer_id"].combine_chunks())
    if index.null_count:
        log.warning("features cover only part of the customers: no RFM+ comparison")
        return None
    X = np.column_stack([table[c].cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
                         for c in cols])
    # raw features leave undefined statistics NaN: the comparison imputes them as 0
    return np.nan_to_num(X[index.to_numpy(zero_copy_only=False)], nan=0.0, posinf=0.0, neginf=0.0)


def _next_event_metrics(encoder: JourneyEncoder, train: Sequences, test: Sequences,
                        validation: Sequences) -> tuple[dict[str, Any], dict[str, Any]]:
    """Next-event accuracy and log-loss of the encoder and its baselines, on the same test steps."""
    scores = next_event_scores(encoder, train, test, validation)
    acc, ll = scores["accuracy"], scores["log_loss"]
    accuracy = {**acc, "n_steps": scores["n_steps"], "model_beats_both": bool(acc["model"] > max(acc["unigram"],
                                                                                                 acc["markov"])),
                "top_k": scores["top_k_accuracy"], "trivial": scores["trivial"]}
    if scores["trivial"]:
        accuracy["note"] = scores["note"]
        log.warning("journeys: %s", scores["note"])
    log_loss = {**ll, "n_steps": scores["n_steps"], "markov_prior": scores["markov_prior"],
                "model_beats_both": bool(ll["model"] < min(ll["unigram"], ll["markov"])),
                "too_short": scores["too_short"], "versus_markov": scores["versus_markov"],
                **({"note": scores["note"]} if "note" in scores else {})}
    return accuracy, log_loss


def _label_metrics(work: Path, encoder: JourneyEncoder, seqs: Sequences, y: np.ndarray, label: str,
                   train_rows: np.ndarray, test_rows: np.ndarray) -> dict[str, Any]:
    test = test_rows[~np.isnan(y[test_rows])]
    result: dict[str, Any] = {"label": label, "n_test": int(len(test)),
                              "positive_rate": float(np.mean(y[test])) if len(test) else None}
    result["journey_head_auc"] = roc_auc(y[test], encoder.predict_proba(seqs.subset(test)))
    X = _rfm_matrix(work, seqs.customer_ids)
    if X is None:
        result["rfm_logistic_auc"] = None
        result["note"] = "run `gpuseg features` first for the RFM+ logistic regression comparison"
        return result
    train = train_rows[~np.isnan(y[train_rows])]
    # the same logistic regression the profile job uses as its RFM+ baseline
    baseline = ChurnModel(hidden=0, device="cpu").fit(X[train], y[train])
    result["rfm_logistic_auc"] = roc_auc(y[test], baseline.churn_probability(X[test]))
    result["n_rfm_features"] = int(X.shape[1])
    return result


def _embedding_table(seqs: Sequences, emb: np.ndarray) -> pa.Table:
    dim = emb.shape[1]
    values = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.table({
        "customer_id": seqs.customer_ids,
        "has_journey": pa.array(seqs.lengths > 0),
        "n_events": pa.array(seqs.n_events.astype(np.int64)),
        "journey": pa.FixedSizeListArray.from_arrays(values, dim),
    })


def _encode_everyone(path: Path, encoder: JourneyEncoder, store: EventStore, chunk: int) -> dict[str, Any]:
    """Embed every customer of ``store``, ``chunk`` customers at a time, straight into ``path``.

    Only one chunk is ever padded; rows are written in the customers table's order, customers
    without events included (zero vector, ``has_journey`` false).
    """
    schema = pa.schema([("customer_id", store.customer_ids.type), ("has_journey", pa.bool_()),
                        ("n_events", pa.int64()), ("journey", pa.list_(pa.float32(), int(encoder.out_dim)))])
    seconds, cpu, encoded = 0.0, 0.0, 0
    t0 = time.perf_counter()
    with ParquetStreamWriter(path, schema) as writer:
        for _, seqs in store.chunks(chunk):
            t, c = time.perf_counter(), time.process_time()
            emb = encoder.transform(seqs)
            seconds += time.perf_counter() - t
            cpu += time.process_time() - c
            encoded += int(np.sum(seqs.lengths > 0))
            writer.write(_embedding_table(seqs, emb))
    if writer.rows != len(store):
        raise RuntimeError(f"journeys wrote {writer.rows} embeddings for {len(store)} customers")
    return {"customers": len(store), "sequences": encoded, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "pass_seconds": round(time.perf_counter() - t0, 3),
            "sequences_per_second": round(encoded / seconds, 1) if seconds > 0 else None}


def _extra_columns(jcfg: DictConfig, schema: dict[str, Any], data_cfg: DictConfig) -> list[str]:
    """The extra event columns used as fields: none, the validated ones (auto), or a list.

    With ``auto``, a data source's own ``data.journey.extra_columns`` (which of its columns make
    useful fields) comes first.
    """
    extra = jcfg.extra_columns
    if str(extra) == "auto" and (data_cfg.get("journey") or {}).get("extra_columns") is not None:
        extra = data_cfg.journey.extra_columns
    if extra is None:
        return []
    if str(extra) == "auto":
        return list((schema.get("events") or {}).get("extra_columns") or [])
    return list(OmegaConf.to_container(extra, resolve=True))


def _max_train_customers(setting: Any, device) -> int | None:
    """``journey.max_train_customers``: an int, ``auto`` (by device type) or null (every customer)."""
    if setting is None or str(setting).lower() in ("null", "none"):
        return None
    if str(setting) == "auto":
        return AUTO_TRAIN_CUSTOMERS.get(getattr(device, "type", "cpu"), AUTO_TRAIN_CUSTOMERS["cpu"])
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"journey.max_train_customers must be an int >= 1, auto or null; got {setting!r}",
                          config_key="journey.max_train_customers")
    return int(setting)


def _sample(rows: tuple[np.ndarray, ...], n_events: np.ndarray, y: np.ndarray | None, max_len: int,
            max_train: int | None, seed: int) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """Bounded, stratified train / validation / test samples of the split's rows.

    The training side keeps at most ``max_train`` customers; validation and test keep the
    split's proportions to it (``max_train x val_fraction / train_fraction``). Each is drawn
    within strata of journey length (log2 buckets of ``min(n_events, max_len)``) x label.
    """
    strata = journey_strata(np.minimum(n_events, max_len), y)
    train, val, test = rows
    bounds: list[int | None] = [max_train, None, None]
    if max_train is not None and max_train < len(train):
        bounds[1:] = [int(np.ceil(max_train * len(part) / len(train))) for part in (val, test)]
    sampled = tuple(stratified_sample(part, strata[part], bound, seed, stream=i)
                    for i, (part, bound) in enumerate(zip(rows, bounds, strict=True)))
    names = ("train", "validation", "test")
    labelled = y is not None
    info = {
        "max_train_customers": max_train,
        "sampled": any(len(s) < len(p) for s, p in zip(sampled, rows, strict=True)),
        "stratified_by": "journey length (log2 buckets of min(n_events, max_len))" + (" x label" if labelled else ""),
        "population": {k: int(len(p)) for k, p in zip(names, rows, strict=True)},
        "sample": {k: int(len(s)) for k, s in zip(names, sampled, strict=True)},
        "strata": {"population": stratum_counts(strata[train], labelled),
                   "train": stratum_counts(strata[sampled[0]], labelled)},
    }
    return sampled, info


def _sequences(cfg: DictConfig, work: Path, schema: dict[str, Any], ids: pa.Array, as_of: str, seed: int,
               y: np.ndarray | None, device):
    """Every customer's steps, vocabularies from the sampled training customers, and the sample."""
    jcfg = cfg.journey
    events = artifact(work, "validate", "events")
    as_of_us = to_microseconds(as_of)
    split = _split(len(ids), float(jcfg.val_fraction), float(jcfg.test_fraction), seed)
    # customers without events have no journey to learn from or to score
    n_events = count_events(events, ids, as_of=as_of_us)
    split = tuple(r[n_events[r] > 0] for r in split)
    if len(split[0]) == 0:
        raise UserInputError(f"no training customer has an event before as_of={as_of}: no journeys to learn",
                             table="events", config_key="data.as_of")
    rows, info = _sample(split, n_events, y, int(jcfg.max_len),
                         _max_train_customers(jcfg.get("max_train_customers", "auto"), device), seed)
    log.info("journeys: training on %d of %d training customers (validation %d of %d, test %d of %d), "
             "stratified by %s: %s", info["sample"]["train"], info["population"]["train"],
             info["sample"]["validation"], info["population"]["validation"], info["sample"]["test"],
             info["population"]["test"], info["stratified_by"], info["strata"]["train"])
    builder = SequenceBuilder(
        max_len=int(jcfg.max_len), as_of=as_of_us, extra_columns=_extra_columns(jcfg, schema, cfg.data),
        min_count=int(jcfg.min_count), max_vocab=None if jcfg.max_vocab is None else int(jcfg.max_vocab),
        progress=bool(cfg.progress),
    ).fit(events, ids.take(pa.array(rows[0])))
    store = builder.store(events, ids)
    return builder, store, rows, info


def _encoder(cfg: DictConfig, device, seed: int, ckpt: Path) -> JourneyEncoder:
    """The encoder the ``journey`` config describes, checkpointing into ``ckpt``."""
    jcfg = cfg.journey
    embed_dims = OmegaConf.to_container(jcfg.embed_dims, resolve=True) if isinstance(
        jcfg.embed_dims, DictConfig) else jcfg.embed_dims
    return JourneyEncoder(
        embed_dims=embed_dims, hidden_size=int(jcfg.hidden_size), num_layers=int(jcfg.num_layers),
        out_dim=int(jcfg.out_dim), dropout=float(jcfg.dropout), batch_size=int(jcfg.batch_size),
        epochs=int(jcfg.epochs), lr=float(jcfg.lr), weight_decay=float(jcfg.weight_decay),
        patience=int(jcfg.patience), val_fraction=float(jcfg.val_fraction), grad_clip=float(jcfg.grad_clip),
        aux_weight=float(jcfg.aux_weight), gap_weight=float(jcfg.gap_weight),
        mix_weight=float(jcfg.mix_weight), precision=str(jcfg.precision),
        device=device, encode_batch_size=int(jcfg.encode_batch_size),
        num_threads=None if jcfg.cpu_threads is None else int(jcfg.cpu_threads), seed=seed, checkpoint_dir=ckpt,
        progress=bool(cfg.progress),
    )


def _metrics(cfg: DictConfig, work: Path, encoder: JourneyEncoder, store: EventStore, seqs: Sequences, rows,
             label, y, device, world: int) -> dict[str, Any]:
    """What the trained encoder is worth on held-out customers, next to its baselines.

    ``seqs`` holds the sampled customers (``rows`` index into it); ``store`` everyone.
    """
    train_rows, val_rows, test_rows = rows
    lengths = store.lengths
    metrics: dict[str, Any] = {
        "n_customers": len(store),
        "customers_without_events": int(np.sum(lengths == 0)),
        "split": {"train": int(len(train_rows)), "validation": int(len(val_rows)), "test": int(len(test_rows))},
        "max_len": int(cfg.journey.max_len),
        "mean_length": float(lengths[lengths > 0].mean()) if (lengths > 0).any() else 0.0,
        "fields": seqs.categorical_names,
        "vocab_sizes": dict(zip(seqs.categorical_names, seqs.vocab_sizes, strict=True)),
        "device": str(device),
        "world_size": world,
        "training": dict(encoder.train_info_.items()),
        "history": encoder.history_,
    }
    metrics["next_event_accuracy"], metrics["next_event_log_loss"] = (
        _next_event_metrics(encoder, seqs.subset(train_rows), seqs.subset(test_rows), seqs.subset(val_rows))
        if len(test_rows) else (None, None))
    if label is not None and len(test_rows):
        metrics["label_auc"] = _label_metrics(work, encoder, seqs, y, label, train_rows, test_rows)
    return metrics


def _rate(sequences: int, seconds: float) -> float | None:
    return round(sequences / seconds, 1) if sequences and seconds > 0 else None


def _holdout_label(cfg: DictConfig, work: Path, schema: dict[str, Any], ids: pa.Array,
                   as_of: str) -> tuple[str | None, np.ndarray | None]:
    """With no customers label, the profile's churn label: no purchase in the hold-out after as_of.

    Only when the events reach past as_of; the events after as_of never enter the sequences,
    they only say who came back (as ``gpuseg profile`` measures churn), so the label head has
    something real to learn on a customers-only-by-events shop like Online Retail.
    """
    end = holdout_end_after((schema.get("events") or {}).get("last"), as_of)
    if end is None:
        return None, None
    roles = OmegaConf.to_container(cfg.data.roles, resolve=True) if "roles" in cfg.data else None
    summary = btyd_summary(artifact(work, "validate", "events"), ids, as_of, roles=roles, holdout_end=end)
    y = no_purchase_in_holdout(summary)
    if y is None or not np.isfinite(y).any() or len(np.unique(y[np.isfinite(y)])) < 2:
        return None, None
    log.info("journeys: no customers label; the label head learns %s (hold-out to %s, %d customers labelled)",
             HOLDOUT_CHURN, end, int(np.isfinite(y).sum()))
    return HOLDOUT_CHURN, y


@staged("journeys")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the journey encoder on a sample, score it on held-out customers, embed everyone."""
    ctx = start(cfg, "journeys", needs_device=True)
    place = init_from_env(ctx["device"])
    device, rank, world = place.device, place.rank, place.world
    work = work_dir(cfg)
    seed = int(cfg.seed)
    schema, customers = load_validated(work)
    ids = customers["customer_id"].combine_chunks()
    as_of = data_as_of(cfg)
    if schema.get("as_of") not in (None, as_of):
        log.warning("data was validated with as_of=%s but journeys use as_of=%s", schema["as_of"], as_of)
    label, y = customer_label(cfg.journey.label, schema, customers, key="journey.label")
    if label is None and cfg.journey.label == "auto":
        label, y = _holdout_label(cfg, work, schema, ids, as_of)
    t0 = time.perf_counter()
    builder, store, sample_rows, sample_info = _sequences(cfg, work, schema, ids, as_of, seed, y, device)
    # the sample's padded sequences: its training, validation and test customers back to back
    picked = np.concatenate(sample_rows)
    seqs = store.sequences(picked)
    ends = np.cumsum([len(r) for r in sample_rows])
    rows = tuple(np.arange(a, b, dtype=np.int64) for a, b in zip([0, *ends[:-1]], ends, strict=True))
    y_sample = None if y is None else y[picked]
    t_seq = time.perf_counter() - t0

    ckpt = artifact(work, "journeys", "checkpoints")
    if not bool(cfg.journey.resume) and ckpt.exists() and rank == 0:
        shutil.rmtree(ckpt)
    encoder = _encoder(cfg, device, seed, ckpt)
    t1, c1 = time.perf_counter(), time.process_time()
    encoder.fit(seqs, y_sample, train_rows=rows[0], validation_rows=rows[1])
    t_train, c_train = time.perf_counter() - t1, time.process_time() - c1
    if rank != 0:
        return {"rank": rank, "world_size": world}

    metrics = _metrics(cfg, work, encoder, store, seqs, rows, label, y_sample, device, world)
    metrics["sample"] = sample_info
    encoded = _encode_everyone(artifact(work, "journeys", "embeddings"), encoder, store,
                               int(cfg.journey.get("encode_chunk_customers", 65_536)))
    epochs_run = int(encoder.train_info_.get("epochs_run", 0))
    metrics["throughput"] = {
        # training epochs (per-epoch validation included): every rank's sequences per second
        "train_sequences_per_second": _rate(len(rows[0]) * epochs_run, t_train),
        "encode_sequences_per_second": encoded["sequences_per_second"],
        # per second of this process's CPU time: comparable across runs on a shared machine
        "train_sequences_per_cpu_second": _rate(len(rows[0]) * epochs_run // world, c_train),
        "encode_sequences_per_cpu_second": _rate(encoded["sequences"], encoded["cpu_seconds"]),
        "encoded_sequences": encoded["sequences"],
        "encode_chunk_customers": int(cfg.journey.get("encode_chunk_customers", 65_536)),
    }
    metrics["seconds"] = {"sequences": round(t_seq, 3), "train": round(t_train, 3), "encode": encoded["seconds"],
                          "encode_pass": encoded["pass_seconds"], "total": round(time.perf_counter() - t0, 3)}

    encoder.save(artifact(work, "journeys", "encoder"),
                 extra={"sequences": builder.to_dict(), "label": label, "as_of": as_of})
    builder.save(artifact(work, "journeys", "vocabularies"))
    write_json(artifact(work, "journeys", "metrics"), metrics)
    nea = metrics["next_event_accuracy"] or {}
    log.info("journeys: next-event accuracy %.3f (unigram %.3f, Markov %.3f); trained on %d customers "
             "(%s seq/s), %d customers embedded (%s seq/s) in %.1fs",
             nea.get("model", float("nan")), nea.get("unigram", float("nan")), nea.get("markov", float("nan")),
             len(rows[0]), metrics["throughput"]["train_sequences_per_second"], len(ids),
             metrics["throughput"]["encode_sequences_per_second"], metrics["seconds"]["total"])
    result = {**{k: metrics[k] for k in ("n_customers", "customers_without_events", "split", "seconds",
                                         "throughput")},
              "sample": {k: sample_info[k] for k in ("max_train_customers", "sampled", "population", "sample")},
              "next_event_accuracy": metrics["next_event_accuracy"],
              "label_auc": metrics.get("label_auc"),
              "output_dir": str(journeys_dir(work)), "embeddings_path": str(artifact(work, "journeys", "embeddings")),
              "encoder_path": str(artifact(work, "journeys", "encoder_weights")),
              "metrics_path": str(artifact(work, "journeys", "metrics"))}
    return finish(cfg, "journeys", ctx["manifest"], result)
