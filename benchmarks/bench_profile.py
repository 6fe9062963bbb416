"""Benchmark: do the persona names of ``gpuseg profile`` match the planted personas?

Usage::

    python benchmarks/bench_profile.py --quick     # 1500 customers
    python benchmarks/bench_profile.py             # 5000 customers

Runs the whole pipeline (``gpuseg run`` with ``segment.n_clusters=9``, the number of planted
personas) on synthetic data, then compares each segment's persona name with the planted persona
most of its customers have (``ground_truth.parquet``, which the pipeline never reads). Also
records the churn AUC next to the RFM-only logistic regression, and BG/NBD hold-out predictions
against actual purchases. Writes ``benchmarks/results/profile_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from _common import machine_info, result_path, utc_now, write_result  # noqa: I001  (puts the repo on sys.path)
from hydra import compose, initialize_config_module

from gpuseg.evaluation import EXPECTED_PERSONA_NAMES, match_report
from gpuseg.jobs import run as run_job
from gpuseg.runtime.manifest import library_versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None, help="synthetic customers")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    n = args.n or (1500 if args.quick else 5000)
    work = Path(tempfile.mkdtemp(prefix="gpuseg-bench-profile-")) / "work"
    with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
        cfg = compose(config_name="run", overrides=[
            f"paths.work_dir={work}", "progress=false", "device=cpu", f"data.generator.n_customers={n}",
            f"segment.n_clusters={args.k}"])
    t0 = time.perf_counter()
    run_job.run(cfg)
    seconds = time.perf_counter() - t0
    segments = pq.read_table(work / "segment" / "segments.parquet")
    truth = pq.read_table(work / "data" / "ground_truth.parquet")
    assert segments["customer_id"].equals(truth["customer_id"])
    metrics = json.loads((work / "profile" / "metrics.json").read_text())
    # the persona rule each name is built on ("Steady regulars" in "Steady regulars, books"); a
    # name described from features, or given by the user, stands for no planted persona
    profiles = json.loads((work / "profile" / "profiles.json").read_text())["segments"]
    names = {int(p["segment"]): p["rule"] or p["name"] for p in profiles}
    report = match_report(names, segments["segment"].to_numpy(), truth["persona"].to_numpy(zero_copy_only=False),
                          EXPECTED_PERSONA_NAMES)
    churn = metrics["churn"]
    payload = {
        "benchmark": "profile",
        "date": utc_now(),
        "quick": args.quick,
        "machine": machine_info("cpu"),
        "device": "cpu",
        "versions": library_versions(),
        "n_customers": n,
        "n_clusters": args.k,
        "pipeline_seconds": round(seconds, 1),
        "persona_match": report,
        "churn_auc": {"model": churn.get("model", {}).get("roc_auc"),
                      "rfm_logistic": churn.get("rfm_logistic", {}).get("roc_auc")},
        "value": {k: v for k, v in metrics["value"].items() if k != "holdout"},
        "holdout": {k: v for k, v in metrics["value"].get("holdout", {}).items()},
    }
    path = write_result(result_path("profile", None, args.quick, args.out), payload)
    print(f"persona match {report['n_matched']}/{report['n_segments']} segments; churn AUC "
          f"{payload['churn_auc']['model']:.3f} vs RFM {payload['churn_auc']['rfm_logistic']:.3f}; "
          f"hold-out predicted {payload['holdout'].get('predicted_total', np.nan):.0f} vs actual "
          f"{payload['holdout'].get('actual_total', np.nan):.0f} -> {path}")


if __name__ == "__main__":
    main()
