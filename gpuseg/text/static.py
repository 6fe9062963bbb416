"""Static (model2vec) sentence embeddings distilled locally from the configured transformer.

:class:`StaticEmbedder` is the fast CPU path of the text job (``text.model=static``): once, it
runs every token of the base transformer's vocabulary through the transformer (model2vec's
distillation: mean-pooled token vectors, PCA, SIF weighting) and keeps the resulting table of
token vectors; from then on a text's embedding is the mean of its tokens' rows, with no neural
network at all. It is one to two orders of magnitude faster than the transformer and less exact
(no context); ``benchmarks/bench_text_static.py`` measures both.

The distilled model is cached in a folder (``<work_dir>/text/static_model/`` for the job) as
model2vec saves it (``model.safetensors``, ``tokenizer.json``, ``config.json``, no pickle) plus
``gpuseg_static.json``, which records a fingerprint of the base model's files and the settings.
The folder is written whole or not at all (staged beside it, then renamed) and reused while the
fingerprint matches; a change of base model or settings distills again. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import atomic_dir, read_json, umask, write_json
from gpuseg.runtime.progress import progress_bar
from gpuseg.runtime.validation import check_int, check_real
from gpuseg.text.embedder import _as_strings, _load, _torch_threads, _unique_texts, _valid_utf8
from gpuseg.text.model_path import read_model_info, resolve_model

log = logging.getLogger(__name__)

_NAME = "StaticEmbedder"
BASE_KEY = "text.static.base"

#: model2vec's own default: 256 PCA components keep the neighbourhoods of MiniLM's 384 dimensions
#: (see the benchmark's neighbour overlap) while making the token table and text block a third smaller.
DEFAULT_PCA_DIMS = 256
#: model2vec's default SIF coefficient (frequent tokens weigh less, like the base model's attention).
DEFAULT_SIF = 1e-4
#: Texts tokenised and pooled per step of :meth:`StaticEmbedder.encode`.
DEFAULT_BATCH_SIZE = 4096

#: The record gpuseg writes beside model2vec's files; its absence means "not a finished cache".
RECORD = "gpuseg_static.json"
#: Bump when what gpuseg writes (or how it distills) changes: older caches are distilled again.
FORMAT_VERSION = 1
_MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json")
# base pooling (read_model_info) -> model2vec's pooling of the one-token sequences it embeds
_POOLING = {"mean": "mean", "cls": "first"}


class StaticEmbedder:
    """Embed texts with a static model distilled once from a local transformer.

    Parameters
    ----------
    base : str or path-like or None, default=None
        The transformer to distill from, resolved like ``text.model`` (None: the packaged
        all-MiniLM-L6-v2; a local model directory; or a hub name already in the local cache).
        A model that is not found raises :class:`~gpuseg.runtime.errors.UserInputError` naming
        ``text.static.base``; nothing is downloaded.
    cache_dir : path-like
        Folder of the distilled model; reused when its fingerprint matches, written otherwise.
    pca_dims : int or None, default=256
        Components kept by model2vec's PCA (at most the base's hidden size); None keeps the base's
        dimension without PCA.
    sif_coefficient : float or None, default=1e-4
        model2vec's SIF token weighting, in (0, 1); None weighs every token alike.
    max_length : int or None, default=None
        Tokens per text; longer texts are truncated and counted in ``last_stats_["n_truncated"]``.
        None takes the base model's ``max_seq_length`` (256 for all-MiniLM-L6-v2), so both text
        paths read the same part of a long text.
    dedupe : bool, default=True
        Embed each distinct text once and copy its vector to the duplicates.
    device : {"auto", "cpu", "cuda"} or str or torch.device, default="auto"
        Where the base transformer runs while distilling (encoding always runs on the CPU: it is
        a table look-up, bound by tokenisation).
    batch_size : int or None, default=None
        Texts tokenised and pooled per step; None means 4096.
    progress : bool, default=False
        Show tqdm bars while distilling and encoding (only on a terminal).
    num_threads : int or None, default=None
        CPU threads for torch while distilling and encoding; None leaves torch's setting alone.

    Attributes
    ----------
    model_path : str
        The cache folder the static model was loaded from.
    base_model_path : str or None
        The transformer it was distilled from (as recorded in the cache).
    fingerprint : str
        Hash of the base model's files and the distillation settings; names the cache contents.
    dim : int
        Length of each embedding.
    max_length : int
        Token limit applied to every text.
    precision : str
        ``"fp32"``: vectors are pooled in float32 (the table is stored as float16).
    distilled_ : bool
        Whether this instance distilled the model (False: the cache was reused).
    distill_seconds_ : float or None
        Seconds the distillation took (recorded in the cache, so also known when reused).
    last_stats_ : dict
        Metrics of the last :meth:`encode` call: ``n_texts``, ``n_unique``, ``n_empty``,
        ``n_truncated``, ``n_tokens``, ``n_no_known_token`` (texts of unknown tokens only, given
        zeros), ``batch_size``, ``seconds``, ``texts_per_s``.

    Notes
    -----
    Empty texts get zeros, as with :class:`~gpuseg.text.TextEmbedder`. A text embedding is the
    L2-normalised mean of its tokens' rows, exactly model2vec's ``StaticModel.encode`` (pooled
    in float32 here instead of float16).

    Examples
    --------
    >>> emb = StaticEmbedder(cache_dir="work/text/static_model")      # doctest: +SKIP
    >>> emb.encode(["Great product!", "Where is my refund?"]).shape   # doctest: +SKIP
    (2, 256)
    """

    def __init__(
        self,
        base: str | os.PathLike | None = None,
        *,
        cache_dir: str | os.PathLike,
        pca_dims: int | None = DEFAULT_PCA_DIMS,
        sif_coefficient: float | None = DEFAULT_SIF,
        max_length: int | None = None,
        dedupe: bool = True,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        progress: bool = False,
        num_threads: int | None = None,
    ):
        check_int(_NAME, "pca_dims", pca_dims, low=1, allow_none=True, config_key="text.static.pca_dims")
        check_real(_NAME, "sif_coefficient", sif_coefficient, low=0.0, high=1.0, closed_low=False,
                   closed_high=False, allow_none=True, config_key="text.static.sif_coefficient")
        self._setup(max_length, dedupe, batch_size, progress, num_threads)
        self.device = resolve_device(device, key="text.device")
        base_path = _resolve_base(base)
        info = read_model_info(base_path)
        hidden = _hidden_size(base_path)
        if pca_dims is not None and pca_dims > hidden:
            raise UserInputError(
                f"text.static.pca_dims is {pca_dims}, more than the {hidden} dimensions of the base model "
                f"'{base_path}': set it to at most {hidden}, or to null to keep them all",
                config_key="text.static.pca_dims")
        if info["pooling"] not in _POOLING:
            log.warning("the base model pools with %r, which model2vec cannot reproduce: distilling with mean "
                        "pooling", info["pooling"])
        settings = {
            "format": FORMAT_VERSION,
            "pca_dims": None if pca_dims is None else int(pca_dims),
            "sif_coefficient": None if sif_coefficient is None else float(sif_coefficient),
            "pooling": _POOLING.get(info["pooling"], "mean"),
            "quantize_to": "float16",
            "model2vec": _model2vec_version(),
        }
        self.fingerprint = _fingerprint(base_path, settings)
        cache = Path(cache_dir)
        record = _valid_record(cache, self.fingerprint)
        if record is None:
            record = _distill_to(cache, base_path, settings, self.fingerprint, device=self.device,
                                 progress=self.progress, num_threads=self.num_threads)
            self.distilled_ = True
        else:
            log.info("reusing the static text model in %s (distilled from %s)", cache, base_path)
            self.distilled_ = False
        self._open(cache, record, default_max_length=info["max_seq_length"])

    @classmethod
    def load(cls, cache_dir: str | os.PathLike, *, max_length: int | None = None, dedupe: bool = True,
             batch_size: int | None = None, progress: bool = False,
             num_threads: int | None = None) -> StaticEmbedder:
        """Open a distilled model folder without its base model (e.g. for ``gpuseg assign``).

        Parameters
        ----------
        cache_dir : path-like
            A folder written by :class:`StaticEmbedder`.
        max_length, dedupe, batch_size, progress, num_threads
            As for the constructor; ``max_length=None`` takes the limit recorded at distillation.

        Returns
        -------
        StaticEmbedder

        Raises
        ------
        UserInputError
            When the folder is missing or incomplete (naming ``text.model``).
        """
        cache = Path(cache_dir)
        record = _valid_record(cache, None)
        if record is None:
            raise UserInputError(f"'{cache}' holds no complete static text model (re-run `gpuseg text` with "
                                 "text.model=static)", config_key="text.model")
        self = cls.__new__(cls)
        self._setup(max_length, dedupe, batch_size, progress, num_threads)
        self.device = torch.device("cpu")
        self.fingerprint = str(record["fingerprint"])
        self.distilled_ = False
        self._open(cache, record, default_max_length=record.get("max_seq_length"))
        return self

    def __repr__(self) -> str:
        return (f"StaticEmbedder(model={self.model_path!r}, base={self.base_model_path!r}, dim={self.dim}, "
                f"max_length={self.max_length})")

    # ------------------------------------------------------------------ public API

    def encode(self, texts: Iterable[Any] | str, batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts``.

        Parameters
        ----------
        texts : iterable of str (or bytes, None, ...) or str
            As for :meth:`gpuseg.text.TextEmbedder.encode`.
        batch_size : int or None, default=None
            Overrides the constructor's ``batch_size`` for this call.

        Returns
        -------
        numpy.ndarray of float32, shape (n_texts, dim)
            One L2-normalised row per input text, in input order; zeros for empty texts.
        """
        start = time.perf_counter()
        check_int(_NAME, "batch_size", batch_size, low=1, allow_none=True, config_key="text.batch_size")
        bs = int(batch_size or self.batch_size)
        strings = _as_strings(texts)
        unique, inverse = _unique_texts(strings, dedupe=self.dedupe)
        vectors = np.zeros((len(unique), self.dim), dtype=np.float32)
        truncated = np.zeros(len(unique), dtype=bool)
        n_tokens = n_unknown = 0
        with _torch_threads(self.num_threads), torch.inference_mode(), \
                progress_bar(self.progress, total=len(unique), unit="text", desc="static embedding") as bar:
            for lo in range(0, len(unique), bs):
                chunk = unique[lo:lo + bs]
                ids, truncated[lo:lo + len(chunk)] = self._tokenize(chunk)
                flat = torch.from_numpy(np.concatenate(ids) if ids else np.zeros(0, np.int64))
                lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
                offsets = torch.cumsum(lengths, 0) - lengths
                # an empty bag (every token unknown) pools to zeros and stays zero when normalised
                pooled = torch.nn.functional.embedding_bag(flat, self._table, offsets, mode="mean")
                vectors[lo:lo + len(chunk)] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
                n_tokens += int(lengths.sum())
                n_unknown += int((lengths == 0).sum())
                bar.update(len(chunk))
        out = np.zeros((len(strings), self.dim), dtype=np.float32)
        filled = inverse >= 0
        out[filled] = vectors[inverse[filled]]
        n_truncated = int(truncated[inverse[filled]].sum())  # every input row counts, duplicates too
        seconds = time.perf_counter() - start
        self.last_stats_ = {
            "n_texts": len(strings),
            "n_unique": len(unique),
            "n_empty": int(len(strings) - filled.sum()),
            "n_truncated": n_truncated,
            "n_tokens": n_tokens,
            "n_no_known_token": n_unknown,
            "batch_size": bs,
            "seconds": seconds,
            "texts_per_s": len(strings) / seconds if seconds > 0 else float("inf"),
        }
        if n_unknown:
            log.warning("%d distinct texts have no token the static model knows: they get zeros", n_unknown)
        log.info("static-embedded %d texts (%d distinct, %d empty, %d truncated) in %.2fs (%.0f texts/s)",
                 len(strings), len(unique), self.last_stats_["n_empty"], n_truncated, seconds,
                 self.last_stats_["texts_per_s"])
        return out

    # ------------------------------------------------------------------ internals

    def _setup(self, max_length, dedupe, batch_size, progress, num_threads) -> None:
        check_int(_NAME, "max_length", max_length, low=1, allow_none=True, config_key="text.max_length")
        check_int(_NAME, "batch_size", batch_size, low=1, allow_none=True, config_key="text.batch_size")
        check_int(_NAME, "num_threads", num_threads, low=1, allow_none=True, config_key="text.num_threads")
        self._max_length_arg = None if max_length is None else int(max_length)
        self.dedupe = bool(dedupe)
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
        self.progress = bool(progress)
        self.num_threads = None if num_threads is None else int(num_threads)
        self.precision = "fp32"
        self.last_stats_: dict[str, Any] = {}

    def _open(self, cache: Path, record: dict[str, Any], *, default_max_length: int | None) -> None:
        """Load the token table and tokenizer of a verified cache folder."""
        from safetensors.numpy import load_file  # heavy: imported on first use
        from tokenizers import Tokenizer

        try:
            weights = load_file(str(cache / "model.safetensors"))
            tokenizer = Tokenizer.from_file(str(cache / "tokenizer.json"))
        except Exception as exc:  # safetensors and tokenizers raise their own exception types
            raise UserInputError(f"cannot read the static text model in '{cache}': {exc}; delete the folder to "
                                 "distill it again", config_key="text.model") from exc
        table = weights["embeddings"].astype(np.float32)
        if "mapping" in weights or "weights" in weights:
            raise UserInputError(f"the static text model in '{cache}' is vocabulary-quantised, which gpuseg does "
                                 "not write; delete the folder to distill it again", config_key="text.model")
        self._table = torch.from_numpy(np.ascontiguousarray(table))
        self.dim = int(table.shape[1])
        self.max_length = self._max_length_arg or int(default_max_length or 512)
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        self._tokenizer = tokenizer
        self._unk_id = _unknown_id(tokenizer)
        self.model_path = str(cache)
        self.base_model_path = record.get("base_model")
        self.distill_seconds_ = record.get("distill_seconds")

    def _tokenize(self, texts: list[str]) -> tuple[list[np.ndarray], list[bool]]:
        """Token ids (unknown tokens dropped, as model2vec does) and truncation flags."""
        try:
            encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        except (TypeError, ValueError, UnicodeError):
            encodings = self._tokenizer.encode_batch([_valid_utf8(s) for s in texts], add_special_tokens=False)
        ids, truncated = [], []
        for e in encodings:
            row = np.asarray(e.ids, dtype=np.int64)
            if self._unk_id is not None:
                row = row[row != self._unk_id]
            ids.append(row)
            truncated.append(bool(e.overflowing))
        return ids, truncated


# ---------------------------------------------------------------------- the cache


def _resolve_base(base: str | os.PathLike | None) -> str:
    """``resolve_model``, with its errors naming ``text.static.base`` (the key the user set)."""
    try:
        return resolve_model(base)
    except UserInputError as exc:
        message = str(exc.args[0] if exc.args else exc).replace("set text.model to", "set text.static.base to")
        raise UserInputError(f"text.model=static distills from text.static.base, which cannot be found: {message}",
                             config_key=BASE_KEY) from None


def _hidden_size(base_path: str) -> int:
    config = read_json(Path(base_path) / "config.json")
    size = config.get("hidden_size") or config.get("d_model") or config.get("dim")
    if not size:
        raise UserInputError(f"the base model's config '{base_path}/config.json' gives no hidden_size",
                             config_key=BASE_KEY)
    return int(size)


def _model2vec_version() -> str:
    try:
        import model2vec
    except ImportError as exc:
        raise UserInputError("text.model=static needs model2vec (pip install 'model2vec[distill]')",
                             config_key="text.model") from exc
    return str(model2vec.__version__)


def _fingerprint(base_path: str, settings: dict[str, Any]) -> str:
    """Hash of the base model's files (contents, not dates) and of the settings."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    root = Path(base_path)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix not in (".json", ".safetensors", ".txt", ".model"):
            continue  # READMEs, pickles (never loaded) and the like do not make the model
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as handle:
            for block in iter(functools.partial(handle.read, 1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _valid_record(cache: Path, fingerprint: str | None) -> dict[str, Any] | None:
    """The cache's record when the folder is complete (and matches ``fingerprint`` if given)."""
    record_path = cache / RECORD
    if not record_path.is_file() or not all((cache / name).is_file() for name in _MODEL_FILES):
        return None
    try:
        record = read_json(record_path)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or (fingerprint is not None and record.get("fingerprint") != fingerprint):
        return None
    return record


def _distill_to(cache: Path, base_path: str, settings: dict[str, Any], fingerprint: str, *,
                device: torch.device, progress: bool, num_threads: int | None) -> dict[str, Any]:
    """Distill the base model into ``cache``: staged beside it, then renamed into place."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    for leftover in cache.parent.glob(f".{cache.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)  # of a distillation killed half-way (io.atomic_dir's names)
    log.info("distilling a static text model from %s (pca_dims=%s); this runs once per base model",
             base_path, settings["pca_dims"])
    start = time.perf_counter()
    with atomic_dir(cache) as stage:
        with _torch_threads(num_threads):
            model = _distill(base_path, settings, device=device, progress=progress)
        seconds = time.perf_counter() - start
        model.save_pretrained(stage)
        for path in stage.rglob("*"):
            if path.is_file():
                os.chmod(path, 0o666 & ~umask())  # safetensors writes 0600 files
        record = {"fingerprint": fingerprint, "base_model": base_path, "settings": settings,
                  "dim": int(model.dim), "vocab_size": int(model.embedding.shape[0]),
                  "max_seq_length": read_model_info(base_path)["max_seq_length"],
                  "distill_seconds": round(seconds, 3), "device": str(device)}
        write_json(stage / RECORD, record)  # last: a folder without it is not a finished cache
    log.info("distilled %d token vectors of %d dimensions in %.1fs into %s", record["vocab_size"],
             record["dim"], seconds, cache)
    return record


def _distill(base_path: str, settings: dict[str, Any], *, device: torch.device, progress: bool) -> Any:
    """model2vec's ``distill_from_model`` on the locally loaded base model, never touching a hub."""
    from model2vec.distill import distillation, inference

    try:
        tokenizer, model = _load(base_path)
    except UserInputError as exc:  # its message names text.model; here the user set text.static.base
        raise UserInputError(str(exc.args[0] if exc.args else exc), config_key=BASE_KEY) from None
    model.name_or_path = base_path  # a path that exists: model2vec then skips its hub look-up
    try:
        with _quiet_tqdm(inference, progress):
            return distillation.distill_from_model(
                model=model, tokenizer=tokenizer, device=str(device), pca_dims=settings["pca_dims"],
                sif_coefficient=settings["sif_coefficient"], quantize_to=settings["quantize_to"],
                pooling=settings["pooling"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise UserInputError(f"cannot distill a static text model from '{base_path}': {exc}",
                             config_key=BASE_KEY) from exc


@contextlib.contextmanager
def _quiet_tqdm(module: Any, progress: bool) -> Iterator[None]:
    """model2vec's bar over the vocabulary follows gpuseg's ``progress`` setting (it has no switch)."""
    original = module.tqdm
    module.tqdm = lambda **kwargs: progress_bar(progress, **kwargs)
    try:
        yield
    finally:
        module.tqdm = original


def _unknown_id(tokenizer: Any) -> int | None:
    """Id of the tokenizer's unknown token (dropped from every text, as model2vec does)."""
    token = getattr(tokenizer.model, "unk_token", None)
    if token is not None:
        return tokenizer.token_to_id(token)
    import json

    return json.loads(tokenizer.to_str())["model"].get("unk_id")
