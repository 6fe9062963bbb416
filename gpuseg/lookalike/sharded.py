"""``ShardedIndex``: lookalike expansion over a base split by rows across torchrun's ranks.

Each rank builds a :class:`~gpuseg.lookalike.LookalikeIndex` over its own rows of the whole base
(:func:`gpuseg.runtime.distributed.shard_bounds`) and keeps only the ids of the others, so the
vectors (and an approximate backend's structures) are split between the ranks' memories. Every
rank asks the same expansion; each scores its shard and the kept customers are gathered and
merged by score, ties by row, so every rank gets the audience one process over the whole base
gives (identical for the exact backend and ``candidates="all"``). Seed vectors travel from
the rank that holds them to all the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from gpuseg.lookalike.expand import Shard, _seed_vectors, expand_rows
from gpuseg.lookalike.index import LookalikeIndex, SeedExpansion
from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.validation import InputDataError


class ShardedIndex(SeedExpansion):
    """One rank's shard of a lookalike base, answering expansions for the whole base.

    Parameters
    ----------
    local : LookalikeIndex
        Built over this rank's rows ``[offset, offset + local.ntotal)`` of the whole base.
    ids : array-like of str
        Customer ids of the whole base, in row order (the shard's must be its slice of them).
    offset : int
        Row of the whole base that the local index's row 0 is.

    Notes
    -----
    Every method that scores (:meth:`expand`, :meth:`vectors_of`) is a collective: every rank
    calls it, with the same arguments, in the same order.
    """

    def __init__(self, local: LookalikeIndex, ids: Any, offset: int):
        local._check_built()
        self.local = local
        self.ids_ = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
        self.offset = int(offset)
        n = local.ntotal
        if self.offset < 0 or self.offset + n > len(self.ids_):
            raise InputDataError(f"ShardedIndex: a shard of {n} rows at offset {self.offset} does not fit a base "
                                 f"of {len(self.ids_)} ids")
        if not self.ids_.slice(self.offset, n).equals(local.ids_.cast(self.ids_.type)):
            raise InputDataError(f"ShardedIndex: the shard's ids are not rows {self.offset}..{self.offset + n} "
                                 "of the base's ids")
        world = ddp.rank_and_world()[1]
        self.metric, self.backend = local.metric, local.backend
        self.backend_used_ = f"{local.backend_used_}, one shard of {n} rows on each of {world} ranks"
        self._shard = Shard(self.offset, len(self.ids_), self.ids_)

    def _check_built(self) -> None:
        """Built at construction."""

    @property
    def ntotal(self) -> int:
        """Customers of the whole base."""
        return len(self.ids_)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of rows of the whole base, from whichever rank holds them (a collective)."""
        return _seed_vectors(self.local, np.asarray(rows, dtype=np.int64), self._shard)

    def _expand_rows(self, seed_rows: dict[Any, np.ndarray], exclude_rows: np.ndarray | None,
                     **kwargs: Any) -> dict[Any, pa.Table]:
        return expand_rows(self.local, seed_rows, exclude_rows=exclude_rows, shard=self._shard, **kwargs)
