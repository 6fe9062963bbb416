"""Benchmark: segment quality (ARI against the planted personas) per block and fused.

Usage::

    python benchmarks/bench_fusion_quality.py --quick       # 1200 customers, k = 9 only (< 1 minute)
    python benchmarks/bench_fusion_quality.py               # 3000 customers, k = 9 and auto
    python benchmarks/bench_fusion_quality.py --work DIR    # reuse (or build) a project in DIR

Runs the real jobs through composed configs: generate, validate, features, text, journeys once,
then for every variant ``gpuseg fuse`` (with only the variant's blocks enabled) and ``gpuseg
segment`` with ``segment.n_clusters=9`` (and ``auto``), and scores the segments against
``ground_truth.parquet`` (which the pipeline never reads). Variants:

* ``tabular_raw``: the features matrix as ``gpuseg segment`` reads it without ``fuse``;
* ``tabular``, ``text``, ``journey``: one block alone through ``fuse`` (same standardisation);
* ``fused``: the default ``fuse`` config (all blocks, equal variance);
* a few alternatives (``--variants``): PCA, L2, weights, per-source text columns.

The synthetic personas are built so that each block separates something only it can see
(``eco_planner``/``gadget_planner`` differ only by text, ``gadget_planner``/``gadget_impulse``
only by event order), so the fused ARI should beat every single block. Writes
``benchmarks/results/fusion_quality_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuseg.cluster.metrics import adjusted_rand_index  # noqa: E402
from gpuseg.runtime.io import write_json  # noqa: E402
from gpuseg.runtime.manifest import library_versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench_fusion_quality")

_OFF = {b: f"fuse.blocks.{b}.enabled=false" for b in ("tabular", "text", "journey")}
#: variant -> fuse overrides (None: segment the features matrix directly)
VARIANTS: dict[str, list[str] | None] = {
    "tabular_raw": None,
    "tabular": [_OFF["text"], _OFF["journey"]],
    "text": [_OFF["tabular"], _OFF["journey"]],
    "journey": [_OFF["tabular"], _OFF["text"]],
    "fused": [],
}
EXTRA: dict[str, list[str]] = {
    "fused_no_flags": ["fuse.blocks.text.columns=[all_mean]", "fuse.blocks.journey.columns=[journey]"],
    "fused_pca32": ["fuse.pca_components=32"],
    "fused_pca32_l2": ["fuse.pca_components=32", "fuse.l2_normalize=true"],
    "fused_weights_none": ["fuse.weights=none"],
    "fused_text_recency": ["fuse.blocks.text.columns=[all_recency_mean,has_text]"],
    "fused_text_by_source": ["fuse.blocks.text.columns=[review_mean,ticket_mean,has_text]"],
    "fused_tab2_text1_journey2": ["fuse.blocks.tabular.weight=2", "fuse.blocks.journey.weight=2"],
}


def _composer(work: Path, n: int):
    from hydra import compose, initialize_config_module

    def cfg(job: str, *overrides: str):
        device = ["device=cpu"] if job in ("text", "journeys", "fuse", "segment") else []
        with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
            return compose(config_name=job, overrides=[f"paths.work_dir={work}", "progress=false",
                                                       f"data.generator.n_customers={n}", *device, *overrides])
    return cfg


def build(work: Path, n: int) -> dict[str, float]:
    """Run generate .. journeys unless the project already has their outputs."""
    from gpuseg.jobs import features, generate, journeys, text, validate

    cfg = _composer(work, n)
    seconds = {}
    for name, module, done, extra in [
        ("generate", generate, work / "data" / "ground_truth.parquet", ()),
        ("validate", validate, work / "validated" / "customers.parquet", ()),
        ("features", features, work / "features" / "matrix.parquet", ()),
        ("journeys", journeys, work / "journeys" / "embeddings.parquet", ()),
        ("text", text, work / "text" / "embeddings.parquet", ("text.num_threads=1",)),
    ]:
        if done.exists():
            continue
        t0 = time.perf_counter()
        module.run(cfg(name, *extra))
        seconds[name] = round(time.perf_counter() - t0, 2)
        log.info("%s done in %.1fs", name, seconds[name])
    return seconds


def score(work: Path, n: int, overrides: list[str] | None, ks: list[str]) -> dict[str, object]:
    """Fuse with ``overrides`` (or segment the features matrix) and score each k against the personas."""
    from gpuseg.jobs import fuse, segment

    cfg = _composer(work, n)
    truth = pq.read_table(work / "data" / "ground_truth.parquet")
    out: dict[str, object] = {}
    if overrides is None:
        source = str(work / "features" / "matrix.parquet")
    else:
        result = fuse.run(cfg("fuse", *overrides))
        source = result["fused_path"]
        out["n_features"] = result["n_features"]
        out["variance_shares"] = {k: round(v, 4) for k, v in result["variance_shares"].items()}
    for k in ks:
        t0 = time.perf_counter()
        res = segment.run(cfg("segment", f"segment.input={source}", f"segment.n_clusters={k}"))
        seg = pq.read_table(res["segments_path"])
        if seg["customer_id"].to_pylist() != truth["customer_id"].to_pylist():
            raise RuntimeError("segments and ground truth are not in the same customer order")
        ari = adjusted_rand_index(torch.as_tensor(seg["segment"].to_numpy()),
                                  torch.as_tensor(truth["persona_id"].to_numpy().astype(np.int64)))
        out[f"k={k}"] = {"ari": round(ari, 4), "n_clusters": res["n_clusters"],
                         "seconds": round(time.perf_counter() - t0, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1200 customers, k = 9, no extra variants")
    parser.add_argument("--n", type=int, default=None, help="synthetic customers (default 3000, quick 1200)")
    parser.add_argument("--work", type=Path, default=None, help="project folder to build or reuse")
    parser.add_argument("--no-variants", action="store_true", help="skip the alternative fuse settings")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("gpuseg", "hydra"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    n = args.n or (1200 if args.quick else 3000)
    ks = ["9"] if args.quick else ["9", "auto"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp) / "work"
        t0 = time.perf_counter()
        build_seconds = build(work, n)
        variants = dict(VARIANTS)
        if not (args.quick or args.no_variants):
            variants.update(EXTRA)
        results = {}
        for name, overrides in variants.items():
            results[name] = score(work, n, overrides, ks)
            log.info("%s: %s", name, {k: v["ari"] for k, v in results[name].items() if k.startswith("k=")})
    single = ("tabular_raw", "tabular", "text", "journey")
    verdict = {f"k={k}": {"fused": results["fused"][f"k={k}"]["ari"],
                          "best_single_block": max(results[s][f"k={k}"]["ari"] for s in single),
                          "fused_beats_every_block": all(results["fused"][f"k={k}"]["ari"] >
                                                         results[s][f"k={k}"]["ari"] for s in single)}
               for k in ks}
    report = {
        "benchmark": "fusion_quality",
        "date": dt.date.today().isoformat(),
        "quick": args.quick,
        "n_customers": n,
        "machine": {"hostname": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": args.threads, "load_average": list(os.getloadavg())},
        "device": "cpu",
        "versions": library_versions(),
        "build_seconds": build_seconds,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "metric": "adjusted Rand index of gpuseg segment against the 9 planted personas",
        "verdict": verdict,
        "variants": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"fusion_quality_{report['date']}{'_quick' if args.quick else ''}.json"
    write_json(path, report)
    log.info("verdict %s; written to %s", verdict, path)


if __name__ == "__main__":
    main()
