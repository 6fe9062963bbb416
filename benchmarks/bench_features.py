"""Benchmark the RFM+ feature engine (RFMFeaturizer + TabularTransform) on synthetic events.

Usage::

    python benchmarks/bench_features.py            # 1M customers / 20M events
    python benchmarks/bench_features.py --quick    # 100k customers / 2M events (< 1 minute)

The canonical events Parquet is generated with numpy (invoice-like purchases: several lines per
occasion, whole-second timestamps over two years, 5% of the events after ``as_of``, returns as
negative amounts, 1% of events from customers outside the customers table). Generation is not
timed. The baseline, timed in the same run, is a plain pandas ``groupby`` computing only five core
features (n_events, tenure, recency, distinct purchase occasions, spend); skip it with
``--no-baseline``. Writes ``benchmarks/results/features_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import RESULTS, library_versions, machine_info, result_path, utc_now, write_result

from gpuseg.data.schema import EVENTS
from gpuseg.features import RFMFeaturizer, TabularTransform
from gpuseg.runtime.io import ParquetStreamWriter

AS_OF = np.datetime64("2024-01-01T00:00:00", "us")
TYPES = np.array(["purchase", "view", "add_to_cart", "support_ticket", "review", "return"])
TYPE_P = np.array([0.55, 0.25, 0.08, 0.05, 0.04, 0.03])
CHANNELS = np.array(["web", "app", "store", "phone", "email"])
CATEGORIES = np.array([f"cat_{k:02d}" for k in range(30)])


def customer_ids(n: int) -> pa.Array:
    return pa.array(np.char.add("C", np.char.zfill(np.arange(n).astype(str), 8)), type=pa.string())


def generate_events(path: Path, n_customers: int, n_events: int, seed: int = 0, chunk: int = 2_000_000) -> None:
    """Write a canonical events Parquet with about ``n_events`` rows."""
    rng = np.random.default_rng(seed)
    ids = customer_ids(n_customers)
    unknown = customer_ids(n_customers + 1000).slice(n_customers)
    # heavy-tailed activity per customer; ~10% get (almost) nothing
    weight = rng.lognormal(0.0, 1.2, n_customers) * (rng.random(n_customers) > 0.1)
    cdf = np.cumsum(weight / weight.sum())
    span_s = 2 * 365 * 86_400
    as_of_s = AS_OF.astype("datetime64[s]").astype(np.int64)
    written = 0
    with ParquetStreamWriter(path, EVENTS) as writer:
        while written < n_events:
            m = min(chunk, n_events - written)
            # one draw per "occasion"; purchases repeat into 1-4 invoice lines at the same second
            n_occ = int(m / 1.6)
            cust = np.minimum(np.searchsorted(cdf, rng.random(n_occ)), n_customers - 1)
            ts = as_of_s - span_s + (rng.random(n_occ) * span_s * 1.05).astype(np.int64)
            etype = rng.choice(len(TYPES), n_occ, p=TYPE_P)
            lines = np.where(etype == 0, rng.integers(1, 5, n_occ), 1)
            rep = np.repeat(np.arange(n_occ), lines)[:m]
            cust, ts, etype = cust[rep], ts[rep], etype[rep]
            k = len(rep)
            amount = np.round(rng.lognormal(2.5, 1.0, k), 2)
            amount[rng.random(k) < 0.04] *= -1  # returns as negative lines
            has_amount = (etype == 0) | (etype == 5)
            # ~1% of rows come from customers outside the customers table
            stray = pa.array(rng.random(k) < 0.01)
            ids_col = pc.if_else(stray, unknown.take(pa.array(cust % 1000)), ids.take(pa.array(cust)))
            batch = pa.table(
                {
                    "customer_id": ids_col,
                    "timestamp": pa.array(ts * 1_000_000, type=pa.int64()).cast(pa.timestamp("us")),
                    "event_type": pa.array(TYPES[etype]),
                    "amount": pa.array(amount, mask=~has_amount),
                    "category": pa.array(CATEGORIES[rng.integers(0, 30, k)], mask=rng.random(k) < 0.05),
                    "channel": pa.array(CHANNELS[rng.integers(0, 5, k)]),
                }
            )
            writer.write(batch)
            written += k


def pandas_baseline(path: Path, ids: pa.Array) -> float:
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_parquet(path, columns=["customer_id", "timestamp", "event_type", "amount"])
    df = df[df["timestamp"] < pd.Timestamp(str(AS_OF))]
    as_of = pd.Timestamp(str(AS_OF))
    index = pd.Index(ids.to_pylist(), name="customer_id")
    g = df.groupby("customer_id")["timestamp"]
    n_events = g.size().reindex(index, fill_value=0)
    tenure = (as_of - g.min()).dt.total_seconds().reindex(index) / 86_400
    p = df[(df["event_type"] == "purchase") & ~(df["amount"] < 0)]
    gp = p.groupby("customer_id")
    recency = (as_of - gp["timestamp"].max()).dt.total_seconds().reindex(index) / 86_400
    freq = gp["timestamp"].nunique().reindex(index, fill_value=0)
    spend = gp["amount"].sum().reindex(index, fill_value=0.0)
    _ = (n_events, tenure, recency, freq, spend)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k customers / 2M events")
    parser.add_argument("--customers", type=int, default=None)
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true", help="skip the pandas baseline")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n_customers = args.customers or (100_000 if args.quick else 1_000_000)
    n_events = args.events or (2_000_000 if args.quick else 20_000_000)

    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        path = Path(tmp) / "events.parquet"
        t0 = time.perf_counter()
        generate_events(path, n_customers, n_events)
        gen_s = time.perf_counter() - t0
        ids = customer_ids(n_customers)

        feat = RFMFeaturizer(as_of=str(AS_OF), batch_size=args.batch_size)
        t0 = time.perf_counter()
        feat.fit(path)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = feat.transform(path, ids)
        transform_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        X, names = TabularTransform().fit_transform(table)
        tabular_s = time.perf_counter() - t0
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before pandas
        baseline_s = None if args.no_baseline else pandas_baseline(path, ids)

    rfm_s = fit_s + transform_s
    result = {
        "benchmark": "features",
        "mode": "quick" if args.quick else "full",
        "date": utc_now(),
        "machine": {**machine_info("cpu"), "note": "shared 2-core machine; numbers are provisional"},
        "device": "cpu",
        "versions": library_versions("pandas"),
        "params": {"customers": n_customers, "events": n_events, "batch_size": args.batch_size},
        "generate_s": round(gen_s, 3),
        "rfm_fit_s": round(fit_s, 3),
        "rfm_transform_s": round(transform_s, 3),
        "rfm_fit_transform_s": round(rfm_s, 3),
        "events_per_s": round(n_events / rfm_s),
        "tabular_fit_transform_s": round(tabular_s, 3),
        "n_features_raw": table.num_columns - 1,
        "matrix_shape": list(X.shape),
        "baseline": "pandas groupby, 5 core features only (n_events, tenure, recency, frequency, "
        "spend); speedup = baseline_s / rfm_fit_transform_s",
        "baseline_s": None if baseline_s is None else round(baseline_s, 3),
        "speedup_vs_baseline": None if baseline_s is None else round(baseline_s / rfm_s, 2),
        "peak_rss_mib_before_baseline": round(peak_rss),
        "stats": feat.stats_,
    }
    out = write_result(result_path("features", None, args.quick, results_dir=args.out), result)
    sys.stdout.write(json.dumps(result, indent=2) + f"\nwritten to {out}\n")
    return result


if __name__ == "__main__":
    main()
