"""Benchmark: does the journey block earn its place in the fused segments?

Usage::

    python benchmarks/bench_journey_contribution.py                  # synthetic + Online Retail
    python benchmarks/bench_journey_contribution.py --only synthetic # planted personas only
    python benchmarks/bench_journey_contribution.py --only real --real-dir ../shared/data/online_retail

Runs the real jobs twice from the same upstream outputs: ``gpuseg fuse`` with every block, and
with ``fuse.blocks.journey.enabled=false``; then ``gpuseg segment`` (and, on real data,
``gpuseg profile``) on each. Figures:

* synthetic (``gpuseg generate``, 9 planted personas, two of which differ only by the order of
  their events): ARI against the personas at k = 9 and at the k that ``n_clusters=auto`` picks;
* Online Retail II (no personas to score against): the business separation of the segments,
  i.e. the size-weighted spread of the segments' observed churn rate (no purchase in the
  hold-out after ``as_of``) and of their expected value, at the same k with and without the
  block (and at lower journey-block weights, ``--real-weights``), the ROC AUC of the profile's churn model fitted on each fused matrix (does the block
  carry churn signal per customer), and the ARI between the two segmentations (how much the
  block changes them).

Writes ``benchmarks/results/journey_contribution_cpu_<date>.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from _common import library_versions, machine_info, result_path, utc_now, write_result  # noqa: E402

from gpuseg.cluster.metrics import adjusted_rand_index  # noqa: E402
from gpuseg.runtime.io import read_json  # noqa: E402

log = logging.getLogger("bench_journey_contribution")

WITHOUT = ["fuse.blocks.journey.enabled=false"]


def _composer(work: Path, overrides: list[str]):
    from hydra import compose, initialize_config_module

    def cfg(job: str, *more: str):
        device = ["device=cpu"] if job in ("text", "journeys", "fuse", "segment", "profile") else []
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false",
                                                       *overrides, *device, *more])
    return cfg


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    return round(adjusted_rand_index(torch.as_tensor(a.astype(np.int64)), torch.as_tensor(b.astype(np.int64))), 4)


def _segments(result: dict) -> tuple[list, np.ndarray]:
    seg = pq.read_table(result["segments_path"], columns=["customer_id", "segment"])
    return seg["customer_id"].to_pylist(), seg["segment"].to_numpy()


def _fuse_and_segment(cfg, overrides: list[str], k: str) -> tuple[dict, dict]:
    from gpuseg.jobs import fuse, segment

    fused = fuse.run(cfg("fuse", *overrides))
    seg = segment.run(cfg("segment", f"segment.input={fused['fused_path']}", f"segment.n_clusters={k}"))
    return fused, seg


def synthetic(n: int, work: Path) -> dict:
    """ARI against the planted personas with and without the journey block (k = 9 and auto)."""
    from gpuseg.jobs import features, generate, journeys, text, validate

    cfg = _composer(work, [f"data.generator.n_customers={n}"])
    t0 = time.perf_counter()
    for module, name, extra in [(generate, "generate", ()), (validate, "validate", ()), (features, "features", ()),
                                (text, "text", ("text.num_threads=1",)), (journeys, "journeys", ())]:
        module.run(cfg(name, *extra))
    build = round(time.perf_counter() - t0, 1)
    truth = pq.read_table(work / "data" / "ground_truth.parquet", columns=["customer_id", "persona_id"])
    personas = truth["persona_id"].to_numpy()
    out: dict = {"n_customers": n, "build_seconds": build}
    for k in ("9", "auto"):
        row: dict = {}
        labels = {}
        for variant, overrides in (("with_journey", []), ("without_journey", WITHOUT)):
            fused, seg = _fuse_and_segment(cfg, overrides, k)
            ids, lab = _segments(seg)
            if ids != truth["customer_id"].to_pylist():
                raise RuntimeError("segments and ground truth are not in the same customer order")
            labels[variant] = lab
            row[variant] = {"ari_vs_personas": _ari(lab, personas), "n_clusters": seg["n_clusters"],
                            "variance_shares": {b: round(v, 3) for b, v in fused["variance_shares"].items()}}
            log.info("synthetic k=%s %s: ARI %.3f (k=%d)", k, variant, row[variant]["ari_vs_personas"],
                     seg["n_clusters"])
        row["ari_gain"] = round(row["with_journey"]["ari_vs_personas"] - row["without_journey"]["ari_vs_personas"], 4)
        row["ari_between"] = _ari(labels["with_journey"], labels["without_journey"])
        out[f"k={k}"] = row
    return out


def _spread(profiles: dict, field: str) -> dict:
    """Size-weighted spread of a per-segment figure around its size-weighted mean, and its range."""
    # a churn rate over too few labelled customers (profile.churn.min_labelled) is left out
    rows = [(s["size"], s.get(field)) for s in profiles["segments"]
            if field != "churn_rate" or s.get("churn_rate_reliable", True)]
    rows = [(w, float(v)) for w, v in rows if v is not None and np.isfinite(float(v))]
    if not rows:
        return {"spread": None, "range": None, "by_segment": []}
    w = np.array([r[0] for r in rows], dtype=float)
    v = np.array([r[1] for r in rows])
    mean = float((w * v).sum() / w.sum())
    return {"spread": round(float(np.sqrt((w * (v - mean) ** 2).sum() / w.sum())), 4),
            "range": round(float(v.max() - v.min()), 4), "mean": round(mean, 4),
            "by_segment": [round(float(x), 4) for x in v]}


def real(data_dir: Path, work: Path, ks: list[str], weights: list[float]) -> dict:
    """Business separation on Online Retail II with and without the journey block."""
    from gpuseg.jobs import features, journeys, profile, validate

    cfg = _composer(work, ["data=online_retail", f"paths.data_dir={data_dir}"])
    t0 = time.perf_counter()
    for module, name in [(validate, "validate"), (features, "features"), (journeys, "journeys")]:
        module.run(cfg(name))
    out: dict = {"data": str(data_dir.name), "build_seconds": round(time.perf_counter() - t0, 1),
                 "journey_metrics": {key: read_json(work / "journeys" / "metrics.json").get(key)
                                     for key in ("next_event_accuracy", "next_event_log_loss")}}
    for k in ks:
        row: dict = {}
        labels = {}
        variants = [("with_journey", []), ("without_journey", WITHOUT)] + [
            (f"journey_weight_{w:g}", [f"fuse.blocks.journey.weight={w}"]) for w in weights if w != 1.0]
        for variant, overrides in variants:
            fused, seg = _fuse_and_segment(cfg, overrides, k)
            # profile reads the segments just written; with and without share nothing else
            prof = profile.run(cfg("profile"))
            profiles = read_json(Path(prof["profiles_path"]))
            churn_model = (read_json(Path(prof["profiles_path"]).with_name("metrics.json")).get("churn") or {}).get("model")
            labels[variant] = _segments(seg)
            row[variant] = {"n_clusters": seg["n_clusters"],
                            "churn": _spread(profiles, "churn_rate"),
                            "expected_value": _spread(profiles, "expected_value"),
                            "names": [s["name"] for s in profiles["segments"]],
                            # customer level: how well the fused matrix predicts churn on held-out customers
                            "churn_model_roc_auc": (churn_model or {}).get("roc_auc")}
            log.info("real k=%s %s: k=%d churn spread %s value spread %s", k, variant, seg["n_clusters"],
                     row[variant]["churn"]["spread"], row[variant]["expected_value"]["spread"])
        if labels["with_journey"][0] != labels["without_journey"][0]:
            raise RuntimeError("the two segmentations do not list the same customers")
        row["ari_between"] = _ari(labels["with_journey"][1], labels["without_journey"][1])
        for figure in ("churn", "expected_value"):
            a, b = row["with_journey"][figure]["spread"], row["without_journey"][figure]["spread"]
            row[f"{figure}_spread_ratio"] = round(a / b, 3) if a is not None and b else None
        out[f"k={k}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["synthetic", "real"], default=None)
    parser.add_argument("--n", type=int, default=3000, help="synthetic customers")
    parser.add_argument("--real-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail")
    parser.add_argument("--real-k", nargs="*", default=["5", "auto"], help="k values on real data")
    parser.add_argument("--real-weights", nargs="*", type=float, default=[1.0, 0.5, 0.25],
                        help="journey block weights (fuse.blocks.journey.weight) also tried on real data")
    parser.add_argument("--work", type=Path, default=None, help="folder for the projects (default: a temp dir)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("gpuseg", "hydra"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    report: dict = {"benchmark": "journey_contribution", "date": utc_now(), "device": "cpu",
                    "machine": machine_info("cpu"), "versions": library_versions()}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.work or Path(tmp)
        if args.only in (None, "synthetic"):
            report["synthetic"] = synthetic(args.n, base / "synthetic")
        if args.only in (None, "real"):
            report["online_retail"] = real(args.real_dir.resolve(), base / "online_retail", args.real_k, args.real_weights)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    path = write_result(result_path("journey_contribution", "cpu", out=args.out), report)
    log.info("written to %s", path)


if __name__ == "__main__":
    main()
