"""Apply the saved artifacts of a finished run to newer canonical tables; nothing is refitted.

:func:`load_trained` reads and cross-checks every artifact the segments were made from (the
features' featurizer and transform, the text model settings, the journey encoder and its
vocabularies, the fusion transform, the k-means model and the segmentation); each missing or
incompatible one is a :class:`~gpuseg.runtime.errors.UserInputError` naming the file and the job
to re-run. :meth:`Trained.rebuild` then computes the segment input matrix of the new customers
at the new cut-off the way the training jobs did: values unseen at training go to ``<unk>`` /
``__other__`` exactly as then.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.data.events import to_microseconds
from gpuseg.features.rfm import load_featurizer
from gpuseg.features.transform import TabularTransform
from gpuseg.fusion import BlockFuser, block_from_table
from gpuseg.runtime.errors import GpusegError, UserInputError
from gpuseg.runtime.io import read_json
from gpuseg.runtime.layout import ARTIFACTS, JOB_DIRS, artifact

log = logging.getLogger(__name__)

#: fusion block inputs assign can rebuild: (folder, file) -> (job, artifact)
_BLOCK_SOURCES = {(JOB_DIRS[job], ARTIFACTS[job][name]): (job, name)
                  for job, name in (("features", "matrix"), ("features", "table"), ("text", "embeddings"),
                                    ("journeys", "embeddings"))}


def artifact_error(job: str, path: Path | str, problem: str) -> UserInputError:
    """The error for an unusable artifact: which file, what is wrong, which job to re-run."""
    return UserInputError(f"artifact '{path}' {problem}: re-run `gpuseg {job}` (and the jobs after it) on this "
                          "paths.work_dir before `gpuseg assign`", config_key="paths.work_dir")


def _need(job: str, name: str, work: Path) -> Path:
    path = artifact(work, job, name)
    if not path.exists() and not Path(f"{path}.json").exists():
        raise artifact_error(job, path, "is missing")
    return path


def _load(job: str, path: Path, loader, *args, **kwargs):
    """``loader(path)`` with any failure reported as an artifact error naming the job."""
    try:
        return loader(path, *args, **kwargs)
    except GpusegError as exc:
        raise artifact_error(job, path, f"cannot be used ({exc.args[0] if exc.args else exc})") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise artifact_error(job, path, f"cannot be read ({type(exc).__name__}: {exc})") from None


def _table_columns(expanded: list[str], block: str, flagged: bool) -> list[str]:
    """The table columns a fused block was read from, from its expanded names (``v[0]``... -> ``v``)."""
    names = expanded[:-1] if flagged and expanded and expanded[-1] == f"{block}__present" else expanded
    out: list[str] = []
    for name in names:
        match = re.fullmatch(r"(.*)\[\d+\]", name)
        base = match.group(1) if match else name
        if base not in out:
            out.append(base)
    return out


@dataclass
class Trained:
    """The loaded artifacts of a finished run (see :func:`load_trained`)."""

    work: Path
    device: torch.device
    model: MiniBatchKMeans
    segmentation: dict[str, Any]
    source: str
    transform: TabularTransform
    featurizer_path: Path | None
    fuser: BlockFuser | None = None
    block_sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    model_id: str = ""

    @property
    def n_clusters(self) -> int:
        """Number of segments of the model."""
        return int(self.model.n_clusters)

    def segments(self) -> pa.Table:
        """The training segments (``segment/segments.parquet``)."""
        return pq.read_table(artifact(self.work, "segment", "segments"))

    # ---------------------------------------------------------------------------------- blocks
    def tabular(self, events: Path | None, texts: Path | None, customers: pa.Table,
                as_of: str) -> tuple[pa.Table, np.ndarray]:
        """The raw features table and the scaled model matrix of ``customers`` at ``as_of``."""
        ids = customers["customer_id"].combine_chunks()
        if self.featurizer_path is not None:
            featurizer = _load("features", self.featurizer_path, load_featurizer, as_of)
            if events is None:
                raise UserInputError("the features were computed from events, but the new data have no events "
                                     "table", table="events", config_key="data.events.path")
            with_texts = featurizer.text_sources_ is not None
            if with_texts and texts is None:
                raise UserInputError("the features were computed with texts (review and ticket counts), but the "
                                     "new data have no texts table", table="texts", config_key="data.texts.path")
            raw = featurizer.transform(events, ids, texts_path=texts if with_texts else None)
        else:
            raw = pa.table({"customer_id": ids})
        table = raw
        for name in self.transform.feature_names_in_:
            if name in table.column_names:
                continue
            # customer attributes that collided with a feature name were prefixed attr_ by `gpuseg features`
            source = name if name in customers.column_names else name.removeprefix("attr_")
            if source not in customers.column_names:
                raise UserInputError(f"the features were fitted on the customer attribute {source!r}, which the "
                                     "new customers table does not have", table="customers", column=source,
                                     config_key="data.customers.numeric")
            table = table.append_column(name, customers[source])
        try:
            matrix, _ = self.transform.transform(table)
        except GpusegError as exc:
            raise artifact_error("features", artifact(self.work, "features", "transform"),
                                 f"does not fit the new features table ({exc.args[0]})") from None
        return table, matrix

    def text(self, texts: Path | None, ids: pa.Array, as_of: str, *, half_life_days: float,
             progress: bool) -> pa.Table:
        """The per-customer text block, embedded with the model the text job used."""
        from gpuseg.text import (
            StaticEmbedder,
            TextEmbedder,
            aggregate_by_customer,
            customer_text_table,
        )

        meta_path = _need("text", "metrics", self.work)
        meta = _load("text", meta_path, read_json)
        if not isinstance(meta, dict) or "model" not in meta or "dim" not in meta:
            raise artifact_error("text", meta_path, "does not name the text model and its dimension")
        if meta["model"] == "static":  # text.model=static: the distilled model the text job kept
            embedder = _load("text", artifact(self.work, "text", "static_model"), StaticEmbedder.load,
                             max_length=meta.get("max_length"), progress=progress)
        else:
            embedder = TextEmbedder(meta["model"], device=self.device, max_length=meta.get("max_length"),
                                    precision=str(meta.get("precision") or "auto"), progress=progress)
        if embedder.dim != int(meta["dim"]):
            raise artifact_error("text", meta_path, f"records dimension {meta['dim']}, but the model at "
                                 f"'{meta['model']}' gives {embedder.dim}")
        if texts is None:
            table = pa.table({"customer_id": pa.array([], pa.string()), "timestamp": pa.array([], pa.timestamp("us")),
                              "source": pa.array([], pa.string()), "text": pa.array([], pa.string())})
        else:
            table = pq.read_table(texts, columns=["customer_id", "timestamp", "source", "text"])
        vectors = embedder.encode(table["text"].to_pylist()) if table.num_rows else \
            np.zeros((0, embedder.dim), np.float32)
        index = pc.index_in(table["customer_id"], value_set=ids)
        keep = np.asarray(index.is_valid().to_numpy(zero_copy_only=False), bool)
        aggregates = aggregate_by_customer(
            vectors[keep], index.to_numpy(zero_copy_only=False)[keep].astype(np.int64),
            table["timestamp"].to_numpy()[keep], np.asarray(table["source"].to_pylist(), dtype=object)[keep],
            len(ids), as_of=as_of, half_life_days=half_life_days, sources_order=list(meta.get("sources") or []))
        return customer_text_table(aggregates, ids)

    def journeys(self, events: Path | None, ids: pa.Array, as_of: str) -> pa.Table:
        """The per-customer journey block, from the saved encoder and vocabularies."""
        from gpuseg.journey.model import JourneyEncoder
        from gpuseg.journey.sequences import load_builder

        path = _need("journeys", "encoder_meta", self.work)
        encoder = _load("journeys", artifact(self.work, "journeys", "encoder"), JourneyEncoder.load,
                        device=self.device)
        state = encoder.metadata_.get("sequences")
        if state is None:
            state = _load("journeys", _need("journeys", "vocabularies", self.work), read_json)
        builder = _load("journeys", path, lambda _p: load_builder(state, to_microseconds(as_of)))
        if events is None:
            raise UserInputError("the journeys block needs events, but the new data have no events table",
                                 table="events", config_key="data.events.path")
        seqs = builder.transform(events, ids)
        emb = np.ascontiguousarray(encoder.transform(seqs), dtype=np.float32)
        return pa.table({"customer_id": ids, "has_journey": pa.array(seqs.lengths > 0),
                         "journey": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()),
                                                                      emb.shape[1])})

    def rebuild(self, events: Path | None, texts: Path | None, customers: pa.Table, as_of: str, *,
                half_life_days: float = 90.0, progress: bool = False) -> dict[str, Any]:
        """The segment input of ``customers`` at ``as_of``: ``ids``, ``x`` (float32), ``table``, ``tabular``."""
        ids = customers["customer_id"].combine_chunks()
        table, tabular = self.tabular(events, texts, customers, as_of)
        if self.fuser is None:
            x = np.ascontiguousarray(tabular, dtype=np.float32)
        else:
            built = {("features", "matrix"): lambda: pa.table(
                {"customer_id": ids, **{n: pa.array(tabular[:, j]) for j, n in
                                        enumerate(self.transform.feature_names_out_)}}),
                     ("features", "table"): lambda: table,
                     ("text", "embeddings"): lambda: self.text(texts, ids, as_of, half_life_days=half_life_days,
                                                               progress=progress),
                     ("journeys", "embeddings"): lambda: self.journeys(events, ids, as_of)}
            blocks = {}
            for name in self.fuser.blocks_:
                columns = _table_columns(self.fuser.block_columns_[name], name, self.fuser.flagged_[name])
                source = self.block_sources[name]
                try:
                    blocks[name] = block_from_table(built[source](), columns, block=name)
                except UserInputError as exc:
                    raise artifact_error(source[0], artifact(self.work, *source),
                                         f"no longer matches the fusion transform ({exc.args[0]})") from None
            try:
                _, x = self.fuser.transform(blocks, ids=ids)
            except GpusegError as exc:
                raise artifact_error("fuse", artifact(self.work, "fuse", "transform_meta"),
                                     f"does not fit the rebuilt blocks ({exc.args[0]})") from None
        return {"ids": ids, "x": np.ascontiguousarray(x, dtype=np.float32), "table": table, "tabular": tabular}


def _segment_source(segmentation: dict[str, Any], path: Path) -> str:
    source = Path(str(segmentation.get("input", "")))
    for job, name in (("fuse", "fused"), ("features", "matrix")):
        if (source.parent.name, source.name) == (JOB_DIRS[job], ARTIFACTS[job][name]):
            return job
    raise artifact_error("segment", path, f"was fitted on '{source}', which assign cannot rebuild (it rebuilds "
                         "fuse/fused.parquet or features/matrix.parquet); segment with segment.input=auto")


def load_trained(work: Path, device: torch.device) -> Trained:
    """Load and cross-check the artifacts of the finished run in ``work``.

    Raises
    ------
    UserInputError
        For each missing or incompatible artifact, naming it and the job to re-run.
    """
    seg_path = _need("segment", "segmentation", work)
    _need("segment", "segments", work)
    segmentation = _load("segment", seg_path, read_json)
    model = _load("segment", _need("segment", "model", work), MiniBatchKMeans.load, device=device)
    k, columns = int(model.n_clusters), list(segmentation.get("columns") or [])
    if len(columns) != model.n_features_in_:
        raise artifact_error("segment", seg_path, f"lists {len(columns)} columns but the k-means model in it takes "
                             f"{model.n_features_in_}: they come from different runs")
    for key in ("outlier_thresholds",):
        if len(segmentation.get(key) or []) != k:
            raise artifact_error("segment", seg_path, f"has no {key} for the {k} segments of the model")
    if len((segmentation.get("macro") or {}).get("of_segment") or []) != k:
        raise artifact_error("segment", seg_path, f"has no macro segment for each of the {k} segments")
    source = _segment_source(segmentation, seg_path)
    transform_path = _need("features", "transform", work)
    transform = _load("features", transform_path, TabularTransform.load)
    featurizer = artifact(work, "features", "featurizer")
    featurizer_path = featurizer if featurizer.exists() else None
    if featurizer_path is None and "n_events" in transform.feature_names_in_:
        raise artifact_error("features", featurizer, "is missing, but the transform was fitted on event features")
    trained = Trained(work=work, device=device, model=model, segmentation=segmentation, source=source,
                      transform=transform, featurizer_path=featurizer_path)
    if source == "features":
        width = list(transform.feature_names_out_)
    else:
        trained.fuser = _load("fuse", _need("fuse", "transform_meta", work), BlockFuser.load, device=device)
        blocks = (_load("fuse", _need("fuse", "metrics", work), read_json).get("blocks") or {})
        for name in trained.fuser.blocks_:
            path = Path(str((blocks.get(name) or {}).get("path", "")))
            where = _BLOCK_SOURCES.get((path.parent.name, path.name))
            if where is None:
                raise artifact_error("fuse", artifact(work, "fuse", "metrics"), f"block {name!r} was read from "
                                     f"'{path}', which assign cannot rebuild")
            trained.block_sources[name] = where
            if where == ("features", "matrix"):
                cols = _table_columns(trained.fuser.block_columns_[name], name, trained.fuser.flagged_[name])
                if cols != list(transform.feature_names_out_):
                    raise artifact_error("features", transform_path, f"gives {len(transform.feature_names_out_)} "
                                         f"columns the fusion transform's block {name!r} was not fitted on "
                                         f"({len(cols)} columns): the features changed since `gpuseg fuse`")
        # the fused matrix is read back as fused[0], fused[1]...: its width is what must agree
        width = [f"fused[{i}]" for i in range(trained.fuser.n_features_out_)]
    if width != columns:
        job = "fuse" if source == "fuse" else "features"
        raise artifact_error("segment", seg_path, f"was fitted on {len(columns)} columns, but the {job} artifacts "
                             f"give {len(width)} different ones (another run of `gpuseg {job}` since)")
    digest = hashlib.sha256(seg_path.read_bytes())
    digest.update(Path(f"{artifact(work, 'segment', 'model')}.json").read_bytes())
    trained.model_id = digest.hexdigest()[:16]
    return trained
