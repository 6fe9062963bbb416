"""``gpuseg journeys``: train the LSTM journey encoder on event sequences and embed every customer.

Customers are split once (by ``seed``) into train / validation (early stopping) / test; the
vocabularies and the network see only the training side, and ``metrics.json`` scores the
test customers: next-event accuracy against a unigram and a first-order Markov baseline, the
label head's ROC AUC against a logistic regression on the RFM+ features. (How the embeddings
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
from gpuseg.journey.sequences import SequenceBuilder, Sequences
from gpuseg.runtime.distributed import init_from_env
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import write_json, write_parquet
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.metrics import roc_auc
from gpuseg.value.churn import ChurnModel

log = logging.getLogger(__name__)

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
                                                                                                 acc["markov"]))}
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


def _embedding_table(ids: pa.Array, seqs: Sequences, emb: np.ndarray) -> pa.Table:
    dim = emb.shape[1]
    values = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.table({
        "customer_id": ids,
        "has_journey": pa.array(seqs.lengths > 0),
        "n_events": pa.array(seqs.n_events.astype(np.int64)),
        "journey": pa.FixedSizeListArray.from_arrays(values, dim),
    })


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


def _sequences(cfg: DictConfig, work: Path, schema: dict[str, Any], ids: pa.Array, as_of: str, seed: int):
    """Sequences of every customer, vocabularies from the training customers only, and the split."""
    jcfg = cfg.journey
    events = artifact(work, "validate", "events")
    train_rows, val_rows, test_rows = _split(len(ids), float(jcfg.val_fraction), float(jcfg.test_fraction), seed)
    builder = SequenceBuilder(
        max_len=int(jcfg.max_len), as_of=to_microseconds(as_of), extra_columns=_extra_columns(jcfg, schema, cfg.data),
        min_count=int(jcfg.min_count), max_vocab=None if jcfg.max_vocab is None else int(jcfg.max_vocab),
        progress=bool(cfg.progress),
    ).fit(events, ids.take(pa.array(train_rows)))
    seqs = builder.transform(events, ids)
    # customers without events have no journey to learn from or to score
    train_rows, val_rows, test_rows = (r[seqs.lengths[r] > 0] for r in (train_rows, val_rows, test_rows))
    if len(train_rows) == 0:
        raise UserInputError(f"no training customer has an event before as_of={as_of}: no journeys to learn",
                             table="events", config_key="data.as_of")
    return builder, seqs, (train_rows, val_rows, test_rows)


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


def _metrics(cfg: DictConfig, work: Path, encoder: JourneyEncoder, seqs: Sequences, rows, label, y,
             device, world: int) -> dict[str, Any]:
    """What the trained encoder is worth on held-out customers, next to its baselines."""
    train_rows, val_rows, test_rows = rows
    lengths = seqs.lengths
    metrics: dict[str, Any] = {
        "n_customers": len(seqs.customer_ids),
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


@staged("journeys")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the journey encoder, score it on held-out customers, embed everyone."""
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
    t0 = time.perf_counter()
    builder, seqs, rows = _sequences(cfg, work, schema, ids, as_of, seed)
    t_seq = time.perf_counter() - t0
    label, y = customer_label(cfg.journey.label, schema, customers, key="journey.label")

    ckpt = artifact(work, "journeys", "checkpoints")
    if not bool(cfg.journey.resume) and ckpt.exists() and rank == 0:
        shutil.rmtree(ckpt)
    encoder = _encoder(cfg, device, seed, ckpt)
    t1 = time.perf_counter()
    encoder.fit(seqs, y, train_rows=rows[0], validation_rows=rows[1])
    t_train = time.perf_counter() - t1
    if rank != 0:
        return {"rank": rank, "world_size": world}

    t2 = time.perf_counter()
    embeddings = encoder.transform(seqs)
    t_encode = time.perf_counter() - t2
    metrics = _metrics(cfg, work, encoder, seqs, rows, label, y, device, world)
    metrics["seconds"] = {"sequences": round(t_seq, 3), "train": round(t_train, 3), "encode": round(t_encode, 3),
                          "total": round(time.perf_counter() - t0, 3)}

    write_parquet(artifact(work, "journeys", "embeddings"), _embedding_table(ids, seqs, embeddings))
    encoder.save(artifact(work, "journeys", "encoder"),
                 extra={"sequences": builder.to_dict(), "label": label, "as_of": as_of})
    builder.save(artifact(work, "journeys", "vocabularies"))
    write_json(artifact(work, "journeys", "metrics"), metrics)
    nea = metrics["next_event_accuracy"] or {}
    log.info("journeys: next-event accuracy %.3f (unigram %.3f, Markov %.3f); %d customers embedded in %.1fs",
             nea.get("model", float("nan")), nea.get("unigram", float("nan")), nea.get("markov", float("nan")),
             len(ids), metrics["seconds"]["total"])
    result = {**{k: metrics[k] for k in ("n_customers", "customers_without_events", "split", "seconds")},
              "next_event_accuracy": metrics["next_event_accuracy"],
              "label_auc": metrics.get("label_auc"),
              "output_dir": str(journeys_dir(work)), "embeddings_path": str(artifact(work, "journeys", "embeddings")),
              "encoder_path": str(artifact(work, "journeys", "encoder_weights")),
              "metrics_path": str(artifact(work, "journeys", "metrics"))}
    return finish(cfg, "journeys", ctx["manifest"], result)
