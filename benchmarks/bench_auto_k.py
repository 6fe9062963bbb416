"""Benchmark: which k does ``segment.n_clusters=auto`` choose, and is it a good one?

Usage::

    python benchmarks/bench_auto_k.py                  # synthetic 5,000 customers + Online Retail
    python benchmarks/bench_auto_k.py --quick          # synthetic 1,500 customers only
    python benchmarks/bench_auto_k.py --cache /tmp/x   # where the prepared work directories live

Synthetic data (``gpuseg run`` up to ``fuse``: the fused tabular + text + journey matrix; the
generator plants 9 personas): the k the default rule (``prefer``) chooses, the adjusted Rand
index against the planted personas of the segments at that k next to the segments at the true
k=9 (both final fits of ``gpuseg segment``), the k the previous default (``vote``) takes on the
same evidence and its ARI, and for context the ARI of a fit at every candidate k. Online Retail
II (``data=online_retail``, fused RFM+ matrix, no churn label: the rule uses the evidence and
the value spread): the chosen k and, per segment, the churn rate (no purchase in the hold-out
after ``data.as_of``, as the profile job defines it) and the value per customer (monetary_sum
before as_of, and spend in the hold-out), with their spread across segments.

The prepared work directories (validate ... fuse) are cached under ``--cache`` and reused by
later runs (the segment job is re-run each time). Writes
``benchmarks/results/auto_k_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import ROOT, library_versions, machine_info, result_path, utc_now, write_result

log = logging.getLogger("bench_auto_k")

RETAIL = ROOT.parent / "shared" / "data" / "online_retail"
TRUE_K = 9


def _composer(work: Path, *base: str):
    from hydra import compose, initialize_config_module

    def cfg(job: str, *overrides: str):
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false", "device=cpu",
                                                       *base, *overrides])
    return cfg


def _prepare(work: Path, stages: str, *overrides: str) -> None:
    """``gpuseg run`` up to fuse, once: later runs reuse the work directory."""
    if (work / "fuse" / "fused.parquet").exists():
        log.warning("reusing %s", work)
        return
    cmd = [sys.executable, "-m", "gpuseg", "run", f"paths.work_dir={work}", "device=cpu", "progress=false",
           f"stages={stages}", *overrides]
    log.warning("preparing %s: %s", work, " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)


def _segment(cfg, *overrides: str) -> tuple[np.ndarray, dict, dict | None]:
    from gpuseg.jobs import segment

    res = segment.run(cfg("segment", *overrides))
    out = Path(res["output_dir"])
    labels = pq.read_table(out / "segments.parquet")["segment"].to_numpy()
    evidence = out / "k_selection.json"
    return labels, res, (json.loads(evidence.read_text()) if "segment.n_clusters=auto" in overrides else None)


def _vote_k(evidence: dict) -> int:
    """The k the previous default rule (mean rank of the four indices, k with large enough segments) takes."""
    pool = [c for c in evidence["candidates"] if c["eligible"]] or evidence["candidates"]
    ranks = np.zeros(len(pool))
    for metric, higher in (("silhouette", True), ("calinski_harabasz", True), ("davies_bouldin", False),
                           ("stability", True)):
        v = np.array([c[metric] for c in pool], dtype=float)
        order = np.argsort(-v if higher else v, kind="stable")
        ranks[order] += np.arange(len(pool))
    return int(pool[min(range(len(pool)), key=lambda i: (ranks[i], pool[i]["k"]))]["k"])


def _evidence_table(evidence: dict) -> list[dict]:
    keep = ("k", "silhouette", "calinski_harabasz", "davies_bouldin", "stability", "inertia", "min_share",
            "churn_spread", "value_spread", "eligible", "meets_min_stability", "in_prefer", "in_pool", "mean_rank")
    return [{key: c[key] for key in keep if key in c} for c in evidence["candidates"]]


def synthetic(cache: Path, n: int) -> dict:
    from gpuseg.cluster import MiniBatchKMeans
    from gpuseg.runtime.matrix import read_matrix
    from gpuseg.runtime.metrics import adjusted_rand_index

    work = cache / f"synthetic_{n}"
    _prepare(work, "[validate,features,text,journeys,fuse]", f"data.generator.n_customers={n}")
    cfg = _composer(work, f"data.generator.n_customers={n}")
    truth = pq.read_table(work / "data" / "ground_truth.parquet")
    t0 = time.perf_counter()
    labels, res, evidence = _segment(cfg, "segment.n_clusters=auto")
    search_s = time.perf_counter() - t0
    ids = pq.read_table(work / "segment" / "segments.parquet")["customer_id"].to_pylist()
    assert ids == truth["customer_id"].to_pylist()
    persona = truth["persona_id"].to_numpy()
    chosen = int(res["n_clusters"])
    at_true, _, _ = _segment(cfg, f"segment.n_clusters={TRUE_K}")
    vote = _vote_k(evidence)
    at_vote, _, _ = _segment(cfg, f"segment.n_clusters={vote}")
    # context: a final-style fit (the job's k-means settings) at every candidate k
    _, x, _ = read_matrix(work / "fuse" / "fused.parquet")
    import torch
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(cfg("segment").segment.kmeans, resolve=True)
    per_k = {}
    for c in evidence["candidates"]:
        model = MiniBatchKMeans(n_clusters=c["k"], random_state=0, device="cpu", **params).fit(torch.from_numpy(x))
        per_k[str(c["k"])] = round(adjusted_rand_index(persona, np.asarray(model.predict(x))), 4)
    out = {
        "n_customers": n,
        "planted_personas": TRUE_K,
        "matrix": res.get("n_features"),
        "chosen_k": chosen,
        "ari_at_chosen_k": adjusted_rand_index(persona, labels),
        "ari_at_true_k": adjusted_rand_index(persona, at_true),
        "vote_rule_k": vote,
        "ari_at_vote_k": adjusted_rand_index(persona, at_vote),
        "ari_by_k_single_fit": per_k,
        "rule_text": evidence["rule_text"],
        "reason": evidence["reason"],
        "stability_floor": evidence["stability_floor"],
        "business_sources": evidence["business_sources"],
        "evidence": _evidence_table(evidence),
        "search_and_fit_seconds": round(search_s, 1),
    }
    log.warning("synthetic: chosen k %d (ARI %.3f), true k %d (ARI %.3f), vote k %d (ARI %.3f)", chosen,
                out["ari_at_chosen_k"], TRUE_K, out["ari_at_true_k"], vote, out["ari_at_vote_k"])
    return out


def _holdout(work: Path, ids: list[str], as_of: str) -> tuple[np.ndarray, np.ndarray]:
    """Churn (no purchase in the hold-out, customers who bought before as_of) and hold-out spend."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from gpuseg.value import btyd_summary

    schema = json.loads((work / "validated" / "schema.json").read_text())
    last = np.datetime64(schema["events"]["last"].replace(" ", "T"), "D")
    end = str(last + 1)
    summary = btyd_summary(work / "validated" / "events.parquet", ids, as_of, holdout_end=end)
    t = summary["T"].to_numpy(zero_copy_only=False)
    held = summary["holdout_purchases"].to_numpy(zero_copy_only=False).astype(float)
    churn = np.where(np.isfinite(t), (held == 0).astype(float), np.nan)
    from gpuseg.data.events import to_microseconds

    events = pq.read_table(work / "validated" / "events.parquet", columns=["customer_id", "timestamp", "amount"])
    micros = pc.cast(events["timestamp"], "int64").to_numpy(zero_copy_only=False)
    after = events.filter(micros >= to_microseconds(as_of))
    spend = after.group_by("customer_id").aggregate([("amount", "sum")])
    index = pc.index_in(pa.array(ids), spend["customer_id"])
    amounts = spend["amount_sum"].take(index).fill_null(0).to_numpy(zero_copy_only=False)
    return churn, np.asarray(amounts, dtype=float)


def _finite(value: float, digits: int) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def online_retail(cache: Path) -> dict:
    from gpuseg.cluster.selection import business_separation

    work = cache / "online_retail"
    data = ["data=online_retail", f"paths.data_dir={RETAIL}"]
    _prepare(work, "[validate,features,fuse]", *data)
    cfg = _composer(work, *data)
    as_of = str(cfg("segment").data.as_of)
    t0 = time.perf_counter()
    labels, res, evidence = _segment(cfg, "segment.n_clusters=auto")
    seconds = time.perf_counter() - t0
    k = int(res["n_clusters"])
    ids = pq.read_table(work / "segment" / "segments.parquet")["customer_id"].to_pylist()
    churn, holdout_spend = _holdout(work, ids, as_of)
    feats = pq.read_table(work / "features" / "features.parquet", columns=["customer_id", "monetary_sum"])
    assert feats["customer_id"].to_pylist() == ids
    value = feats["monetary_sum"].to_numpy(zero_copy_only=False).astype(float)
    sizes = np.bincount(labels, minlength=k)
    figures = {name: business_separation(v, labels, k) for name, v in
               (("churn_rate", churn), ("value_before_as_of", value), ("spend_in_holdout", holdout_spend))}
    out = {
        "n_customers": len(ids),
        "as_of": as_of,
        "chosen_k": k,
        "reason": evidence["reason"],
        "business_sources": evidence["business_sources"],
        "stability_floor": evidence["stability_floor"],
        # churn is undefined (null) for a segment of customers with no purchase before as_of
        "segments": [{"segment": s, "size": int(sizes[s]),
                      "churn_rate": _finite(figures["churn_rate"]["by_segment"][s], 4),
                      "value_before_as_of": round(figures["value_before_as_of"]["by_segment"][s], 2),
                      "spend_in_holdout": round(figures["spend_in_holdout"]["by_segment"][s], 2)}
                     for s in range(k)],
        "spread": {name: {key: f[key] for key in ("overall", "spread", "range", "eta")} for name, f in figures.items()},
        "evidence": _evidence_table(evidence),
        "search_and_fit_seconds": round(seconds, 1),
    }
    log.warning("online retail: chosen k %d; churn by segment %s; value by segment %s", k,
                [s["churn_rate"] for s in out["segments"]], [s["value_before_as_of"] for s in out["segments"]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,500 synthetic customers, no Online Retail")
    ap.add_argument("--cache", default="/tmp/gpuseg_bench_auto_k", help="prepared work directories")
    ap.add_argument("--skip-retail", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    payload = {
        "benchmark": "auto_k",
        "date": utc_now(),
        "quick": args.quick,
        "machine": machine_info("cpu"),
        "device": "cpu",
        "versions": library_versions(),
        "synthetic": synthetic(cache, 1500 if args.quick else 5000),
    }
    if not (args.quick or args.skip_retail) and RETAIL.exists():
        payload["online_retail"] = online_retail(cache)
    payload["seconds"] = round(time.perf_counter() - t0, 1)
    path = write_result(result_path("auto_k", quick=args.quick, out=args.out), payload)
    print(json.dumps({"synthetic": {k: payload["synthetic"][k] for k in ("chosen_k", "ari_at_chosen_k",
                                                                        "ari_at_true_k", "vote_rule_k",
                                                                        "ari_at_vote_k")},
                      "online_retail": {k: payload["online_retail"][k] for k in ("chosen_k", "segments")}
                      if "online_retail" in payload else None}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
