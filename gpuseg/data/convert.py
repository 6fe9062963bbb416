"""Vectorised conversion of user columns to the canonical types, with row-level failure masks.

Each converter returns the converted array and a boolean mask of the rows it could not convert
(non-null input that did not parse), so validation can name the first offending rows instead of
surfacing an Arrow traceback.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.data.schema import TIMESTAMP
from gpuseg.runtime.errors import UserInputError

_TIMESTAMP_UNITS = ("s", "ms", "us", "ns")


def to_string(arr: pa.Array) -> tuple[pa.Array, int]:
    """Cast to UTF-8 strings; invalid UTF-8 bytes are replaced (U+FFFD) rather than failing.

    Returns
    -------
    (pyarrow.Array, int)
        The string array and the number of values whose bytes were repaired.
    """
    arr = _combine(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return arr.cast(pa.string()), 0
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        try:
            return arr.cast(pa.string()), 0
        except pa.ArrowInvalid:
            values = arr.to_pylist()
            repaired = 0
            out = []
            for v in values:
                if v is None:
                    out.append(None)
                    continue
                try:
                    out.append(v.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(v.decode("utf-8", errors="replace"))
                    repaired += 1
            return pa.array(out, pa.string()), repaired
    return arr.cast(pa.string()), 0


def to_customer_id(arr: pa.Array) -> pa.Array:
    """Normalise customer ids to trimmed strings; integral floats lose their ``.0``.

    pandas writes integer ids that have missing values as float64 (13085.0); without this the
    same customer would appear under two ids across tables.
    """
    arr = _combine(arr)
    if pa.types.is_floating(arr.type):
        values = arr.to_numpy(zero_copy_only=False)
        finite = np.isfinite(values)
        if np.all(np.floor(values[finite]) == values[finite]):
            ints = pa.array(np.where(finite, values, 0).astype(np.int64), mask=~finite)
            arr = pc.if_else(pc.is_valid(arr), ints, pa.nulls(len(arr), pa.int64()))
    strings, _ = to_string(arr)
    strings = pc.utf8_trim_whitespace(strings)
    # An empty or whitespace-only id is a missing id.
    return pc.if_else(pc.equal(strings, ""), pa.nulls(len(strings), pa.string()), strings)


def as_customer_ids(customer_ids) -> pa.Array:
    """A customer id list as a unique, non-null Arrow string array (what L1 functions take).

    Accepts Arrow (chunked, dictionary-encoded) arrays, numpy arrays and sequences.
    """
    if isinstance(customer_ids, pa.ChunkedArray):
        customer_ids = customer_ids.combine_chunks()
    if not isinstance(customer_ids, pa.Array):
        customer_ids = pa.array(list(customer_ids), type=pa.string())
    if pa.types.is_dictionary(customer_ids.type):
        customer_ids = customer_ids.dictionary_decode()
    customer_ids = customer_ids.cast(pa.string())
    if customer_ids.null_count:
        raise UserInputError("customer_ids holds null ids", table="customers", column="customer_id")
    if len(customer_ids) and pc.count_distinct(customer_ids).as_py() != len(customer_ids):
        raise UserInputError("customer_ids must be unique; found duplicated ids", table="customers",
                             column="customer_id")
    return customer_ids


def to_float(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Cast to float64. Returns the array and the mask of non-null values that did not parse."""
    arr = _combine(arr)
    if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_decimal(arr.type):
        return arr.cast(pa.float64()), np.zeros(len(arr), dtype=bool)
    if pa.types.is_boolean(arr.type):
        return arr.cast(pa.int8()).cast(pa.float64()), np.zeros(len(arr), dtype=bool)
    strings = pc.utf8_trim_whitespace(to_string(arr)[0])
    strings = pc.if_else(pc.equal(strings, ""), pa.nulls(len(strings), pa.string()), strings)
    try:
        return strings.cast(pa.float64()), np.zeros(len(arr), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Slow path, only for batches that hold bad values: parse one by one to find them.
    values, bad = [], np.zeros(len(arr), dtype=bool)
    for i, v in enumerate(strings.to_pylist()):
        if v is None:
            values.append(None)
            continue
        try:
            values.append(float(v))
        except ValueError:
            values.append(None)
            bad[i] = True
    return pa.array(values, pa.float64()), bad


def to_timestamp(arr: pa.Array, *, fmt: str | None = None, unit: str = "s") -> tuple[pa.Array, np.ndarray]:
    """Parse to naive UTC ``timestamp[us]``.

    Parameters
    ----------
    arr : pyarrow.Array
        Timestamps, dates, ISO-8601 strings (with or without a zone offset) or epoch numbers.
    fmt : str, optional
        strptime format for strings that are not ISO 8601.
    unit : {"s", "ms", "us", "ns"}
        Unit of numeric epoch values.

    Returns
    -------
    (pyarrow.Array, numpy.ndarray)
        The timestamps and the mask of non-null values that did not parse.
    """
    arr = _combine(arr)
    no_bad = np.zeros(len(arr), dtype=bool)
    if pa.types.is_timestamp(arr.type):
        if arr.type.tz is not None:
            arr = pc.cast(arr, pa.timestamp(arr.type.unit))  # drops the zone, keeps the UTC instant
        return arr.cast(TIMESTAMP), no_bad
    if pa.types.is_date(arr.type):
        return arr.cast(pa.timestamp("s")).cast(TIMESTAMP), no_bad
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        if unit not in _TIMESTAMP_UNITS:
            raise ValueError(f"timestamp unit must be one of {_TIMESTAMP_UNITS}, got {unit!r}")
        values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
        scale = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}[unit]
        finite = np.isfinite(values)
        micros = np.where(finite, values * scale, 0).astype(np.int64)
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        return pa.array(micros, TIMESTAMP, mask=~(finite & valid)), valid & ~finite
    strings = pc.utf8_trim_whitespace(to_string(arr)[0])
    strings = pc.if_else(pc.equal(strings, ""), pa.nulls(len(strings), pa.string()), strings)
    valid = pc.is_valid(strings).to_numpy(zero_copy_only=False)
    if fmt:
        parsed = pc.strptime(strings, format=fmt, unit="us", error_is_null=True)
        return parsed.cast(TIMESTAMP), valid & ~pc.is_valid(parsed).to_numpy(zero_copy_only=False)
    for target in (TIMESTAMP, pa.timestamp("us", tz="UTC")):
        try:
            return pc.cast(strings.cast(target), TIMESTAMP), no_bad
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    # Mixed or bad values: parse one by one (naive first, then with a zone offset).
    out, bad = [], np.zeros(len(arr), dtype=bool)
    naive_type, aware_type = TIMESTAMP, pa.timestamp("us", tz="UTC")
    for i, v in enumerate(strings.to_pylist()):
        if v is None:
            out.append(None)
            continue
        parsed = None
        for target in (naive_type, aware_type):
            try:
                parsed = pa.scalar(v).cast(target).value
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        bad[i] = parsed is None
        out.append(parsed)
    return pa.array(out, pa.int64()).cast(TIMESTAMP), bad


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of a 64-bit value (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(27))
        h = h * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def hash_column(arr: pa.Array) -> np.ndarray:
    """64-bit hash of every value of a column (nulls hash to a fixed constant), vectorised.

    Strings are hashed with a polynomial over their bytes computed with ``np.add.reduceat``, so no
    Python loop runs per value.
    """
    arr = _combine(arr)
    n = len(arr)
    null = ~pc.is_valid(arr).to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(n, bool)
    if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        arr = arr.cast(pa.binary())
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
        start, end = int(offsets[0]), int(offsets[-1])
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[start:end] if end > start else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        h = np.zeros(n, dtype=np.uint64)
        if data.size:
            seg_start = (offsets[:-1] - start).astype(np.int64)
            pos = np.arange(data.size, dtype=np.int64) - np.repeat(seg_start, lengths)
            with np.errstate(over="ignore"):
                powers = np.cumprod(np.full(int(lengths.max()), 1099511628211, dtype=np.uint64))
                weighted = (data.astype(np.uint64) + np.uint64(1)) * powers[pos]
            nonempty = lengths > 0
            sums = np.add.reduceat(weighted, seg_start[nonempty])
            h[nonempty] = sums
        h = _mix64(h ^ lengths.astype(np.uint64))
    else:
        values = arr.to_numpy(zero_copy_only=False)
        if values.dtype.kind == "f":
            values = np.where(np.isnan(values), 0.0, values).astype(np.float64)
        elif values.dtype.kind == "M":
            values = values.astype("datetime64[us]").astype(np.int64)
        h = _mix64(np.ascontiguousarray(values).view(np.uint64) if values.dtype.itemsize == 8
                   else values.astype(np.int64).view(np.uint64))
    h[null] = np.uint64(0x9E3779B97F4A7C15)
    return h


def hash_rows(columns: list[pa.Array]) -> np.ndarray:
    """Combine column hashes into one 64-bit hash per row (order of columns matters)."""
    h = np.zeros(len(columns[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in columns:
            h = _mix64(h * np.uint64(31) + hash_column(col))
    return h


def _combine(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr
