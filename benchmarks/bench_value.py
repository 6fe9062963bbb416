"""BG/NBD + Gamma-Gamma on real and synthetic data: fitted parameters and hold-out accuracy.

Usage::

    python benchmarks/bench_value.py            # Online Retail II + synthetic (3000 customers)
    python benchmarks/bench_value.py --quick    # synthetic only, 1000 customers (< 1 minute)

(1) Online Retail II (``../shared/data/online_retail``): validated with the documented mapping
(``gpuseg/conf/data/online_retail.yaml``), summarised at as_of 2011-09-01 with a hold-out to
2011-12-09 inclusive, BG/NBD and Gamma-Gamma fitted on the calibration period (days). (2) The
synthetic generator (hold-out 90 days after as_of). For each: parameters, fit times, predicted vs
actual hold-out purchase occasions by calibration frequency (0..7+, as FHL 2005 fig. 4) and in
total, and each fit's ``degenerate_`` / ``fit_notes_`` (the predictions of a degenerate fit are
still measured, flagged). Writes ``benchmarks/results/value_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import ROOT, library_versions, machine_info, result_path, utc_now, write_result

from gpuseg.data.mapping import DataMapping
from gpuseg.data.synthetic import generate_synthetic
from gpuseg.data.validate import validate_tables
from gpuseg.value import BetaGeoModel, GammaGammaModel, btyd_summary, holdout_by_frequency

ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail"


def evaluate(events: Path, customers: Path, as_of: str, holdout_end: str, roles, device) -> dict:
    """Summary, fits and hold-out comparison for one canonical events table."""
    ids = pq.read_table(customers, columns=["customer_id"])["customer_id"]
    t0 = time.perf_counter()
    summary = btyd_summary(events, ids, as_of, roles=roles, holdout_end=holdout_end)
    t_summary = time.perf_counter() - t0
    x, tx, T, m = (summary[c].to_numpy() for c in ("frequency", "recency", "T", "monetary_value"))
    actual = summary["holdout_purchases"].to_numpy()
    horizon = float(summary.schema.metadata[b"holdout_length"])
    t0 = time.perf_counter()
    bgf = BetaGeoModel(device=device).fit(x, tx, T)
    t_bg = time.perf_counter() - t0
    t0 = time.perf_counter()
    gg = GammaGammaModel(device=device).fit(x, m)
    t_gg = time.perf_counter() - t0
    # a degenerate fit is reported (and its predictions still measured, flagged as such)
    pred = bgf.conditional_expected_number_of_purchases_up_to_time(horizon, x, tx, T, allow_degenerate=True)
    seen = np.isfinite(x)
    groups = holdout_by_frequency(x, pred, actual)
    profit = gg.conditional_expected_average_profit(x, m, allow_degenerate=True)
    return {
        "as_of": as_of,
        "holdout_end_exclusive": holdout_end,
        "holdout_days": horizon,
        "n_customers": int(x.size),
        "n_with_history": int(seen.sum()),
        "n_repeat_buyers": int((x > 0).sum()),
        "bgnbd": {"params": bgf.params_, "log_likelihood": bgf.log_likelihood_, "n_iter": bgf.n_iter_,
                  "fit_seconds": t_bg, "degenerate": bgf.degenerate_, "fit_notes": bgf.fit_notes_},
        "gamma_gamma": {"params": gg.params_, "n_customers": gg.n_customers_, "n_iter": gg.n_iter_,
                        "fit_seconds": t_gg, "degenerate": gg.degenerate_, "fit_notes": gg.fit_notes_,
                        "frequency_correlation": gg.frequency_correlation_,
                        "population_mean_spend": gg.params_["p"] * gg.params_["v"] / (gg.params_["q"] - 1),
                        "mean_observed_spend_repeat": float(np.mean(m[x > 0])),
                        "mean_expected_profit_repeat": float(np.mean(profit[x > 0]))},
        "summary_seconds": t_summary,
        "holdout_by_frequency": groups,
        "total_predicted": float(pred[seen].sum()),
        "total_actual_with_history": int(actual[seen].sum()),
        "total_actual_all": int(actual.sum()),
        "ratio_predicted_to_actual": float(pred[seen].sum() / max(actual[seen].sum(), 1)),
        "mean_abs_error_per_customer": float(np.abs(pred[seen] - actual[seen]).mean()),
    }


def online_retail(work: Path, device) -> dict:
    cfg_path = ROOT / "gpuseg" / "conf" / "data" / "online_retail.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["dir"] = str(ONLINE_RETAIL)
    cfg["events"]["path"] = str(ONLINE_RETAIL / "online_retail_II_2009_2011_combined.csv.gz")
    t0 = time.perf_counter()
    validate_tables(DataMapping.from_dict(cfg), work, as_of=cfg["as_of"], roles=cfg["roles"])
    t_val = time.perf_counter() - t0
    out = evaluate(work / "validated" / "events.parquet", work / "validated" / "customers.parquet",
                   "2011-09-01", "2011-12-10", cfg["roles"], device)
    out["validate_seconds"] = t_val
    return out


def synthetic(work: Path, n: int, device) -> dict:
    as_of = "2025-01-01"
    t0 = time.perf_counter()
    generate_synthetic(work, n_customers=n, seed=0, as_of=as_of, holdout_days=90)
    t_gen = time.perf_counter() - t0
    out = evaluate(work / "events.parquet", work / "customers.parquet", as_of, "2025-04-01", None, device)
    out["generate_seconds"] = t_gen
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data only, 1000 customers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"benchmark": "value", "date": utc_now(), "quick": args.quick,
              "machine": machine_info(device, args.threads), "device": str(device),
              "versions": library_versions("scipy")}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.quick and ONLINE_RETAIL.exists():
            result["online_retail"] = online_retail(Path(tmp) / "online_retail", device)
        result["synthetic"] = synthetic(Path(tmp) / "synthetic", 1000 if args.quick else 3000, device)
    path = write_result(result_path("value", quick=args.quick, out=args.out), result)
    for name in ("online_retail", "synthetic"):
        if name in result:
            r = result[name]
            print(f"{name}: BG/NBD {r['bgnbd']['params']}")
            print(f"  Gamma-Gamma {r['gamma_gamma']['params']}")
            for model in ("bgnbd", "gamma_gamma"):
                if r[model]["degenerate"] is not None:
                    print(f"  {model} fit is DEGENERATE: {r[model]['degenerate']}")
                for note in r[model]["fit_notes"]:
                    print(f"  note: {note}")
            print(f"  hold-out predicted {r['total_predicted']:.0f} vs actual "
                  f"{r['total_actual_with_history']} (ratio {r['ratio_predicted_to_actual']:.3f})")
            for g in r["holdout_by_frequency"]:
                print(f"    x={g['frequency']:>2}  n={g['n_customers']:5d}  pred {g['mean_predicted']:.3f}"
                      f"  actual {g['mean_actual']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
