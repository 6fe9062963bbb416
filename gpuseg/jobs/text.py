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
from gpuseg.runtime.io import ParquetStreamWriter, atomic_dir, read_json, write_json, write_numpy
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.validation import check_real

log = logging.getLogger(__name__)

#: ``text.model`` value that selects the static (model2vec) embedder
STATIC = "static"


def _fingerprint(texts: Path, cfg: DictConfig, model_key: str, max_length: int) -> str:
    """Identifies what the parts were computed from; parts of another input are discarded."""
    stat = texts.stat()
    key = f"{texts.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{model_key}|{max_length}|{cfg.text.chunk_rows}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _is_static(tcfg: DictConfig) -> bool:
    return tcfg.model is not None and str(tcfg.model).strip().lower() == STATIC


def _copy_static_model(shared: Path, local: Path) -> None:
    """Put the shared cache's files in ``local`` unless it already holds the same distillation."""
    from gpuseg.text.static import RECORD

    if (local / RECORD).exists() and read_json(local / RECORD) == read_json(shared / RECORD):
        return
    with atomic_dir(local) as staging:
        shutil.copytree(shared, staging, dirs_exist_ok=True)


def _embedder(tcfg: DictConfig, cfg: DictConfig, rank: Any, work: Path) -> Any:
    """The transformer (default) or, with ``text.model=static``, the static model distilled from it."""
    from gpuseg.text import StaticEmbedder, TextEmbedder

    progress = bool(cfg.progress) and rank.is_main
    if not _is_static(tcfg):
        return TextEmbedder(tcfg.model, device=rank.device, batch_size=tcfg.batch_size,
                            max_length=tcfg.max_length, dedupe=bool(tcfg.dedupe), precision=str(tcfg.precision),
                            progress=progress, num_threads=tcfg.num_threads)
    scfg = tcfg.get("static") or {}

    def make() -> StaticEmbedder:
        def at(cache: Path) -> StaticEmbedder:
            return StaticEmbedder(scfg.get("base"), cache_dir=cache, pca_dims=scfg.get("pca_dims", 256),
                                  sif_coefficient=scfg.get("sif_coefficient", 1e-4), max_length=tcfg.max_length,
                                  dedupe=bool(tcfg.dedupe), device=rank.device, batch_size=tcfg.batch_size,
                                  progress=progress, num_threads=tcfg.num_threads)

        local = artifact(work, "text", "static_model")
        if scfg.get("cache_dir"):
            # distilled once into the shared folder (several projects, every size of a bench), then
            # copied into this work dir, where `gpuseg assign` looks for it
            _copy_static_model(Path(at(Path(str(scfg.cache_dir))).model_path), local)
        return at(local)

    # under torchrun rank 0 distills (once, into the shared work dir) while the others wait, then load it
    embedder = make() if rank.is_main else None
    barrier(rank)
    return embedder if embedder is not None else make()


def _model_key(embedder: Any) -> str:
    """What the vectors depend on: the transformer's folder, or the static model's fingerprint."""
    fingerprint = getattr(embedder, "fingerprint", None)
    return f"{STATIC}:{fingerprint}" if fingerprint else embedder.model_path


def _prepare_parts(folder: Path, fingerprint: str, is_main: bool) -> None:
    manifest = folder / "manifest.json"
    if is_main:
        if folder.exists() and (not manifest.exists() or read_json(manifest).get("fingerprint") != fingerprint):
            log.info("text parts in %s come from other inputs: starting over", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(manifest, {"fingerprint": fingerprint})


def _aggregate_memory_mb(cfg: DictConfig) -> float:
    """``text.aggregate_memory_mb``: the MiB one range of customers may take while aggregated."""
    value = cfg.text.get("aggregate_memory_mb", 2048)
    check_real("text", "aggregate_memory_mb", value, low=16.0, config_key="text.aggregate_memory_mb")
    return float(value)


def _aggregate_parts(cfg: DictConfig, texts_path: Path, parts: Path, ids, dim: int, sources: list[str]) -> int:
    """Write ``text/embeddings.parquet`` from the part files, streamed; returns the customers with text."""
    from gpuseg.text.aggregate import TextPart, customer_text_tables

    chunk_rows = int(cfg.text.chunk_rows)

    # each range of customers walks the parts again: their customer rows, times and sources
    # (about 25 bytes a text) are looked up once, not once per range
    meta: list[tuple[np.ndarray, np.ndarray, Any]] = []

    def read_meta() -> None:
        batches = pq.ParquetFile(texts_path).iter_batches(batch_size=chunk_rows, columns=["customer_id", "timestamp",
                                                                                          "source"])
        for batch in batches:
            index = pc.index_in(batch.column("customer_id"), value_set=ids)
            if index.null_count:
                raise UserInputError(f"{index.null_count} validated texts belong to no customer: re-run "
                                     "`gpuseg validate`", table="texts", config_key="paths.work_dir")
            meta.append((index.to_numpy(zero_copy_only=False).astype(np.int64),
                         batch.column("timestamp").to_numpy(zero_copy_only=False), batch.column("source")))

    def text_parts():
        if not meta:
            read_meta()
        for i, (index, timestamps, source) in enumerate(meta):
            vectors = np.load(parts / f"part-{i:05d}.npy", mmap_mode="r")
            if len(vectors) != len(index):
                raise UserInputError(f"text part {i} holds {len(vectors)} rows for {len(index)} texts: delete "
                                     f"'{parts}' and re-run `gpuseg text`", config_key="paths.work_dir")
            yield TextPart(vectors, index, timestamps, source)
            del vectors

    tables = customer_text_tables(text_parts, ids, dim, as_of=data_as_of(cfg),
                                  half_life_days=float(cfg.text.half_life_days), sources_order=sources,
                                  memory_mb=_aggregate_memory_mb(cfg))
    table = next(tables)
    with_text = 0
    with ParquetStreamWriter(artifact(work_dir(cfg), "text", "embeddings"), table.schema) as writer:
        while table is not None:
            writer.write(table)
            with_text += int(pc.sum(table["has_text"]).as_py() or 0)
            table = None  # dropped before the next range is aggregated
            table = next(tables, None)
    return with_text


@staged("text")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Embed the validated texts and write ``text/embeddings.parquet`` for every customer."""
    ctx = start(cfg, "text", needs_device=True)
    rank = init_from_env(ctx["device"])
    work = work_dir(cfg)
    schema, customers = load_validated(work)
    texts_path = artifact(work, "validate", "texts")
    if not texts_path.exists():
        raise UserInputError("this project has no texts table (data.texts.path is null): the text job has "
                             "nothing to embed", config_key="data.texts.path")
    tcfg = cfg.text
    embedder = _embedder(tcfg, cfg, rank, work)
    out = job_dir(work, "text")
    parts = artifact(work, "text", "parts")
    _prepare_parts(parts, _fingerprint(texts_path, cfg, _model_key(embedder), embedder.max_length), rank.is_main)
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

    # --- streamed aggregation (issue 12): one part file at a time, customers in ranges ---------
    ids = customers["customer_id"].combine_chunks()
    sources = sorted((schema.get("texts") or {}).get("sources", {}))
    with_text = _aggregate_parts(cfg, texts_path, parts, ids, embedder.dim, sources)
    metrics = {
        **totals,
        "n_customers": len(ids),
        "customers_with_text": with_text,
        "sources": sources,
        "dim": embedder.dim,
        # "static" tells `gpuseg assign` to open text/static_model (a path into the staging folder would go stale)
        "model": STATIC if _is_static(tcfg) else embedder.model_path,
        **({"static": {"base_model": embedder.base_model_path, "fingerprint": embedder.fingerprint,
                       "distilled": embedder.distilled_, "distill_seconds": embedder.distill_seconds_}}
           if _is_static(tcfg) else {}),
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



