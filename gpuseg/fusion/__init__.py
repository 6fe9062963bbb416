"""Fusion of per-customer blocks (tabular, text, journey) into one matrix."""

from gpuseg.fusion.fuse import BlockFuser, block_from_table

__all__ = ["BlockFuser", "block_from_table"]
