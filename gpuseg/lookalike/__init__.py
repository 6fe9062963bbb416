"""Lookalike expansion: a nearest-neighbour index over customer vectors and seed expansion."""

from gpuseg.lookalike.expand import MODES, expand_rows, reach_curve
from gpuseg.lookalike.index import (
           BACKENDS,
           DEFAULTS,
           METRICS,
           LookalikeIndex,
           faiss_has_gpu,
           torch_knn,
)
from gpuseg.lookalike.sharded import ShardedIndex

__all__ = ["BACKENDS", "DEFAULTS", "METRICS", "MODES", "LookalikeIndex", "ShardedIndex", "expand_rows", "faiss_has_gpu",
           "reach_curve", "torch_knn"]
