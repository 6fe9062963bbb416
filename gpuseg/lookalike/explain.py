"""Why a lookalike audience looks like its seeds, in the profile's units.

Every feature is read as a z-score against the whole base, ``z = (x - mean_base) / std_base``,
the unit :func:`gpuseg.profile.lifts.segment_lifts` gives segment lifts in (numeric features plus
0/1 indicators of the frequent categorical values). Two explanations come out:

- per audience, :func:`seed_profile`: the seeds' mean z-score per feature, sorted by its absolute
  size: what sets the seeds apart from the base;
- per member, :func:`why_similar`: among the features that set the seeds apart (``|seed z| >=
  min_abs_z``), those where the member's z-score is closest to the seeds' (smallest
  ``|z_member - z_seeds|``), with the signed gap.

A feature with zero spread over the base (or no value at all) has no z-score: it is skipped and
named in the notes, never silently read as 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.profile.lifts import categorical_indicators, segment_lifts
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.validation import check_int, check_real

log = logging.getLogger(__name__)

#: one entry of a member's ``why_similar`` list
WHY_TYPE = pa.list_(pa.struct([("feature", pa.string()), ("z", pa.float64()), ("gap", pa.float64())]))
#: members explained per block (bounds the members x features matrices)
_BLOCK = 65536


@dataclass
class SeedProfile:
    """The seeds of one audience against the base, one entry per feature with a z-score.

    Attributes
    ----------
    features : list of str
        Features sorted by decreasing ``|seed_z|``.
    seed_z, seed_mean, base_mean, base_std : ndarray
        Aligned with ``features``.
    n_seeds : int
        Seeds found in the features table.
    no_spread : list of str
        Features with zero spread over the base (no z-score: skipped); a property of the base,
        the same for every audience.
    notes : list of str
        What else was skipped and why (no value for the seeds, seeds missing from the table).
    """

    features: list[str]
    seed_z: np.ndarray
    seed_mean: np.ndarray
    base_mean: np.ndarray
    base_std: np.ndarray
    n_seeds: int
    no_spread: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def top(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` features that set the seeds apart most, as JSON-ready dicts."""
        return [{"feature": f, "seed_z": round(float(z), 4), "seed_mean": float(m), "base_mean": float(bm),
                 "base_std": float(bs)}
                for f, z, m, bm, bs in zip(self.features[:n], self.seed_z[:n], self.seed_mean[:n],
                                           self.base_mean[:n], self.base_std[:n], strict=True)]


def explainable_features(features: pa.Table) -> pa.Table:
    """The features table with the profile's categorical indicators appended (``"<column>=<value>"``).

    Parameters
    ----------
    features : pyarrow.Table
        ``features/features.parquet``: ``customer_id`` and one column per feature.
    """
    if "customer_id" not in features.column_names:
        raise UserInputError(f"the features table has no customer_id column (columns: {features.column_names})",
                             table="features", column="customer_id")
    out = features
    indicators = categorical_indicators(features)
    for name in indicators.column_names:
        out = out.append_column(name, indicators[name])
    return out


def _rows_of(table: pa.Table, ids: Any) -> np.ndarray:
    """Row of each id in ``table`` (-1 where absent)."""
    index = pc.index_in(pa.array(list(ids), pa.string()), value_set=table["customer_id"].cast(pa.string()))
    return np.asarray(index.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def seed_profile(features: pa.Table, seed_ids: Any) -> SeedProfile:
    """The seeds' mean z-score against the base per feature (the profile's lift of the seeds).

    Parameters
    ----------
    features : pyarrow.Table
        From :func:`explainable_features`: one row per base customer.
    seed_ids : sequence of str
        The seeds; ids absent from ``features`` are left out (and noted).

    Returns
    -------
    SeedProfile
        Features with a defined z-score, sorted by decreasing ``|seed_z|``.
    """
    rows = _rows_of(features, seed_ids)
    notes = []
    if (rows < 0).any():
        notes.append(f"{int((rows < 0).sum())} of {len(rows)} seeds are not in the features table: "
                     "the seed profile uses the others")
    rows = rows[rows >= 0]
    if len(rows) == 0:
        raise UserInputError("none of the seeds is in the features table: re-run `gpuseg features` on the data "
                             "the index was built from", table="features")
    label = np.zeros(features.num_rows, dtype=np.int64)
    label[rows] = 1
    lifts = segment_lifts(features, label, n_segments=2)
    lifts = lifts.filter(pc.equal(lifts["segment"], 1)).to_pydict()
    keep, no_spread, undefined = [], [], []
    for i, (name, std, z) in enumerate(zip(lifts["feature"], lifts["population_std"], lifts["lift_z"], strict=True)):
        if not np.isfinite(std):
            undefined.append(name)
        elif std == 0:
            no_spread.append(name)
        elif not np.isfinite(z):
            undefined.append(name)
        else:
            keep.append(i)
    if undefined:
        notes.append(f"{len(undefined)} feature(s) have no value for the seeds or the base: skipped "
                     f"({', '.join(undefined)})")
    pick = np.asarray(keep, dtype=np.int64)

    def col(name: str) -> np.ndarray:
        return np.asarray(lifts[name], dtype=np.float64)[pick] if len(pick) else np.empty(0)

    z = col("lift_z")
    order = np.argsort(-np.abs(z), kind="stable")  # lifts come sorted by |z| already; keep it explicit
    return SeedProfile([lifts["feature"][i] for i in pick[order]], z[order], col("mean")[order],
                       col("population_mean")[order], col("population_std")[order], int(len(rows)), no_spread,
                       notes)


def why_similar(features: pa.Table, member_ids: Any, profile: SeedProfile, *, top_n: int = 5,
                min_abs_z: float = 0.5) -> tuple[pa.Array, list[str]]:
    """Per member, the features where it is closest to the seeds, among those that set the seeds apart.

    Parameters
    ----------
    features : pyarrow.Table
        From :func:`explainable_features` (the table ``profile`` was made from).
    member_ids : sequence of str
        The audience, in its order.
    profile : SeedProfile
        The audience's :func:`seed_profile`.
    top_n : int, default=5
        Features listed per member (fewer where a member has no value for some).
    min_abs_z : float, default=0.5
        Only features where the seeds' mean z-score is at least this far from 0 are candidates;
        when none is, every feature with a z-score is (and a note says so).

    Returns
    -------
    why : pyarrow.ListArray
        :data:`WHY_TYPE`, one list per member, closest first: ``feature``, the member's ``z`` and
        ``gap`` = ``z - seed_z``.
    notes : list of str
        Degenerate cases met (no distinctive feature, members missing from the features table).
    """
    check_int("why_similar", "top_n", top_n, low=1)
    check_real("why_similar", "min_abs_z", min_abs_z, low=0.0)
    notes: list[str] = []
    cand = np.flatnonzero(np.abs(profile.seed_z) >= min_abs_z)
    if len(cand) == 0 and len(profile.features):
        notes.append(f"no feature sets the seeds apart from the base by {min_abs_z} sd or more (the largest is "
                     f"{profile.features[0]} at {profile.seed_z[0]:+.2f}): why_similar is read over every feature")
        cand = np.arange(len(profile.features))
    names = np.asarray([profile.features[i] for i in cand], dtype=object)
    mean, std, seed_z = profile.base_mean[cand], profile.base_std[cand], profile.seed_z[cand]
    rows = _rows_of(features, member_ids)
    if (rows < 0).any():
        notes.append(f"{int((rows < 0).sum())} audience member(s) are not in the features table: "
                     "their why_similar is empty")
    cols = [features[str(n)].to_numpy(zero_copy_only=False).astype(np.float64) for n in names]
    X = np.stack(cols, 1) if cols else np.empty((features.num_rows, 0))
    k = min(top_n, len(cand))
    counts, feats, zs, gaps = [], [], [], []
    for start in range(0, len(rows), _BLOCK):
        r = rows[start:start + _BLOCK]
        x = np.where((r >= 0)[:, None], X[np.clip(r, 0, None)], np.nan)
        z = (x - mean) / std
        gap = z - seed_z
        dist = np.where(np.isfinite(gap), np.abs(gap), np.inf)
        # closest first; ties keep the more distinctive feature (candidates are sorted by |seed z|)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        ok = np.isfinite(np.take_along_axis(dist, order, 1))
        counts.append(ok.sum(1))
        feats.append(names[order][ok])
        zs.append(np.take_along_axis(z, order, 1)[ok])
        gaps.append(np.take_along_axis(gap, order, 1)[ok])
    if not rows.size:
        return pa.array([], WHY_TYPE), notes
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int32)
    values = pa.StructArray.from_arrays(
        [pa.array(np.concatenate(feats).tolist(), pa.string()), pa.array(np.concatenate(zs), pa.float64()),
         pa.array(np.concatenate(gaps), pa.float64())], fields=list(WHY_TYPE.value_type))
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=WHY_TYPE), notes


def seeds_identical(vectors: Any) -> bool:
    """Whether two or more seed vectors (rows of ``vectors``, one per distinct seed) are all the
    same vector (the audience is then the nearest neighbours of one point, whatever the mode)."""
    V = np.asarray(vectors, dtype=np.float64)
    if len(V) < 2:
        return False
    return bool(np.all(V == V[0]))
