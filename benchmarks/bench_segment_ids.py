"""Benchmark: do segment ids survive a refit? Hungarian centre matching against the raw refit.

Usage::

    python benchmarks/bench_segment_ids.py --quick    # 1500 customers, refit seeds 0 and 1
    python benchmarks/bench_segment_ids.py            # 4000 customers, refit seeds 0, 1, 2

On two-period synthetic data (``gpuseg generate data.generator.periods=2``) the real jobs run in
two work directories through composed configs: validate, features, fuse (tabular block) and
segment (``segment.n_clusters=8``) at period 1's end (``period_as_of[0]`` of generation.json),
then the same at period 2's end, once as a raw refit and once with ``segment.previous`` set to
the first run. Scored against ``ground_truth.parquet`` (the pipeline never reads it): the share
of *stable* customers (same planted persona in both periods) whose segment id is unchanged,
raw and matched (three distance limits), against the best any one-to-one renaming could do,
for several refit seeds, with the births, deaths and matched distances. Writes
``benchmarks/results/segment_ids_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import library_versions, machine_info, result_path, utc_now, write_result

log = logging.getLogger("bench_segment_ids")

K = 8
FUSE = ["fuse.blocks.text.enabled=false", "fuse.blocks.journey.enabled=false"]
#: distance limits compared: the default (auto, 0.5 x spread), a looser one and none
LIMITS = {"auto_0.5": ["segment.match.relative=0.5"], "auto_1.0": [], "none": ["segment.match.max_distance=null"]}


def _composer(work: Path, data: Path, n: int):
    from hydra import compose, initialize_config_module

    def cfg(job: str, *overrides: str):
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[
                f"paths.work_dir={work}", f"paths.data_dir={data}", "progress=false", "device=cpu",
                f"data.generator.n_customers={n}", "data.generator.periods=2", *overrides])
    return cfg


def _prepare(cfg, as_of: str) -> None:
    from gpuseg.jobs import features, fuse, validate

    for job, extra in ((validate, []), (features, []), (fuse, FUSE)):
        job.run(cfg(job.__name__.rsplit(".", 1)[-1], f"data.as_of={as_of}", *extra))


def _segment(cfg, as_of: str, *overrides: str) -> tuple[np.ndarray, dict]:
    from gpuseg.jobs import segment

    res = segment.run(cfg("segment", f"data.as_of={as_of}", f"segment.n_clusters={K}", *overrides))
    labels = pq.read_table(res["segments_path"])["segment"].to_numpy()
    seg = json.loads((Path(res["output_dir"]) / "segmentation.json").read_text())
    return labels, {**res, "matching": seg.get("matching")}


def _best_possible(old: np.ndarray, new: np.ndarray) -> float:
    """The ceiling: the share kept by the best one-to-one renaming of ``new`` (Hungarian on overlaps)."""
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((int(new.max()) + 1, int(old.max()) + 1))
    np.add.at(table, (new, old), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(old))


def _matched(cfg, as_of: str, seed: int, limit: str, extra: list[str], previous: Path, old: np.ndarray,
             raw: np.ndarray, stable: np.ndarray) -> dict:
    """One refit with ``segment.previous``, scored against the first run and the raw refit."""
    kept, res = _segment(cfg, as_of, f"seed={seed}", f"segment.previous={previous}", *extra)
    m = res["matching"]
    run = {
        "refit_seed": seed, "limit": limit,
        "stable_same_id_raw": float((raw == old)[stable].mean()),
        "stable_same_id_matched": float((kept == old)[stable].mean()),
        "movers_same_id_matched": float((kept == old)[~stable].mean()),
        "all_same_id_raw": float((raw == old).mean()),
        "all_same_id_matched": float((kept == old).mean()),
        "stable_same_id_best_possible": _best_possible(old[stable], raw[stable]),
        "n_matched": len(m["matched"]), "births": m["births"], "deaths": m["deaths"],
        "renumbered": m["renumbered"], "max_distance": m["max_distance"], "spread": m["spread"],
        "matched_distances": [round(p["distance"], 4) for p in m["matched"]],
    }
    log.warning("seed %d, limit %s: stable same id raw %.3f, matched %.3f, best possible %.3f (%d matched, "
                "births %s, deaths %s)", seed, limit, run["stable_same_id_raw"], run["stable_same_id_matched"],
                run["stable_same_id_best_possible"], run["n_matched"], m["births"], m["deaths"])
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = 1500 if args.quick else 4000
    seeds = [0, 1] if args.quick else [0, 1, 2]
    tmp = Path(tempfile.mkdtemp(prefix="bench_segment_ids_"))
    data = tmp / "data"
    from gpuseg.jobs import generate

    t0 = time.perf_counter()
    generate.run(_composer(tmp / "gen", data, n)("generate"))
    meta = json.loads((data / "generation.json").read_text())
    as_of = [d[:10] for d in meta["period_as_of"]]
    truth = pq.read_table(data / "ground_truth.parquet").to_pandas()
    stable = (truth["persona_1"] == truth["persona_2"]).to_numpy()

    first, second = _composer(tmp / "period1", data, n), _composer(tmp / "period2", data, n)
    _prepare(first, as_of[0])
    _prepare(second, as_of[1])
    old, _ = _segment(first, as_of[0])
    ids = pq.read_table(tmp / "period1" / "segment" / "segments.parquet")["customer_id"].to_pylist()
    assert ids == truth["customer_id"].tolist()
    runs = []
    for seed in seeds:
        raw, _ = _segment(second, as_of[1], f"seed={seed}")
        for limit, extra in LIMITS.items():
            runs.append(_matched(second, as_of[1], seed, limit, extra, tmp / "period1", old, raw, stable))
    payload = {
        "benchmark": "segment_ids",
        "date": utc_now(),
        "quick": args.quick,
        "machine": machine_info("cpu"),
        "device": "cpu",
        "versions": library_versions("scipy"),
        "setup": {"n_customers": n, "periods_as_of": as_of, "n_clusters": K, "fuse": FUSE,
                  "generator": meta["parameters"], "movers": meta["boundaries"][0],
                  "stable_customers": int(stable.sum()),
                  "limits": LIMITS},
        "runs": runs,
        "mean_stable_same_id_best_possible": float(np.mean([r["stable_same_id_best_possible"] for r in runs])),
        "mean_stable_same_id_raw": float(np.mean([r["stable_same_id_raw"] for r in runs if r["limit"] == "none"])),
        "mean_stable_same_id_matched": {
            limit: float(np.mean([r["stable_same_id_matched"] for r in runs if r["limit"] == limit]))
            for limit in LIMITS},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = write_result(result_path("segment_ids", quick=args.quick, out=args.out), payload)
    print(json.dumps({k: payload[k] for k in ("mean_stable_same_id_raw", "mean_stable_same_id_matched",
                                              "mean_stable_same_id_best_possible")},
                     indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
