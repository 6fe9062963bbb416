"""Benchmark: does ``gpuseg assign`` flag the customers who really moved, and only them?

Usage::

    python benchmarks/bench_assign_movers.py --quick   # 1500 customers, fewer as_of dates
    python benchmarks/bench_assign_movers.py           # 4000 customers (about 8 minutes on 2 cores)
    python benchmarks/bench_assign_movers.py --no-retail --no-full   # skip Online Retail / full pipeline

Three measurements, each through the real jobs (``run(cfg)`` of composed configs, as
``gpuseg <job> ...`` would run them), on the tabular block (``fuse.blocks.text`` and
``fuse.blocks.journey`` disabled: each assign run re-embeds every text, about a minute for 4000
customers on two CPU cores, too slow for the two dozen runs). Part 1 is repeated on the full
pipeline (text and journeys jobs, every block fused) with three of its variants (not in --quick):

1. **Planted movers.** Two-period synthetic data (``data.generator.periods=2``): segment at
   period 1's end (``segment.n_clusters=8``), assign at period 2's end. ``changed`` is scored
   against the planted persona changes (``persona_1 != persona_2`` of ``ground_truth.parquet``,
   which the pipeline never reads): precision, recall, per planted transition, for several
   ``assign.margin`` values and without hysteresis (``margin=0 confirm_runs=null``). One assign
   run casts one vote, so ``confirm_runs`` (default 2) moves nobody there: only the margin acts.
   A chain of two runs (60 days before period 2's end, then at it) shows the votes at work.
2. **Noise only.** Two-period data with ``mover_share=0`` (the only planted moves are the
   new customers', who must move at the boundary: a customer is new only in the period it
   signs up). Segment 180 days into period 2, then assign at successive as_of dates within
   period 2, where no planted persona changes: ``drift.json``'s flip-flop rate and changed share
   per run, with the default hysteresis, with the margin alone and with none.
3. **Online Retail II** (real data, ``data=online_retail``): segment at 2011-06-01 (k=6),
   assign at 2011-09-01 (changed share, top transitions, PSI, refit_recommended), then refit at
   2011-09-01 in another work dir, raw and with ``segment.previous``: births, deaths, and the
   share of the customers assign kept in their segment whose id is the same after the refit.

Writes ``benchmarks/results/assign_movers_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import ROOT, library_versions, machine_info, result_path, utc_now, write_result

log = logging.getLogger("bench_assign_movers")

K = 8
K_RETAIL = 6
FUSE = ["fuse.blocks.text.enabled=false", "fuse.blocks.journey.enabled=false"]
RETAIL_DIR = ROOT.parent / "shared" / "data" / "online_retail"
RETAIL_AS_OF = ("2011-06-01", "2011-09-01")
#: hysteresis settings compared: (name, overrides)
NO_HYSTERESIS = ["assign.margin=0", "assign.confirm_runs=null"]
MOVER_VARIANTS = [
    ("none (margin=0, confirm_runs=null)", NO_HYSTERESIS),
    ("default (margin=0.1, confirm_runs=2)", []),
    ("margin=0.2", ["assign.margin=0.2"]),
    ("margin=0.3", ["assign.margin=0.3"]),
]
NOISE_VARIANTS = [
    ("none (margin=0, confirm_runs=null)", NO_HYSTERESIS),
    ("margin=0.1 only (confirm_runs=null)", ["assign.confirm_runs=null"]),
    ("default (margin=0.1, confirm_runs=2)", []),
    ("margin=0.3, confirm_runs=2", ["assign.margin=0.3"]),
]


def _composer(work: Path, *base: str):
    from hydra import compose, initialize_config_module

    def cfg(job: str, *overrides: str):
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false", "device=cpu",
                                                       *base, *overrides])
    return cfg


def _train(cfg, as_of: str, k: int, *segment_overrides: str, full: bool = False) -> dict:
    """validate, features, fuse and segment at ``as_of``; the segment job's result.

    ``full``: the text and journeys jobs too, and every block fused; else the tabular block only.
    """
    from gpuseg.jobs import features, fuse, journeys, text, validate

    jobs = [(validate, []), (features, [])] + ([(text, []), (journeys, []), (fuse, [])] if full else [(fuse, FUSE)])
    for job, extra in jobs:
        job.run(cfg(job.__name__.rsplit(".", 1)[-1], f"data.as_of={as_of}", *extra))
    return _segment(cfg, as_of, k, *segment_overrides)


def _segment(cfg, as_of: str, k: int, *overrides: str) -> dict:
    from gpuseg.jobs import segment

    res = segment.run(cfg("segment", f"data.as_of={as_of}", f"segment.n_clusters={k}", *overrides))
    seg = json.loads((Path(res["output_dir"]) / "segmentation.json").read_text())
    return {**res, "matching": seg.get("matching")}


def _assign(cfg, as_of: str, *overrides: str) -> tuple[pd.DataFrame, dict]:
    """One assign run: its segments table and drift.json."""
    from gpuseg.jobs import assign

    res = assign.run(cfg("assign", f"data.as_of={as_of}", *overrides))
    seg = pq.read_table(res["segments_path"]).to_pandas()
    drift = json.loads(Path(res["drift_path"]).read_text())
    return seg, {**drift, "seconds": res["seconds"]}


def _copy_work(src: Path, dst: Path) -> Path:
    """A fresh copy of a trained work dir, so that each hysteresis variant has its own assign history."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("assign", "logs"))
    return dst


def _scores(changed: np.ndarray, moved: np.ndarray) -> dict:
    tp = int((changed & moved).sum())
    n_changed, n_moved = int(changed.sum()), int(moved.sum())
    return {"n_changed": n_changed, "n_moved": n_moved, "true_positives": tp,
            "precision": round(tp / n_changed, 4) if n_changed else None,
            "recall": round(tp / n_moved, 4) if n_moved else None,
            "stable_changed_share": round(float(changed[~moved].mean()), 4) if (~moved).any() else None}


def _truth(data: Path) -> tuple[pd.DataFrame, dict]:
    truth = pq.read_table(data / "ground_truth.parquet").to_pandas()
    meta = json.loads((data / "generation.json").read_text())
    return truth, meta


def _generate(work: Path, data: Path, n: int, *overrides: str) -> None:
    from gpuseg.jobs import generate

    generate.run(_composer(work, f"paths.data_dir={data}", f"data.generator.n_customers={n}",
                           "data.generator.periods=2", *overrides)("generate"))


# --------------------------------------------------------------------------- 1. planted movers


def movers(tmp: Path, n: int, full: bool = False) -> dict:
    """Part 1 on the tabular block (with a two-run chain) or, ``full``, on every block (fewer variants)."""
    data = tmp / "data_movers"
    if not data.exists():
        _generate(tmp / "gen_movers", data, n)
    truth, meta = _truth(data)
    as_of = [d[:10] for d in meta["period_as_of"]]
    base = (f"paths.data_dir={data}", f"data.generator.n_customers={n}", "data.generator.periods=2")
    trained = tmp / ("movers_full" if full else "movers_p1")
    t0 = time.perf_counter()
    _train(_composer(trained, *base), as_of[0], K, full=full)
    train_s = time.perf_counter() - t0
    pairs = (truth["persona_1"] + " -> " + truth["persona_2"]).where(truth["persona_1"] != truth["persona_2"])
    train_seg = pq.read_table(trained / "segment" / "segments.parquet").to_pandas()[["customer_id", "segment"]]
    runs = []
    # each assign run re-embeds every text (about a minute here): the full pipeline gets three
    variants = [v for v in MOVER_VARIANTS if v[0] != "margin=0.2"] if full else MOVER_VARIANTS
    for name, overrides in variants:
        seg, drift = _assign(_composer(trained, *base), as_of[1], *overrides)
        runs.append(_score_movers(name, seg, drift, truth, pairs, train_seg, runs=1))
    # two runs in a row: the first (60 days before period 2's end) casts the votes the second counts
    early = str(np.datetime64(as_of[1]) - np.timedelta64(60, "D"))
    for name, overrides in [] if full else MOVER_VARIANTS[:2]:
        chain = _copy_work(trained, tmp / "movers_chain")
        _assign(_composer(chain, *base), early, *overrides)
        seg, drift = _assign(_composer(chain, *base), as_of[1], *overrides)
        runs.append(_score_movers(f"{name}, two runs ({early}, then {as_of[1]})", seg, drift, truth, pairs,
                                  train_seg, runs=2))
    # where the planted personas sit in the training segments: a move between two personas whose
    # customers share a majority segment cannot show as a change of segment
    at_train = truth[["customer_id", "persona_1"]].merge(train_seg, on="customer_id", validate="1:1")
    crosstab = pd.crosstab(at_train["persona_1"], at_train["segment"])
    majority = {p: {"segment": int(row.idxmax()), "share": round(float(row.max() / row.sum()), 4)}
                for p, row in crosstab.iterrows()}
    return {"blocks": "tabular, text, journey" if full else "tabular", "n_customers": n, "periods_as_of": as_of, "trained_at": as_of[0], "assigned_at": as_of[1],
            "n_clusters": K, "generator": meta["parameters"], "planted": meta["boundaries"][0],
            "moved_share": round(float((pairs.notna()).mean()), 4), "train_seconds": round(train_s, 1),
            "persona_majority_training_segment": majority, "runs": runs}


def _score_movers(name: str, seg: pd.DataFrame, drift: dict, truth: pd.DataFrame, pairs: pd.Series,
                  train_seg: pd.DataFrame, runs: int) -> dict:
    joined = (truth[["customer_id"]].assign(pair=pairs).merge(seg, on="customer_id", how="left", validate="1:1")
              .merge(train_seg.rename(columns={"segment": "trained"}), on="customer_id", validate="1:1"))
    if joined["segment"].isna().any() or len(seg) != len(truth):
        raise AssertionError("assign left customers out of segments.parquet")
    moved = joined["pair"].notna().to_numpy()
    # against the training segments (the same as `changed` after a single run; after two runs
    # `changed` only counts the second run's moves)
    changed = (joined["segment"] != joined["trained"]).to_numpy(bool)
    if runs == 1 and not np.array_equal(changed, joined["changed"].to_numpy(bool)):
        raise AssertionError("changed differs from segment != training segment after one assign run")
    per = {p: {"n": int((joined["pair"] == p).sum()),
               "recall": round(float(changed[(joined["pair"] == p).to_numpy()].mean()), 4)}
           for p in sorted(joined["pair"].dropna().unique())}
    out = {"variant": name, "assign_runs": runs, **_scores(changed, moved), "by_transition": per,
           "last_run_changed": int(joined["changed"].sum()),
           "n_held": drift["n_held"], "changed_share": drift["changed_share"],
           "psi_top": dict(sorted(drift["psi"].items(), key=lambda kv: -kv[1])[:5]),
           "refit_recommended": drift["refit_recommended"],
           "hysteresis": drift["hysteresis"], "assign_seconds": drift["seconds"]}
    log.warning("movers %s: precision %s recall %s (changed %d, moved %d, held %d)", name, out["precision"],
                out["recall"], out["n_changed"], out["n_moved"], out["n_held"])
    return out


# ------------------------------------------------------------------------------ 2. noise only


def noise(tmp: Path, n: int, steps: list[int]) -> dict:
    data = tmp / "data_noise"
    _generate(tmp / "gen_noise", data, n, "data.generator.mover_share=0")
    truth, meta = _truth(data)
    end = np.datetime64(meta["period_as_of"][1][:10])
    train_at = str(end - np.timedelta64(steps[0], "D"))
    dates = [str(end - np.timedelta64(d, "D")) for d in steps[1:]]
    base = (f"paths.data_dir={data}", f"data.generator.n_customers={n}", "data.generator.periods=2",
            "data.generator.mover_share=0")
    trained = tmp / "noise_train"
    _train(_composer(trained, *base), train_at, K)
    # no planted change inside period 2; the new customers moved at the boundary, before training
    boundary_movers = (truth["persona_1"] != truth["persona_2"]).to_numpy()
    train_seg = truth[["customer_id"]].merge(pq.read_table(trained / "segment" / "segments.parquet").to_pandas(),
                                             on="customer_id", how="left", validate="1:1")
    variants = []
    for name, overrides in NOISE_VARIANTS:
        work = _copy_work(trained, tmp / f"noise_{len(variants)}")
        history: list[np.ndarray] = []
        per_run = []
        for as_of in dates:
            seg, drift = _assign(_composer(work, *base), as_of, *overrides)
            seg = truth[["customer_id"]].merge(seg, on="customer_id", how="left", validate="1:1")
            labels = seg["segment"].to_numpy(np.int64)
            history.append(labels)
            own = None
            if len(history) >= 3:
                a, b, c = history[-3:]
                own = (a != b) & (c == a)
            per_run.append({
                "as_of": as_of, "changed_share": drift["changed_share"], "n_changed": drift["n_changed"],
                "n_held": drift["n_held"], "n_pending": drift["n_pending"],
                "flip_flop_rate": drift["flip_flop_rate"], "flip_flops": drift["flip_flops"],
                # our own count from the stored segments of the last three runs (the first of them
                # may be the training run, which drift.json counts and this does not)
                "flip_flops_recounted": None if own is None else int(own.sum()),
                "changed_share_persona_constant": round(float(seg["changed"].to_numpy(bool)[~boundary_movers]
                                                              .mean()), 4),
                "refit_recommended": drift["refit_recommended"],
            })
        rates = [r["flip_flop_rate"] for r in per_run if r["flip_flop_rate"] is not None]
        labels = np.stack([train_seg["segment"].to_numpy(np.int64), *history])
        total_changes = int(sum(r["n_changed"] for r in per_run))
        total_flips = int(sum(r["flip_flops"] for r in per_run))
        variants.append({"variant": name, "runs": per_run,
                         "ever_changed_share": round(float((labels[1:] != labels[:-1]).any(axis=0).mean()), 4),
                         "net_changed_share": round(float((labels[-1] != labels[0]).mean()), 4),
                         "flip_flops_per_change": round(total_flips / total_changes, 4) if total_changes else None,
                         "mean_changed_share": round(float(np.mean([r["changed_share"] for r in per_run])), 4),
                         "mean_flip_flop_rate": round(float(np.mean(rates)), 4) if rates else None,
                         "total_changes": total_changes, "total_flip_flops": total_flips})
        log.warning("noise %s: mean changed %.4f, mean flip-flop rate %s", name,
                    variants[-1]["mean_changed_share"], variants[-1]["mean_flip_flop_rate"])
    return {"n_customers": n, "generator": meta["parameters"], "planted": meta["boundaries"][0],
            "trained_at": train_at, "assigned_at": dates, "n_clusters": K, "variants": variants,
            "note": "mover_share=0: only new customers move, at the boundary, before the training as_of; "
                    "within period 2 no persona changes"}


# ---------------------------------------------------------------------------- 3. Online Retail


def retail(tmp: Path) -> dict:
    base = ("data=online_retail", f"paths.data_dir={RETAIL_DIR}")
    early, late = RETAIL_AS_OF
    first = tmp / "or_early"
    t0 = time.perf_counter()
    old = _train(_composer(first, *base), early, K_RETAIL)
    train_s = time.perf_counter() - t0
    seg, drift = _assign(_composer(first, *base), late)
    snapshot = pq.read_table(first / "assign" / late / "input" / "validated" / "customers.parquet")
    every = set(snapshot["customer_id"].to_pylist()) == set(seg["customer_id"]) and len(seg) == snapshot.num_rows
    trans = pq.read_table(first / "assign" / late / "transitions.parquet").to_pandas()
    moves = trans[trans["from"].notna() & (trans["from"] != trans["to"])].sort_values("count", ascending=False)
    top = [{"from": int(r["from"]), "to": int(r["to"]), "count": int(r["count"])} for _, r in moves.head(5).iterrows()]
    old_seg = pq.read_table(old["segments_path"]).to_pandas()[["customer_id", "segment"]]

    second = tmp / "or_late"
    t1 = time.perf_counter()
    raw = _train(_composer(second, *base), late, K_RETAIL)
    raw_seg = pq.read_table(raw["segments_path"]).to_pandas()[["customer_id", "segment"]]
    matched = _segment(_composer(second, *base), late, K_RETAIL, f"segment.previous={first}")
    matched_seg = pq.read_table(matched["segments_path"]).to_pandas()[["customer_id", "segment"]]
    refit_s = time.perf_counter() - t1

    table = (seg[["customer_id", "changed", "previous_segment"]]
             .merge(old_seg.rename(columns={"segment": "early"}), on="customer_id", how="left", validate="1:1")
             .merge(raw_seg.rename(columns={"segment": "raw"}), on="customer_id", how="left", validate="1:1")
             .merge(matched_seg.rename(columns={"segment": "matched"}), on="customer_id", how="left",
                    validate="1:1"))
    kept = (~table["changed"].astype(bool)) & table["previous_segment"].notna() & table["early"].notna()
    k = table[kept]
    m = matched["matching"]
    # a birth may take a dead segment's id (ids stay 0..k-1): the same id then is not the same segment
    carried = {p["segment"] for p in m["matched"] if p["segment"] == p["previous_segment"]}
    psi = drift["psi"]
    out = {
        "as_of": {"segment": early, "assign": late, "refit": late}, "n_clusters": K_RETAIL,
        "assign": {
            "n_customers": drift["n_customers"], "every_snapshot_customer_present": bool(every),
            "n_new_customers": drift["n_new_customers"], "n_changed": drift["n_changed"],
            "changed_share": drift["changed_share"], "n_held": drift["n_held"], "n_pending": drift["n_pending"],
            "top_transitions": top,
            "psi_over_threshold": {f: v for f, v in sorted(psi.items(), key=lambda kv: -kv[1])
                                   if v > (drift["thresholds"].get("psi") or np.inf)},
            "psi_max": drift["psi_max"], "psi_median": round(float(np.median(list(psi.values()))), 4),
            "segment_share": drift["segment_share"], "mean_confidence": drift["mean_confidence"],
            "outlier_share": drift["outlier_share"],
            "refit_recommended": drift["refit_recommended"], "reasons": drift["reasons"],
            "seconds": drift["seconds"],
        },
        "refit": {
            "matching": {"n_matched": len(m["matched"]), "births": m["births"], "deaths": m["deaths"],
                         "renumbered": m["renumbered"], "max_distance": m["max_distance"], "spread": m["spread"],
                         "matched_distances": [round(p["distance"], 4) for p in m["matched"]]},
            "n_kept_by_assign": int(kept.sum()),
            "kept_same_id_raw": round(float((k["raw"] == k["early"]).mean()), 4),
            "kept_same_id_matched": round(float((k["matched"] == k["early"]).mean()), 4),
            "kept_same_matched_segment": round(float(((k["matched"] == k["early"])
                                                      & k["matched"].isin(carried)).mean()), 4),
            "all_same_id_raw": round(float((table["raw"] == table["early"]).mean()), 4),
            "all_same_id_matched": round(float((table["matched"] == table["early"]).mean()), 4),
            "kept_same_id_best_possible": _best_possible(k["early"].to_numpy(int), k["raw"].to_numpy(int)),
        },
        "train_seconds": round(train_s, 1), "refit_seconds": round(refit_s, 1),
    }
    log.warning("retail: changed %.3f, refit kept-by-assign same id raw %.3f matched %.3f (births %s deaths %s)",
                drift["changed_share"], out["refit"]["kept_same_id_raw"], out["refit"]["kept_same_id_matched"],
                m["births"], m["deaths"])
    return out


def _best_possible(old: np.ndarray, new: np.ndarray) -> float:
    """The share kept by the best one-to-one renaming of ``new`` (Hungarian on the overlaps)."""
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((int(new.max()) + 1, int(old.max()) + 1))
    np.add.at(table, (new, old), 1)
    rows, cols = linear_sum_assignment(-table)
    return round(float(table[rows, cols].sum() / len(old)), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-retail", action="store_true", help="skip the Online Retail II part")
    ap.add_argument("--no-full", action="store_true", help="skip part 1 on the full pipeline (text + journeys)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = 1500 if args.quick else 4000
    # days before period 2's end: the training cut-off, then each assign run's
    steps = [180, 135, 90, 45, 0] if args.quick else [180, 150, 120, 90, 60, 30, 0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_assign_movers_"))
    t0 = time.perf_counter()
    payload = {"benchmark": "assign_movers", "date": utc_now(), "quick": args.quick,
               "device": "cpu",
               "blocks": "tabular block only (text and journey disabled in fuse), except movers_full_pipeline"}
    timings = {}
    try:
        t = time.perf_counter()
        payload["movers"] = movers(tmp, n)
        timings["movers"] = round(time.perf_counter() - t, 1)
        if not args.quick and not args.no_full:
            t = time.perf_counter()
            payload["movers_full_pipeline"] = movers(tmp, n, full=True)
            timings["movers_full_pipeline"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        payload["noise"] = noise(tmp, n, steps)
        timings["noise"] = round(time.perf_counter() - t, 1)
        if not args.no_retail:
            t = time.perf_counter()
            payload["online_retail"] = retail(tmp)
            timings["online_retail"] = round(time.perf_counter() - t, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    payload.update({"machine": machine_info("cpu"), "versions": library_versions("scipy", "pandas"),
                    "seconds": {**timings, "total": round(time.perf_counter() - t0, 1)}})
    path = write_result(result_path("assign_movers", quick=args.quick, out=args.out), payload)
    summary = {part: [{k: r[k] for k in ("variant", "precision", "recall", "n_changed")} for r in payload[part]["runs"]]
               for part in ("movers", "movers_full_pipeline") if part in payload}
    summary["noise"] = [{k: v[k] for k in ("variant", "mean_changed_share", "mean_flip_flop_rate")}
                        for v in payload["noise"]["variants"]]
    summary["seconds"] = payload["seconds"]
    print(json.dumps(summary, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
