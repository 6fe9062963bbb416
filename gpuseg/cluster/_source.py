"""Data sources: whatever the user passes, seen as float32 chunks on the compute device.

Three kinds, chosen by :func:`make_source`:

- resident: one float32 tensor already on the device (numpy in RAM on CPU is wrapped without a
  copy when it is C-contiguous float32; on CUDA an array is uploaded whole only if it fits);
- sliced: a numpy array / ``np.memmap`` / tensor elsewhere, read in row blocks and moved to the
  device block by block (on CUDA through two pinned host buffers and a copy stream, so the
  next block's transfer overlaps the current block's GEMM);
- iterable: an iterable of batches or a callable returning a fresh iterator of batches (the
  callable form allows several passes, which ``fit`` needs).

Every source checks that rows are finite (on the first pass for arrays, on every pass for
iterators, whose content may change) and reports the first offending row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from gpuseg.cluster._validation import InputDataError

log = logging.getLogger(__name__)

# An array is uploaded whole to the GPU only if it takes at most this share of free memory.
_RESIDENT_SHARE = 0.5


def _to_numpy_2d(X, name: str) -> np.ndarray:
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"Input {name} cannot be read as a numeric array: {exc}") from exc
    _check_2d(arr.ndim, name)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputDataError(f"Input {name} must be numeric, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise InputDataError(f"Input {name} must be real, got complex dtype {arr.dtype}.")
    return arr


def _check_2d(ndim: int, name: str) -> None:
    if ndim != 2:
        raise InputDataError(
            f"Expected 2D array, got {ndim}D array instead (input {name}). Reshape your data either "
            "using array.reshape(-1, 1) if your data has a single feature or array.reshape(1, -1) "
            "if it contains a single sample."
        )


def check_finite(x: torch.Tensor | np.ndarray, offset: int, name: str) -> None:
    """Raise naming the first row (global index ``offset + i``) holding NaN or infinity."""
    if isinstance(x, torch.Tensor) and x.device.type == "cpu":
        x = x.numpy()  # numpy's isfinite is several times faster than torch's on CPU
    if isinstance(x, np.ndarray):
        if np.isfinite(x).all():
            return
        bad_rows = ~np.isfinite(x).all(axis=1)
        row = int(np.flatnonzero(bad_rows)[0])
        has_nan = bool(np.isnan(x[row]).any())
    else:
        if bool(torch.isfinite(x).all()):
            return
        row = int(torch.nonzero(~torch.isfinite(x).all(dim=1))[0, 0])
        has_nan = bool(torch.isnan(x[row]).any())
    what = "NaN" if has_nan else "infinity or a value too large for dtype('float32')"
    raise InputDataError(f"Input {name} contains {what} (first at row {offset + row}).")


class Source:
    """Base class; see the module docstring."""

    name: str = "X"
    n_samples: int | None = None
    n_features: int | None = None
    multi_pass: bool = True
    resident: torch.Tensor | None = None

    def __init__(self, device: torch.device, name: str):
        self.device = device
        self.name = name

    def chunks(self, rows: int, rng: np.random.Generator | None = None) -> Iterator[torch.Tensor]:
        """Yield float32 ``(m, d)`` chunks on the device, ``m <= rows``; shuffled when ``rng``."""
        raise NotImplementedError

    def sample(self, m: int, rng: np.random.Generator) -> torch.Tensor:
        """Up to ``m`` distinct rows drawn uniformly, on the device (sets ``n_samples``)."""
        raise NotImplementedError

    def _set_features(self, d: int, where: str) -> None:
        if self.n_features is None:
            self.n_features = int(d)
        elif d != self.n_features:
            raise InputDataError(
                f"Input {self.name}: {where} has {d} features, but earlier batches had "
                f"{self.n_features}; every batch must have the same number of columns."
            )


class ResidentSource(Source):
    """The whole data as one float32 tensor on the device."""

    def __init__(self, x: torch.Tensor, device: torch.device, name: str, checked: bool = False):
        super().__init__(device, name)
        _check_2d(x.ndim, name)
        self.resident = x
        self.n_samples, self.n_features = int(x.shape[0]), int(x.shape[1])
        if self.n_samples == 0:
            raise InputDataError(_empty_message(name, tuple(x.shape)))
        self._sqnorm: torch.Tensor | None = None
        if not checked:
            check_finite(x, 0, name)

    def sqnorm(self) -> torch.Tensor:
        """Cached ``||x||^2`` of every row (``N`` floats), reused by every Lloyd pass."""
        if self._sqnorm is None:
            from gpuseg.cluster._assign import row_sqnorm

            self._sqnorm = row_sqnorm(self.resident)
        return self._sqnorm

    def chunks(self, rows, rng=None):
        x = self.resident
        n = x.shape[0]
        if rng is None:
            for i in range(0, n, rows):
                yield x[i : i + rows]
            return
        perm = torch.from_numpy(rng.permutation(n)).to(self.device)
        for i in range(0, n, rows):
            yield x.index_select(0, perm[i : i + rows])

    def sample(self, m, rng):
        n = self.n_samples
        if m >= n:
            return self.resident
        idx = np.sort(rng.choice(n, size=m, replace=False))
        return self.resident.index_select(0, torch.from_numpy(idx).to(self.device))


class SlicedSource(Source):
    """An array or tensor read block by block (out-of-core for ``np.memmap``)."""

    def __init__(self, data, device: torch.device, name: str):
        super().__init__(device, name)
        self.data = data
        self.n_samples, self.n_features = int(data.shape[0]), int(data.shape[1])
        self._checked = False

    def _block(self, i: int, j: int):
        block = self.data[i:j]
        if isinstance(block, torch.Tensor):
            return block.to(self.device, dtype=torch.float32)
        return block

    def chunks(self, rows, rng=None):
        n = self.n_samples
        starts = np.arange(0, n, rows)
        if rng is not None:
            starts = rng.permutation(starts)
        check = not self._checked
        if isinstance(self.data, np.ndarray) and self.device.type == "cuda":
            blocks = ((int(s), self.data[s : s + rows]) for s in starts)
            yield from _pinned_upload(blocks, self.device, self.name, check, rng)
        else:
            for s in starts:
                s = int(s)
                block = self._block(s, s + rows)
                if isinstance(block, np.ndarray):
                    # a copy: memmap slices are read-only, and the read happens here anyway
                    block = torch.from_numpy(np.array(block, dtype=np.float32))
                    block = block.to(self.device)
                if check:
                    check_finite(block, s, self.name)
                if rng is not None:
                    block = block.index_select(
                        0, torch.from_numpy(rng.permutation(block.shape[0])).to(self.device)
                    )
                yield block
        if rng is None or check:
            self._checked = True

    def sample(self, m, rng):
        n = self.n_samples
        idx = np.arange(n) if m >= n else np.sort(rng.choice(n, size=m, replace=False))
        if isinstance(self.data, torch.Tensor):
            rows = self.data.index_select(0, torch.from_numpy(idx).to(self.data.device))
            rows = rows.to(self.device, dtype=torch.float32)
        else:
            rows = torch.from_numpy(np.ascontiguousarray(self.data[idx], dtype=np.float32))
            rows = rows.to(self.device)
        if not self._checked and not bool(torch.isfinite(rows).all()):
            for _ in self.chunks(max(1, min(n, 65536))):  # a checking pass names the first bad row
                pass
        return rows


class PinnedUploader:
    """Move numpy blocks to the GPU through two pinned buffers and a side copy stream.

    The host copy (and dtype conversion) of block ``i + 1`` happens while the GPU still works
    on block ``i``: the consumer only queues kernels, and the host-to-device copy runs on
    ``copy_stream``. A buffer is refilled only after the event of its previous copy fired.
    """

    def __init__(self, device: torch.device, name: str):
        self.device = device
        self.name = name
        self.copy_stream = torch.cuda.Stream(device)
        self.bufs: list[torch.Tensor | None] = [None, None]
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.i = 0

    def __call__(self, block: np.ndarray, start: int, check: bool) -> torch.Tensor:
        j = self.i % 2
        self.i += 1
        if self.events[j] is not None:
            self.events[j].synchronize()
        m, d = block.shape
        buf = self.bufs[j]
        if buf is None or buf.shape[0] < m or buf.shape[1] != d:
            buf = self.bufs[j] = torch.empty((m, d), dtype=torch.float32, pin_memory=True)
        host = buf[:m]
        np.copyto(host.numpy(), block, casting="unsafe")
        if check:
            check_finite(host.numpy(), start, self.name)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        self.events[j] = event
        compute.wait_event(event)
        dev.record_stream(compute)  # allocated on copy_stream, consumed on the compute stream
        return dev


def _pinned_upload(blocks, device, name, check, rng):
    """Yield device tensors for ``(start, numpy block)`` pairs (shuffled rows when ``rng``)."""
    upload = PinnedUploader(device, name)
    for start, block in blocks:
        dev = upload(block, start, check)
        if rng is not None:
            dev = dev.index_select(0, torch.from_numpy(rng.permutation(dev.shape[0])).to(device))
        yield dev


class IterableSource(Source):
    """Batches from an iterable, or from a callable that returns a fresh iterator per pass."""

    def __init__(self, factory: Callable[[], Iterable], device: torch.device, name: str,
                 multi_pass: bool):
        super().__init__(device, name)
        self.factory = factory
        self.multi_pass = multi_pass
        self._passes = 0

    def _batches(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self._passes and not self.multi_pass:
            raise InputDataError(
                f"Input {self.name} is a one-shot iterator but this operation needs several "
                "passes over the data; pass a callable that returns a fresh iterator instead "
                "(e.g. lambda: iter_batches(path))."
            )
        self._passes += 1
        offset = 0
        upload = PinnedUploader(self.device, self.name) if self.device.type == "cuda" else None
        for b, batch in enumerate(self.factory()):
            if isinstance(batch, torch.Tensor):
                _check_2d(batch.ndim, f"{self.name} (batch {b})")
                self._set_features(batch.shape[1], f"batch {b}")
                t = batch.to(self.device, dtype=torch.float32)
                check_finite(t, offset, self.name)
            else:
                arr = _to_numpy_2d(batch, f"{self.name} (batch {b})")
                self._set_features(arr.shape[1], f"batch {b}")
                if upload is not None:  # checked on the host, while the GPU works
                    t = upload(arr, offset, True)
                else:
                    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
                    check_finite(t, offset, self.name)
            yield offset, t
            offset += t.shape[0]
        if self.n_samples is None:
            self.n_samples = offset
        if offset == 0:
            raise InputDataError(
                f"Input {self.name} is empty: the iterator yielded no rows "
                "(Found array with 0 sample(s) while a minimum of 1 is required)."
            )

    def chunks(self, rows, rng=None):
        for _, t in self._batches():
            for i in range(0, t.shape[0], rows):
                part = t[i : i + rows]
                if rng is not None:
                    perm = torch.from_numpy(rng.permutation(part.shape[0])).to(self.device)
                    part = part.index_select(0, perm)
                yield part

    def sample(self, m, rng):
        # one pass of reservoir sampling: keep the m rows with the smallest random keys
        keys = torch.empty(0, dtype=torch.float64)
        rows = None
        for _, t in self._batches():
            k = torch.from_numpy(rng.random(t.shape[0]))
            keys = torch.cat([keys, k])
            rows = t if rows is None else torch.cat([rows, t])
            if keys.shape[0] > m:
                keep = torch.topk(keys, m, largest=False).indices.sort().values
                keys = keys[keep]
                rows = rows.index_select(0, keep.to(rows.device))
        return rows


def make_source(X, device: torch.device, *, name: str = "X") -> Source:
    """Wrap ``X`` (array, tensor, memmap, iterable or callable of batches) as a :class:`Source`.

    A :class:`Source` is used as it is (a caller's own reader, e.g. ``gpuseg segment``'s file rows).
    """
    if isinstance(X, Source):
        return X
    if isinstance(X, torch.Tensor):
        _check_2d(X.ndim, name)
        if X.is_complex() or not (X.is_floating_point() or X.dtype in _INT_DTYPES):
            raise InputDataError(f"Input {name} must be a real numeric tensor, got {X.dtype}.")
        if X.device == device or device.type == "cpu":
            return ResidentSource(X.to(device, dtype=torch.float32), device, name)
        if _fits_on(device, X.shape):
            return ResidentSource(X.to(device, dtype=torch.float32), device, name)
        if X.device.type == "cpu" and X.dtype in (torch.float16, torch.float32, torch.float64):
            return SlicedSource(X.numpy(), device, name)  # numpy view: pinned-buffer streaming
        return SlicedSource(X, device, name)
    if callable(X) and not hasattr(X, "__array__"):
        return IterableSource(X, device, name, multi_pass=True)
    if _is_batch_iterable(X):
        one_shot = iter(X) is X
        return IterableSource((lambda: X) if one_shot else (lambda: iter(X)), device, name,
                              multi_pass=not one_shot)
    if isinstance(X, np.memmap):
        _check_2d(X.ndim, name)
        if X.shape[0] == 0:
            raise InputDataError(_empty_message(name, X.shape))
        return SlicedSource(X, device, name)
    arr = _to_numpy_2d(X, name)
    if arr.shape[0] == 0:
        raise InputDataError(_empty_message(name, arr.shape))
    if device.type == "cpu" or _fits_on(device, arr.shape):
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
        return ResidentSource(t, device, name)
    return SlicedSource(arr, device, name)


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


def _empty_message(name: str, shape) -> str:
    return (f"Found array with 0 sample(s) (shape={tuple(shape)}) while a minimum of 1 is "
            f"required (input {name}).")


def _is_batch_iterable(X) -> bool:
    if isinstance(X, (np.ndarray, torch.Tensor, str, bytes, dict)) or hasattr(X, "__array__"):
        return False
    if isinstance(X, (list, tuple)):
        # a list of 2D arrays/tensors is a list of batches; a list of rows is an array
        return len(X) > 0 and all(getattr(b, "ndim", 0) == 2 for b in X)
    return hasattr(X, "__iter__")


def _fits_on(device: torch.device, shape) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return 4 * int(np.prod(shape)) <= _RESIDENT_SHARE * free
