"""Kept for imports written before the helpers moved: see :mod:`gpuseg.runtime.distributed`."""

from gpuseg.runtime.distributed import (  # noqa: F401
    all_gather_rows,
    all_reduce_,
    broadcast_,
    broadcast_int,
    is_distributed,
    rank_and_world,
)
