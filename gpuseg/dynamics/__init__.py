"""Segments over time: streaming re-assignment with hysteresis, transitions, movers and drift."""

from gpuseg.dynamics.assign import (
    AssignResult,
    as_of_folder,
    assign_stream,
    flip_flops,
    top_moves,
    transitions,
)
from gpuseg.dynamics.drift import psi, psi_table, quantile_edges
from gpuseg.dynamics.ledger import Ledger

__all__ = ["AssignResult", "Ledger", "as_of_folder", "assign_stream", "flip_flops", "psi", "psi_table",
           "quantile_edges", "top_moves", "transitions"]
