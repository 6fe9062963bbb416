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

#: units of numeric epoch timestamps (``timestamp_unit``)
TIMESTAMP_UNITS = ("s", "ms", "us", "ns")
_MICROS_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}

# Integers in this range read as YYYYMMDD dates (20110901); as epoch numbers they would all fall
# within a few days of 1970, which real data never does.
_YYYYMMDD = (19000101, 21001231)
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


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
        values = customer_ids.tolist() if isinstance(customer_ids, np.ndarray) else list(customer_ids)
        try:
            customer_ids = pa.array(values)  # ints, strings, ...: the type is inferred, then cast
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            customer_ids = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if pa.types.is_dictionary(customer_ids.type):
        customer_ids = customer_ids.dictionary_decode()
    if pa.types.is_floating(customer_ids.type):
        customer_ids = to_customer_id(customer_ids)  # 42.0 is customer "42", as in validation
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
        Timestamps, dates, ISO-8601 strings (with or without a zone offset), epoch numbers, or
        epoch numbers as text (as CSV files hold them).
    fmt : str, optional
        strptime format for values that are not ISO 8601 or epoch numbers; numbers are formatted
        as integers first, so ``"%Y%m%d"`` reads both ``20110901`` and ``"20110901"``.
    unit : {"s", "ms", "us", "ns"}
        Unit of numeric epoch values.

    Returns
    -------
    (pyarrow.Array, numpy.ndarray)
        The timestamps and the mask of non-null values that did not parse.

    Raises
    ------
    UserInputError
        When, with no ``fmt``, every number looks like a YYYYMMDD date (19000101 to 21001231):
        read as epoch numbers they would all land in 1970, so the format is asked for instead.
    """
    arr = _combine(arr)
    if unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp unit must be one of {TIMESTAMP_UNITS}, got {unit!r}")
    if pa.types.is_timestamp(arr.type):
        if arr.type.tz is not None:
            arr = pc.cast(arr, pa.timestamp(arr.type.unit))  # drops the zone, keeps the UTC instant
        return arr.cast(TIMESTAMP), np.zeros(len(arr), dtype=bool)
    if pa.types.is_date(arr.type):
        return arr.cast(pa.timestamp("s")).cast(TIMESTAMP), np.zeros(len(arr), dtype=bool)
    if _is_number(arr.type):
        return _strptime(_integer_text(arr), fmt) if fmt else _from_epoch(arr, unit)
    strings = pc.utf8_trim_whitespace(to_string(arr)[0])
    strings = pc.if_else(pc.equal(strings, ""), pa.nulls(len(strings), pa.string()), strings)
    if fmt:
        return _strptime(strings, fmt)
    numbers = _numeric_text(strings)
    if numbers is not None:
        return _from_epoch(numbers, unit)
    return _parse_iso(strings)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _strptime(strings: pa.Array, fmt: str) -> tuple[pa.Array, np.ndarray]:
    valid = pc.is_valid(strings).to_numpy(zero_copy_only=False)
    parsed = pc.strptime(strings, format=fmt, unit="us", error_is_null=True)
    return parsed.cast(TIMESTAMP), valid & ~pc.is_valid(parsed).to_numpy(zero_copy_only=False)


def _integer_text(arr: pa.Array) -> pa.Array:
    """Numbers as text for strptime; integral floats (20110901.0, as pandas writes) lose their ``.0``."""
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.string())
    values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    finite = np.isfinite(values)
    if np.all(np.floor(values[finite]) == values[finite]):
        ints = pa.array(np.where(finite, values, 0).astype(np.int64), mask=~finite)
        return pc.if_else(pc.is_valid(arr), ints, pa.nulls(len(arr), pa.int64())).cast(pa.string())
    return arr.cast(pa.string())


def _numeric_text(strings: pa.Array) -> pa.Array | None:
    """The strings as integers (exact) or floats when every non-null one is a number, else None."""
    head = strings.drop_null().slice(0, 64)
    # a failed cast costs as much as a full parse: only try when the first values are numbers
    if not len(head) or not pc.all(pc.match_substring_regex(head, _NUMBER)).as_py():
        return None
    for target in (pa.int64(), pa.float64()):
        try:
            return strings.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


def _from_epoch(arr: pa.Array, unit: str) -> tuple[pa.Array, np.ndarray]:
    """Epoch numbers in ``unit`` to timestamps; integers stay exact, floats are scaled."""
    _refuse_yyyymmdd(arr)
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(arr.type):
        values = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        if unit == "ns":
            micros = values // 1000
        else:
            scale = _MICROS_PER_UNIT[unit]
            ok = np.abs(values) <= np.iinfo(np.int64).max // scale
            micros = np.where(ok, values, 0) * scale
            return pa.array(micros, TIMESTAMP, mask=~(valid & ok)), valid & ~ok
        return pa.array(micros, TIMESTAMP, mask=~valid), np.zeros(len(arr), dtype=bool)
    values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    scale = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}[unit]
    finite = np.isfinite(values)
    micros = np.where(finite, values * scale, 0).astype(np.int64)
    return pa.array(micros, TIMESTAMP, mask=~(finite & valid)), valid & ~finite


def _refuse_yyyymmdd(arr: pa.Array) -> None:
    values = pc.cast(arr, pa.float64(), safe=False).drop_null().to_numpy(zero_copy_only=False)
    if not len(values):
        return
    lo, hi = _YYYYMMDD
    if np.all((values >= lo) & (values <= hi) & (np.floor(values) == values)):
        example = int(values[0])
        raise UserInputError(
            f"the timestamps are numbers that look like YYYYMMDD dates (e.g. {example}); read as epoch "
            f"numbers they would all fall in 1970. Set timestamp_format: '%Y%m%d' to read them as dates")


def _parse_iso(strings: pa.Array) -> tuple[pa.Array, np.ndarray]:
    for target in (TIMESTAMP, pa.timestamp("us", tz="UTC")):
        try:
            return pc.cast(strings.cast(target), TIMESTAMP), np.zeros(len(strings), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    # Mixed or bad values: parse one by one (naive first, then with a zone offset).
    out, bad = [], np.zeros(len(strings), dtype=bool)
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
