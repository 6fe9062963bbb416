"""``gpuseg text``: embed every text, then aggregate per customer and per source.

The texts table is embedded in chunks of ``text.chunk_rows`` rows; each finished chunk is written
as a part file (``text/parts/part-NNNNN.npy``), so an interrupted job resumes at the first
missing part and produces identical output. Under torchrun each rank embeds every WORLD_SIZE-th
chunk, and rank 0 aggregates once all parts exist.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig

from gpuseg.jobs.common import data_as_of, finish, load_validated, staged, start, work_dir
from gpuseg.runtime.distributed import barrier, init_from_env
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import read_json, write_json, write_numpy, write_parquet
from gpuseg.runtime.layout import artifact, job_dir

log = logging.getLogger(__name__)


def _fingerprint(texts: Path, cfg: DictConfig, model_path: str, max_length: int) -> str:
    """Identifies what the parts were computed from; parts of another input are discarded."""
    stat = texts.stat()
    key = f"{texts.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{model_path}|{max_length}|{cfg.text.chunk_rows}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _prepare_parts(folder: Path, fingerprint: str, is_main: bool) -> None:
    manifest = folder / "manifest.json"
    if is_main:
        if folder.exists() and (not manifest.exists() or read_json(manifest).get("fingerprint") != fingerprint):
            log.info("text parts in %s come from other inputs: starting over", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(manifest, {"fingerprint": fingerprint})


@staged("text")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Embed the validated texts and write ``text/embeddings.parquet`` for every customer."""
    from gpuseg.text import TextEmbedder
    from gpuseg.text.aggregate import aggregate_by_customer, customer_text_table

    ctx = start(cfg, "text", needs_device=True)
    rank = init_from_env(ctx["device"])
    work = work_dir(cfg)
    schema, customers = load_validated(work)
    texts_path = artifact(work, "validate", "texts")
    if not texts_path.exists():
        raise UserInputError("this project has no texts table (data.texts.path is null): the text job has "
                             "nothing to embed", config_key="data.texts.path")
    tcfg = cfg.text
    embedder = TextEmbedder(tcfg.model, device=rank.device, batch_size=tcfg.batch_size,
                            max_length=tcfg.max_length, dedupe=bool(tcfg.dedupe), precision=str(tcfg.precision),
                            progress=bool(cfg.progress) and rank.is_main, num_threads=tcfg.num_threads)
    out = job_dir(work, "text")
    parts = artifact(work, "text", "parts")
    _prepare_parts(parts, _fingerprint(texts_path, cfg, embedder.model_path, embedder.max_length), rank.is_main)
    barrier(rank)

    pf = pq.ParquetFile(texts_path)
    chunk_rows = int(tcfg.chunk_rows)
    t0 = time.perf_counter()
    totals = {"n_texts": 0, "n_unique": 0, "n_empty": 0, "n_truncated": 0, "n_parts_resumed": 0}
    for i, batch in enumerate(pf.iter_batches(batch_size=chunk_rows, columns=["text"])):
        part = parts / f"part-{i:05d}.npy"
        if i % rank.world != rank.rank:
            continue
        if part.exists():
            totals["n_parts_resumed"] += 1
            continue
        vectors = embedder.encode(batch.column("text").to_pylist())
        write_numpy(part, vectors)
        for key in ("n_texts", "n_unique", "n_empty", "n_truncated"):
            totals[key] += int(embedder.last_stats_.get(key, 0))
        log.info("text part %d: %d texts, %.0f texts/s", i, batch.num_rows, embedder.last_stats_.get("texts_per_s", 0))
    embed_seconds = time.perf_counter() - t0
    barrier(rank)
    if not rank.is_main:
        return {"rank": rank.rank, **totals}

    n_parts = (pf.metadata.num_rows + chunk_rows - 1) // chunk_rows
    vectors = np.concatenate([np.load(parts / f"part-{i:05d}.npy") for i in range(n_parts)]) if n_parts else \
        np.zeros((0, embedder.dim), np.float32)
    meta = pq.read_table(texts_path, columns=["customer_id", "timestamp", "source"])
    ids = customers["customer_id"].combine_chunks()
    index = pc.index_in(meta["customer_id"], value_set=ids)
    if index.null_count:
        raise UserInputError(f"{index.null_count} validated texts belong to no customer: re-run `gpuseg validate`",
                             table="texts", config_key="paths.work_dir")
    index = index.to_numpy(zero_copy_only=False)
    sources = sorted((schema.get("texts") or {}).get("sources", {}))
    aggregates = aggregate_by_customer(
        vectors, index.astype(np.int64), meta["timestamp"].to_numpy(), np.asarray(meta["source"].to_pylist(), dtype=object),
        len(ids), as_of=data_as_of(cfg), half_life_days=float(tcfg.half_life_days), sources_order=sources)
    table = customer_text_table(aggregates, ids)
    write_parquet(artifact(work, "text", "embeddings"), table)
    metrics = {
        **totals,
        "n_customers": len(ids),
        "customers_with_text": int(np.asarray(aggregates["has_text"]).sum()),
        "sources": sources,
        "dim": embedder.dim,
        "model": embedder.model_path,
        "max_length": embedder.max_length,
        "precision": embedder.precision,
        "device": str(rank.device),
        "world_size": rank.world,
        "embed_seconds": round(embed_seconds, 3),
        "texts_per_s": round(totals["n_texts"] / embed_seconds, 1) if totals["n_texts"] and embed_seconds else None,
    }
    write_json(artifact(work, "text", "metrics"), metrics)
    log.info("text: %d texts, %d customers with text, %d truncated", totals["n_texts"],
             metrics["customers_with_text"], totals["n_truncated"])
    result = {**metrics, "output_dir": str(out), "embeddings_path": str(artifact(work, "text", "embeddings"))}
    return finish(cfg, "text", ctx["manifest"], result)



