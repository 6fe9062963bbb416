"""Benchmark: peak memory of fusion and text aggregation, streamed vs in memory, as customers grow.

Usage::

    python benchmarks/bench_streaming_memory.py                  # 50k, 100k, 200k customers
    python benchmarks/bench_streaming_memory.py --quick          # 20k, 40k: about a minute
    python benchmarks/bench_streaming_memory.py --sizes 100000 400000 --chunk-rows 16384

For each size it writes synthetic blocks (a 30-column tabular block, a 384-dim text block covering
70% of the customers) and synthetic text-embedding part files (1.1 texts per customer, two
sources), then runs each case in a fresh child process and records the child's peak resident set
size (``ru_maxrss``) and time:

- ``fuse_streamed``: :class:`~gpuseg.runtime.matrix.BlockFile` blocks through
  ``BlockFuser.fit_transform_chunks`` into a ``.npy`` written chunk by chunk (what ``gpuseg fuse``
  does); ``fuse_in_memory``: the blocks read whole and ``BlockFuser.fit_transform``;
- ``text_streamed``: ``customer_text_tables`` over the part files into a streamed Parquet writer
  (what ``gpuseg text`` does); ``text_in_memory``: the parts concatenated and
  ``aggregate_by_customer``, the table written at once;
- ``segment_streamed`` / ``segment_resident`` (``--cases``; not run by default): ``gpuseg segment``
  (n_clusters=8, the default calibration) on a synthetic ``fused.parquet`` + ``fused.npy`` of
  ``--segment-dim`` columns, with ``segment.memory_mb=--segment-memory-mb`` (read from the file by
  blocks) or a budget above the matrix (read whole).

Streamed peaks should stay flat as the customers grow; in-memory ones grow with them. Writes
``benchmarks/results/streaming_memory_<date>[_quick].json`` (``streaming_memory_segment_<date>...``
when only segment cases run)::

    python benchmarks/bench_streaming_memory.py --sizes 300000 --cases segment_streamed segment_resident
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# _common first: it puts the repository root on sys.path for the gpuseg import
from _common import library_versions, machine_info, result_path, utc_now, write_result

DIM, TAB, PART_ROWS, SOURCES = 384, 30, 50_000, ("review", "ticket")
SEGMENT_CASES = ("segment_streamed", "segment_resident")


def _synthesise_fused(folder: Path, n: int, dim: int) -> None:
    """``fused.parquet`` and ``fused.npy`` side by side (as ``gpuseg fuse`` writes): 8 planted blobs."""
    import pyarrow as pa

    from gpuseg.runtime.io import ParquetStreamWriter
    from gpuseg.runtime.matrix import NpyStreamWriter

    rng = np.random.default_rng(n)
    centres = rng.normal(size=(8, dim)).astype(np.float32)
    schema = pa.schema([("customer_id", pa.string()), ("fused", pa.list_(pa.float32(), dim))])
    with ParquetStreamWriter(folder / "fused.parquet", schema) as table, \
            NpyStreamWriter(folder / "fused.npy", n, dim) as matrix:
        for s in range(0, n, 65536):
            e = min(n, s + 65536)
            x = centres[rng.integers(0, 8, e - s)] + rng.normal(size=(e - s, dim)).astype(np.float32)
            ids = pa.array([f"c{i:08d}" for i in range(s, e)])
            table.write(pa.table({"customer_id": ids,
                                  "fused": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)}))
            matrix.write(x)


def _segment(case: str, folder: Path, memory_mb: float) -> Path:
    """Run ``gpuseg segment`` on ``folder/fused.parquet``; return its segments file."""
    from hydra import compose, initialize_config_module

    from gpuseg.jobs import segment

    budget = memory_mb if case == "segment_streamed" else 1e9
    with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
        cfg = compose(config_name="segment", overrides=[
            f"paths.work_dir={folder / 'work'}", "progress=false", "device=cpu", "segment.n_clusters=8",
            f"segment.input={folder / 'fused.parquet'}", f"segment.memory_mb={budget}"])
    return Path(segment.run(cfg)["segments_path"])


def _synthesise(folder: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(n)
    ids = pa.array([f"c{i:08d}" for i in range(n)])
    has = rng.random(n) < 0.7
    tab_w = pq.ParquetWriter(folder / "tabular.parquet",
                             pa.schema([("customer_id", pa.string())] + [(f"f{j}", pa.float32()) for j in range(TAB)]))
    txt_w = pq.ParquetWriter(folder / "text.parquet", pa.schema([("customer_id", pa.string()), ("has_text", pa.bool_()),
                                                                 ("all_mean", pa.list_(pa.float32(), DIM))]))
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        tab = rng.normal(size=(e - s, TAB)).astype(np.float32)
        tab_w.write_table(pa.table({"customer_id": ids[s:e], **{f"f{j}": tab[:, j] for j in range(TAB)}}))
        keep = np.flatnonzero(has[s:e])
        vec = (rng.normal(size=(len(keep), DIM)) * 0.05).astype(np.float32)
        txt_w.write_table(pa.table({"customer_id": ids[s:e].take(keep), "has_text": pa.array(np.ones(len(keep), bool)),
                                    "all_mean": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), DIM)}))
    tab_w.close()
    txt_w.close()
    n_texts = int(n * 1.1)
    parts = folder / "parts"
    parts.mkdir()
    for i, s in enumerate(range(0, n_texts, PART_ROWS)):
        k = min(n_texts, s + PART_ROWS) - s
        np.save(parts / f"part-{i:05d}.npy", rng.normal(size=(k, DIM)).astype(np.float32))
        np.savez(parts / f"meta-{i:05d}.npz", cust=rng.integers(0, n, size=k),
                 ts=np.datetime64("2024-06-30", "us") - rng.integers(0, 700, size=k) * np.timedelta64(1, "D"),
                 src=rng.choice(SOURCES, size=k))


def _text_parts(folder: Path):
    from gpuseg.text.aggregate import TextPart

    for path in sorted((folder / "parts").glob("part-*.npy")):
        meta = np.load(path.with_name(path.name.replace("part-", "meta-").replace(".npy", ".npz")))
        yield TextPart(np.load(path, mmap_mode="r"), meta["cust"], meta["ts"], meta["src"])


def _child(case: str, folder: Path, n: int, chunk_rows: int, memory_mb: float = 256) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpuseg.fusion import BlockFuser, block_from_table
    from gpuseg.runtime.io import ParquetStreamWriter, write_numpy, write_parquet
    from gpuseg.runtime.matrix import BlockFile, NpyStreamWriter
    from gpuseg.text.aggregate import (
        aggregate_by_customer,
        customer_text_table,
        customer_text_tables,
    )

    ids = pa.array([f"c{i:08d}" for i in range(n)])
    out = folder / f"{case}.out"
    t0 = time.perf_counter()
    if case in SEGMENT_CASES:
        out = _segment(case, folder, memory_mb)
    elif case == "fuse_streamed":
        blocks = {"tabular": BlockFile(folder / "tabular.parquet"), "text": BlockFile(folder / "text.parquet", ["all_mean"])}
        fuser = BlockFuser(device="cpu", chunk_rows=chunk_rows)
        ids, chunks = fuser.fit_transform_chunks(blocks, ids=ids, scratch_dir=folder)
        with NpyStreamWriter(out, n, fuser.n_features_out_) as w:
            for x in chunks:
                w.write(x)
    elif case == "fuse_in_memory":
        blocks = {"tabular": block_from_table(pq.read_table(folder / "tabular.parquet")),
                  "text": block_from_table(pq.read_table(folder / "text.parquet"), ["all_mean"])}
        write_numpy(out, BlockFuser(device="cpu").fit_transform(blocks, ids=ids)[1])
    elif case == "text_streamed":
        tables = customer_text_tables(lambda: _text_parts(folder), ids, DIM, as_of="2024-06-30",
                                      sources_order=list(SOURCES), memory_mb=256)
        first = next(tables)
        with ParquetStreamWriter(out, first.schema) as w:
            w.write(first)
            for t in tables:
                w.write(t)
    elif case == "text_in_memory":
        parts = list(_text_parts(folder))
        agg = aggregate_by_customer(np.concatenate([np.asarray(p.embeddings) for p in parts]),
                                    np.concatenate([p.customer_index for p in parts]),
                                    np.concatenate([p.timestamps for p in parts]),
                                    np.concatenate([p.sources for p in parts]), n, as_of="2024-06-30",
                                    sources_order=list(SOURCES))
        write_parquet(out, customer_text_table(agg, ids))
    seconds = time.perf_counter() - t0
    size = out.stat().st_size
    if case not in SEGMENT_CASES:
        out.unlink()
    return {"case": case, "n_customers": n, "seconds": round(seconds, 2), "output_mb": round(size / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k and 40k customers")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="customer counts (default 50k 100k 200k)")
    parser.add_argument("--chunk-rows", type=int, default=65536, help="BlockFuser chunk_rows of the streamed fusion")
    parser.add_argument("--cases", nargs="+", default=["fuse_streamed", "fuse_in_memory", "text_streamed",
                                                        "text_in_memory"])
    parser.add_argument("--segment-dim", type=int, default=390, help="columns of the segment cases' matrix")
    parser.add_argument("--segment-memory-mb", type=float, default=256, help="segment.memory_mb when streamed")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=3, metavar=("CASE", "FOLDER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], Path(args.child[1]), int(args.child[2]), args.chunk_rows,
                                args.segment_memory_mb)))
        return
    sizes = args.sizes or ([20_000, 40_000] if args.quick else [50_000, 100_000, 200_000])
    runs = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
            if set(args.cases) - set(SEGMENT_CASES):
                _synthesise(Path(tmp), n)
            if set(args.cases) & set(SEGMENT_CASES):
                _synthesise_fused(Path(tmp), n, args.segment_dim)
            for case in args.cases:
                res = subprocess.run([sys.executable, __file__, "--child", case, tmp, str(n),
                                      "--chunk-rows", str(args.chunk_rows),
                                      "--segment-memory-mb", str(args.segment_memory_mb)],
                                     capture_output=True, text=True, check=True)
                runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(runs[-1], flush=True)
    payload = {"benchmark": "streaming_memory", "date": utc_now(), "machine": machine_info(),
               "versions": library_versions(), "chunk_rows": args.chunk_rows, "dim": DIM,
               **({"segment_dim": args.segment_dim, "segment_memory_mb": args.segment_memory_mb}
                  if set(args.cases) & set(SEGMENT_CASES) else {}), "runs": runs}
    # segment-only runs get their own file: they do not replace a fusion/text run of the same day
    name = "streaming_memory_segment" if set(args.cases) <= set(SEGMENT_CASES) else "streaming_memory"
    path = write_result(result_path(name, quick=args.quick, out=args.out), payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
