"""Benchmark: journey sequence building, LSTM training and encoding throughput, and quality.

Usage::

    python benchmarks/bench_journey.py --quick                  # < 1 minute on CPU
    python benchmarks/bench_journey.py                          # CPU: 1M customers / 20M events build
    python benchmarks/bench_journey.py --device cuda --n 200000 --max-len 100 --hidden 256
    python benchmarks/bench_journey.py --quality                # also the job on 5000 synthetic customers

Speed (one run each, same process):

* **build**: ``SequenceBuilder`` fit + transform of a synthetic events table (random order,
  random customers) into padded arrays; the baseline is a per-customer Python loop timed on a
  sample of the customers and scaled to all of them.
* **train**: sequences/s of one training epoch (AdamW, clipping, bf16 autocast on CUDA).
* **encode**: sequences/s of ``JourneyEncoder.transform``; on CUDA the CPU (``--threads``)
  encoding of a sample is timed in the same run as the baseline.

Throughput uses full-length sequences (every customer has ``--max-len`` events), the worst case.
``--quality`` runs ``gpuseg generate/validate/features/journeys`` at the default settings on
5000 synthetic customers and copies the accuracy vs unigram/Markov, the label AUC vs the RFM+
logistic regression and the persona ARIs. Writes ``benchmarks/results/journey_<device>_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import library_versions, machine_info, result_path, sync, today, write_result

from gpuseg.evaluation import persona_ari
from gpuseg.journey import JourneyEncoder, SequenceBuilder, Sequences
from gpuseg.runtime.device import resolve_device

log = logging.getLogger("bench_journey")


# ------------------------------------------------------------------------------------ build


def events_table(n_customers: int, n_events: int, seed: int = 0) -> tuple[pa.Table, pa.Array]:
    rng = np.random.default_rng(seed)
    ids = pa.array([f"C{i:08d}" for i in range(n_customers)])

    def strings(k: int, prefix: str) -> pa.Array:
        codes = pa.array(rng.integers(0, k, n_events).astype(np.int32))
        return pa.DictionaryArray.from_arrays(codes, pa.array([f"{prefix}{i}" for i in range(k)])).dictionary_decode()

    cust = pa.array(rng.integers(0, n_customers, n_events).astype(np.int32))
    start = np.datetime64("2023-01-01", "us").astype(np.int64)
    table = pa.table({
        "customer_id": pa.DictionaryArray.from_arrays(cust, ids).dictionary_decode(),
        "timestamp": pa.array(start + rng.integers(0, 730 * 86_400 * 10**6, n_events), type=pa.timestamp("us")),
        "event_type": strings(8, "type"),
        "amount": pa.array(np.where(rng.random(n_events) < 0.3, rng.lognormal(4, 1, n_events), np.nan),
                           from_pandas=True),
        "category": strings(20, "cat"),
        "channel": strings(5, "ch"),
    })
    return table, ids


def loop_build(table: pa.Table, ids: list[str], builder: SequenceBuilder) -> tuple[float, float]:
    """The per-customer Python loop the vectorised build replaces (baseline).

    Returns the seconds of the pass over the events (grouping) and of the per-customer part.
    """
    t0 = time.perf_counter()
    wanted = set(ids)
    rows: dict[str, list] = {i: [] for i in ids}
    cols = table.select(["customer_id", "timestamp", "event_type", "amount", "category", "channel"]).to_pydict()
    for k, cid in enumerate(cols["customer_id"]):
        if cid in wanted:
            rows[cid].append(k)
    t1 = time.perf_counter()
    vocab = builder.vocabularies_
    out = np.zeros((len(ids), builder.max_len, 3), dtype=np.int16)
    for r, cid in enumerate(ids):
        mine = sorted(rows[cid], key=lambda k: cols["timestamp"][k])[-builder.max_len:]
        for p, k in enumerate(mine):
            for f, name in enumerate(("event_type", "category", "channel")):
                out[r, p, f] = vocab[name].encode(pa.array([cols[name][k]]))[0]
    return t1 - t0, time.perf_counter() - t1


def bench_build(n_customers: int, n_events: int, max_len: int) -> dict:
    t = time.perf_counter()
    table, ids = events_table(n_customers, n_events)
    made = time.perf_counter() - t
    as_of = int(np.datetime64("2025-01-01", "us").astype(np.int64))
    t = time.perf_counter()
    builder = SequenceBuilder(max_len=max_len, as_of=as_of).fit(table)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    seqs = builder.transform(table, ids)
    transform_s = time.perf_counter() - t
    sample = ids.slice(0, min(2000, n_customers)).to_pylist()
    small = table.slice(0, min(n_events, 2_000_000))
    group_s, per_customer_s = loop_build(small, sample, builder)
    loop_s = group_s * n_events / len(small) + per_customer_s * n_customers / len(sample)
    return {"customers": n_customers, "events": n_events, "max_len": max_len, "table_seconds": round(made, 2),
            "fit_seconds": round(fit_s, 2), "transform_seconds": round(transform_s, 2),
            "total_seconds": round(fit_s + transform_s, 2),
            "events_per_second": round(n_events / (fit_s + transform_s)),
            "mean_length": float(seqs.lengths.mean()),
            "baseline": "per-customer Python loop, timed on a sample and scaled (estimate)",
            "baseline_seconds_estimate": round(loop_s, 1),
            "speedup_vs_loop": round(loop_s / (fit_s + transform_s), 1)}


# ------------------------------------------------------------------------------- throughput


def full_sequences(n: int, max_len: int, seed: int = 0) -> Sequences:
    rng = np.random.default_rng(seed)
    return Sequences(
        customer_ids=pa.array([f"c{i}" for i in range(n)]),
        lengths=np.full(n, max_len, dtype=np.int64), n_events=np.full(n, max_len, dtype=np.int64),
        categorical=np.stack([rng.integers(3, v, (n, max_len)) for v in (11, 23, 8)], -1).astype(np.int16),
        continuous=rng.normal(size=(n, max_len, 3)).astype(np.float32),
        categorical_names=["event_type", "category", "channel"],
        continuous_names=["log_amount", "log_gap_hours", "log_hours_to_as_of"], vocab_sizes=[11, 23, 8])


def bench_model(device: torch.device, n: int, max_len: int, hidden: int, threads: int,
                batch_size: int, encode_batch: int) -> dict:
    seqs = full_sequences(n, max_len)
    y = (np.random.default_rng(1).random(n) < 0.4).astype(float)
    params = dict(hidden_size=hidden, num_layers=2, out_dim=64, batch_size=batch_size, epochs=1, val_fraction=0.0,
                  device=device, num_threads=threads if device.type == "cpu" else None,
                  encode_batch_size=encode_batch, seed=0)
    sync(device)
    t = time.perf_counter()
    enc = JourneyEncoder(**params).fit(seqs, y)
    sync(device)
    train_s = time.perf_counter() - t
    enc.transform(seqs.subset(np.arange(min(n, encode_batch))))  # warm-up
    sync(device)
    t = time.perf_counter()
    enc.transform(seqs)
    sync(device)
    encode_s = time.perf_counter() - t
    result = {"sequences": n, "max_len": max_len, "hidden_size": hidden, "num_layers": 2, "batch_size": batch_size,
              "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
              "train_seconds": round(train_s, 2), "train_sequences_per_second": round(n / train_s, 1),
              "encode_seconds": round(encode_s, 3), "encode_sequences_per_second": round(n / encode_s, 1)}
    if device.type == "cuda":
        m = min(n, 4000)
        with tempfile.TemporaryDirectory() as tmp:
            enc.save(Path(tmp) / "encoder")
            enc_cpu = JourneyEncoder.load(Path(tmp) / "encoder", device="cpu")
        enc_cpu.num_threads, enc_cpu.precision = threads, "fp32"
        t = time.perf_counter()
        enc_cpu.transform(seqs.subset(np.arange(m)))
        cpu_rate = m / (time.perf_counter() - t)
        result["cpu_encode_sequences_per_second"] = round(cpu_rate, 1)
        result["encode_speedup_vs_cpu"] = round(result["encode_sequences_per_second"] / cpu_rate, 1)
    return result


# ---------------------------------------------------------------------------------- quality


def quality(device: str, n_customers: int) -> dict:
    from hydra import compose, initialize_config_module

    from gpuseg.jobs import features, generate, journeys, validate

    with tempfile.TemporaryDirectory() as tmp:
        def make(job, *overrides):
            with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
                return compose(config_name=job, overrides=[f"paths.work_dir={tmp}/work", "progress=false",
                                                           *overrides])

        generate.run(make("generate", f"data.generator.n_customers={n_customers}"))
        validate.run(make("validate"))
        features.run(make("features"))
        t = time.perf_counter()
        journeys.run(make("journeys", f"device={device}"))
        seconds = time.perf_counter() - t
        metrics = json.loads((Path(tmp) / "work" / "journeys" / "metrics.json").read_text())
        metrics["persona_ari"] = _persona_ari(Path(tmp) / "work")
    return {"customers": n_customers, "settings": "conf/journey/default.yaml", "job_seconds": round(seconds, 1),
            **{k: metrics.get(k) for k in ("next_event_accuracy", "label_auc", "persona_ari", "split", "training")}}


def _persona_ari(work: Path) -> dict | None:
    """k-means ARI of the journey embeddings against the planted personas (synthetic data only)."""
    table = pq.read_table(work / "journeys" / "embeddings.parquet")
    X = np.stack(table["journey"].to_numpy(zero_copy_only=False))
    return persona_ari(X, table["customer_id"].combine_chunks(), pq.read_table(work / "data" / "ground_truth.parquet"),
                       mask=table["has_journey"].to_numpy(zero_copy_only=False), seed=0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--n", type=int, default=None, help="sequences for training/encoding throughput")
    parser.add_argument("--max-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (256 CPU, 1024 CUDA)")
    parser.add_argument("--encode-batch", type=int, default=None, help="encoding batch (1024 CPU, 8192 CUDA)")
    parser.add_argument("--build-customers", type=int, default=None)
    parser.add_argument("--build-events", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    parser.add_argument("--quality", action="store_true", help="also run the job on synthetic data")
    parser.add_argument("--quality-customers", type=int, default=5000)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    cuda = device.type == "cuda"
    n = args.n or (1000 if args.quick else (200_000 if cuda else 4000))
    build_c = args.build_customers or (50_000 if args.quick else 1_000_000)
    build_e = args.build_events or (1_000_000 if args.quick else 20_000_000)
    result: dict = {"benchmark": "journey", "date": today(), "quick": args.quick,
                    "device": str(device), "machine": machine_info(device, threads),
                    "versions": {**library_versions(), "cuda": torch.version.cuda or "none"},
                    "note": "one run each; on a shared machine the numbers are provisional"}
    if not args.skip_build:
        log.info("building sequences: %d customers, %d events", build_c, build_e)
        result["build"] = bench_build(build_c, build_e, args.max_len)
        log.info("build: %s", result["build"])
    log.info("model throughput: %d sequences, L=%d, hidden %d", n, args.max_len, args.hidden)
    result["model"] = bench_model(device, n, args.max_len, args.hidden, threads,
                                  args.batch_size or (1024 if cuda else 256),
                                  args.encode_batch or (8192 if cuda else 1024))
    log.info("model: %s", result["model"])
    if args.quality:
        result["quality"] = quality(args.device, args.quality_customers)
        log.info("quality: %s", json.dumps(result["quality"], default=str)[:2000])
    out = write_result(result_path("journey", device, args.quick, args.out), result)
    log.info("wrote %s", out)
    return result


if __name__ == "__main__":
    main()
