"""``gpuseg fuse``: align the tabular, text and journey blocks and fuse them into one matrix.

Reads the configured block artifacts (``fuse.blocks``), fits a :class:`~gpuseg.fusion.BlockFuser`
on every validated customer and writes ``fuse/fused.parquet`` (customer_id + a ``fused``
vector column, what ``gpuseg segment`` and ``gpuseg lookalike`` read), ``fuse/fused.npy`` (the
same float32 matrix, memory-mappable, same row order), the fitted transform
(``transform.json`` + ``transform.safetensors``) and ``metrics.json``.

The blocks are read in row batches and the fused rows written chunk by chunk
(``fuse.chunk_rows`` customers at a time), so the job's memory does not grow with the number of
customers beyond their ids.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from gpuseg.fusion import BlockFuser
from gpuseg.jobs.common import finish, staged, start, work_dir
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import ParquetStreamWriter, write_json
from gpuseg.runtime.layout import artifact, job_dir, read_checked
from gpuseg.runtime.matrix import BlockFile, NpyStreamWriter

log = logging.getLogger(__name__)


def fuse_dir(work: Path) -> Path:
    """Folder of the fusion artifacts."""
    return job_dir(work, "fuse")


def _read_blocks(cfg: DictConfig, work: Path) -> tuple[dict[str, BlockFile], dict[str, str]]:
    blocks, paths = {}, {}
    for name, bcfg in cfg.fuse.blocks.items():
        if bcfg is None or not bool(bcfg.get("enabled", True)):
            continue
        path = Path(str(bcfg.path))
        path = read_checked(work, path if path.is_absolute() else work / path)
        if not path.exists():
            if bool(bcfg.get("optional", False)):
                log.warning("fuse: block %r skipped, '%s' does not exist", name, path)
                continue
            raise UserInputError(f"block {name!r}: '{path}' does not exist; run the job that makes it "
                                 "(`gpuseg features`, `gpuseg text`, `gpuseg journeys`) first, or disable "
                                 f"the block with fuse.blocks.{name}.enabled=false",
                                 config_key=f"fuse.blocks.{name}.path")
        columns = bcfg.get("columns")
        columns = None if columns is None else [str(c) for c in OmegaConf.to_container(columns, resolve=True)]
        try:
            blocks[name] = BlockFile(path, columns, where=f"block {name!r}")
        except UserInputError as exc:
            raise UserInputError(str(exc.args[0]), config_key=f"fuse.blocks.{name}.columns") from None
        paths[name] = str(path)
    if not blocks:
        raise ConfigError("no block to fuse: every block is disabled or absent", config_key="fuse.blocks")
    return blocks, paths


def _weights(cfg: DictConfig, names: list[str]) -> str | dict[str, float]:
    mode = str(cfg.fuse.weights)
    if mode not in ("equal_variance", "none"):
        raise ConfigError(f"fuse.weights must be equal_variance or none, got {mode!r}", config_key="fuse.weights")
    if mode == "none":
        return "none"
    shares = {n: float(cfg.fuse.blocks[n].get("weight", 1.0)) for n in names}
    return "equal_variance" if all(s == 1.0 for s in shares.values()) else shares


def _customers(work: Path) -> pa.Array | None:
    path = artifact(work, "validate", "customers")
    if not path.exists():
        return None
    return pq.read_table(path, columns=["customer_id"])["customer_id"].combine_chunks()


def _write_fused(work: Path, ids: pa.Array, chunks, dim: int) -> None:
    """``fused.parquet`` (one row group per chunk) and ``fused.npy``, written side by side chunk by chunk."""
    schema = pa.schema([("customer_id", pa.string()), ("fused", pa.list_(pa.float32(), dim))])
    with ParquetStreamWriter(artifact(work, "fuse", "fused"), schema) as table, \
            NpyStreamWriter(artifact(work, "fuse", "matrix"), len(ids), dim) as matrix:
        start = 0
        for x in chunks:
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), dim)
            table.write(pa.table({"customer_id": ids.slice(start, len(x)), "fused": vectors}))
            matrix.write(x)
            start += len(x)


@staged("fuse")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit the fusion transform on every customer and write the fused matrix."""
    ctx = start(cfg, "fuse", needs_device=True)
    device = ctx["device"]
    work = work_dir(cfg)
    out = fuse_dir(work)
    t0 = time.perf_counter()
    blocks, paths = _read_blocks(cfg, work)
    fcfg = cfg.fuse
    pca = fcfg.pca_components
    fuser = BlockFuser(weights=_weights(cfg, list(blocks)), pca_components=None if pca is None else pca,
                       l2_normalize=bool(fcfg.l2_normalize), standardize=bool(fcfg.standardize), device=device,
                       chunk_rows=int(fcfg.get("chunk_rows", 65536)))
    for stale in out.glob(".fuse-scratch-*"):  # a killed run's realigned blocks
        shutil.rmtree(stale, ignore_errors=True)
    try:
        ids, chunks = fuser.fit_transform_chunks(blocks, ids=_customers(work), scratch_dir=out)
    except UserInputError as exc:
        if exc.config_key is None and "parameter" in str(exc):
            exc.config_key = "fuse.chunk_rows" if "chunk_rows" in str(exc) else "fuse"
        raise
    dim = fuser.n_features_out_
    _write_fused(work, ids, chunks, dim)
    seconds = time.perf_counter() - t0
    fuser.save(artifact(work, "fuse", "transform"))
    metrics = {
        "n_customers": len(ids),
        "n_features": dim,
        "blocks": {n: {"path": paths[n], "n_columns": len(fuser.block_columns_[n]),
                       "presence_flag": fuser.flagged_[n], "coverage": fuser.coverage_[n],
                       "weight": fuser.block_weights_[n], "variance_share": fuser.variance_shares_[n]}
                   for n in fuser.blocks_},
        "pca_components": None if fuser.components_ is None else int(fuser.components_.shape[0]),
        "explained_variance": None if fuser.explained_variance_ratio_ is None
        else float(np.sum(fuser.explained_variance_ratio_)),
        "l2_normalize": bool(fcfg.l2_normalize),
        "device": str(device),
        "seconds": round(seconds, 3),
    }
    write_json(artifact(work, "fuse", "metrics"), metrics)
    log.info("fuse: %d customers, blocks %s -> %d columns in %.1fs", len(ids),
             {n: b["n_columns"] for n, b in metrics["blocks"].items()}, dim, seconds)
    result = {**{k: metrics[k] for k in ("n_customers", "n_features", "pca_components", "explained_variance")},
              "variance_shares": fuser.variance_shares_, "output_dir": str(out),
              "fused_path": str(artifact(work, "fuse", "fused")),
              "matrix_path": str(artifact(work, "fuse", "matrix")),
              "transform_path": str(artifact(work, "fuse", "transform_meta"))}
    return finish(cfg, "fuse", ctx["manifest"], result)
