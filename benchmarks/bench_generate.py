"""Benchmark of the synthetic data generator (``gpuseg generate``'s engine).

Times ``generate_synthetic`` end to end (rows/s, peak RSS) and, as the baseline measured in the
same run, the I/O floor: streaming the very same tables back through ``ParquetStreamWriter``.
The ratio generation/I-O says how much of the time is spent generating rather than writing.

    python benchmarks/bench_generate.py                      # 1M customers
    python benchmarks/bench_generate.py --quick              # 50k customers, < 1 minute
    python benchmarks/bench_generate.py --n-customers 200000 --chunk-size 20000

Writes ``benchmarks/results/generate_<date>[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

# _common first: it puts the repository root on sys.path for the gpuseg imports
from _common import RESULTS, library_versions, machine_info, result_path, utc_now, write_result

from gpuseg.data.synthetic import generate_synthetic
from gpuseg.runtime.io import ParquetStreamWriter


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _rewrite(src: Path, dst: Path) -> int:
    """Stream a Parquet file into a new one, batch by batch; the I/O floor of generation."""
    pf = pq.ParquetFile(src)
    with ParquetStreamWriter(dst, pf.schema_arrow) as writer:
        for batch in pf.iter_batches(batch_size=1_000_000):
            writer.write(batch)
    return writer.rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-customers", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50k customers")
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="keep the tables here")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = 50_000 if args.quick else args.n_customers

    work = Path(tempfile.mkdtemp(prefix="gpuseg_bench_gen_"))
    out = args.out_dir or work / "data"
    try:
        rss_before = _peak_rss_mib()
        t0 = time.perf_counter()
        result = generate_synthetic(out, n_customers=n, seed=args.seed, chunk_size=args.chunk_size)
        gen_s = time.perf_counter() - t0
        rss_gen = _peak_rss_mib()

        t0 = time.perf_counter()
        for name in ("customers", "events", "texts", "ground_truth"):
            _rewrite(result["paths"][name], work / f"copy_{name}.parquet")
        io_s = time.perf_counter() - t0
        sizes = {k: Path(p).stat().st_size for k, p in result["paths"].items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = result["rows"]
    machine = machine_info("cpu")
    machine["load_avg_1m"] = machine["load_average"][0] if machine["load_average"] else None
    total_rows = sum(rows.values())
    report = {
        "benchmark": "generate",
        "date": utc_now(),
        "machine": machine,
        "device": "cpu",
        "versions": library_versions(),
        "params": {"n_customers": n, "chunk_size": args.chunk_size, "seed": args.seed},
        "rows": rows,
        "generate_s": round(gen_s, 3),
        "customers_per_s": round(n / gen_s, 1),
        "events_per_s": round(rows["events"] / gen_s, 1),
        "rows_per_s": round(total_rows / gen_s, 1),
        "peak_rss_mib_before": round(rss_before, 1),
        "peak_rss_mib_generate": round(rss_gen, 1),
        "baseline": {
            "name": "stream the same tables through ParquetStreamWriter (I/O floor)",
            "seconds": round(io_s, 3),
        },
        "ratio_generate_to_io_baseline": round(gen_s / io_s, 2),
        "file_bytes": sizes,
        "provisional": "2 shared cores; re-run on a quiet machine",
    }
    path = write_result(result_path("generate", None, args.quick, results_dir=args.results), report)
    print(json.dumps(report, indent=2))
    print(f"written {path}")
    return report


if __name__ == "__main__":
    main()
