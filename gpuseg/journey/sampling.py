"""Bounded, stratified customer samples for training the journey encoder.

Training cost grows with the customers trained on, while the encoder learns what it can from
far fewer than a large population holds; encoding everyone afterwards is a cheap streamed pass.
The sample is stratified so that it keeps the population's mix of journey lengths (and labels):
a plain random sample of a population with few long journeys can miss most of them.
"""

from __future__ import annotations

import numpy as np

from gpuseg.runtime.errors import ConfigError

#: label value of the customers whose label is unknown (NaN)
_NO_LABEL = 2


def length_bucket(n_events: np.ndarray) -> np.ndarray:
    """Log2 bucket of each event count: 0 for 0-1 events, 1 for 2-3, 2 for 4-7, ... (int64)."""
    n = np.maximum(np.asarray(n_events, dtype=np.int64), 1)
    return np.floor(np.log2(n)).astype(np.int64)


def journey_strata(n_events: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Stratum of each customer: length bucket x label (0, 1, unknown) when a label is given.

    Parameters
    ----------
    n_events : array of int, shape (n,)
        Events per customer (e.g. capped at ``max_len``: longer journeys are cut anyway).
    y : array of float, shape (n,), optional
        Binary label, NaN for unknown.

    Returns
    -------
    ndarray of int64, shape (n,)
        ``3 * bucket + label`` (label 2 = unknown) with a label, else the bucket.
    """
    bucket = length_bucket(n_events)
    if y is None:
        return bucket
    y = np.asarray(y, dtype=np.float64)
    label = np.where(np.isnan(y), _NO_LABEL, np.nan_to_num(y, nan=0.0)).astype(np.int64)
    return 3 * bucket + label


def stratified_sample(rows: np.ndarray, strata: np.ndarray, n: int | None, seed: int,
                      stream: int = 0) -> np.ndarray:
    """At most ``n`` of ``rows``, each stratum kept in proportion (largest remainders), sorted.

    Parameters
    ----------
    rows : array of int
        Candidate rows.
    strata : array of int, same length as ``rows``
        Stratum of each candidate.
    n : int or None
        Sample size; None, or ``n >= len(rows)``, keeps every row.
    seed : int
        Same seed (and ``stream``), same sample.
    stream : int
        Separates independent samples drawn with one seed (train, validation, test).

    Returns
    -------
    ndarray of int64
        The chosen rows, ascending.
    """
    rows = np.asarray(rows, dtype=np.int64)
    strata = np.asarray(strata, dtype=np.int64)
    if len(rows) != len(strata):
        raise ValueError(f"stratified_sample: {len(rows)} rows but {len(strata)} strata")
    if n is not None and (isinstance(n, bool) or int(n) < 1):
        raise ConfigError(f"journey.max_train_customers must be an int >= 1, auto or null; got {n!r}",
                          config_key="journey.max_train_customers")
    if n is None or int(n) >= len(rows):
        return np.sort(rows)
    n = int(n)
    values, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    quota = sizes * (n / len(rows))
    take = np.floor(quota).astype(np.int64)
    # largest remainders get the seats left; ties go to the smaller stratum value (deterministic)
    short = n - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    rng = np.random.default_rng([int(seed), 11, int(stream)])
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    chosen = [rows[order[bounds[k]:bounds[k + 1]]][rng.permutation(int(sizes[k]))[:int(take[k])]]
              for k in range(len(values))]
    return np.sort(np.concatenate(chosen))


def stratum_name(stratum: int, labelled: bool) -> str:
    """Readable name of a :func:`journey_strata` value, e.g. ``"4-7 events, label 1"``."""
    bucket, label = divmod(int(stratum), 3) if labelled else (int(stratum), None)
    low, high = (1, 1) if bucket == 0 else (2 ** bucket, 2 ** (bucket + 1) - 1)
    name = f"{low} event{'s' if high > 1 else ''}" if low == high else f"{low}-{high} events"
    if label is not None:
        name += ", label unknown" if label == _NO_LABEL else f", label {label}"
    return name


def stratum_counts(strata: np.ndarray, labelled: bool) -> dict[str, int]:
    """``{stratum name: count}`` (JSON-able), in stratum order, for logs and metrics."""
    values, counts = np.unique(np.asarray(strata, dtype=np.int64), return_counts=True)
    return {stratum_name(v, labelled): int(c) for v, c in zip(values, counts, strict=True)}
