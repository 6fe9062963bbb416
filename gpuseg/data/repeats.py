"""Rows that repeat an earlier row, found from 64-bit row hashes within a memory budget.

Validation hashes every event row as it streams the table (:func:`gpuseg.data.convert.hash_rows`)
and needs the rows whose hash an earlier row already had. Below the budget the hashes are held
and sorted in memory; above it they are spilled, with their row numbers, to :data:`PARTITIONS`
files by the hash's top bits, and each file is sorted on its own. Either way the first row of a
repeated hash is kept and the later ones are reported, so both give the same rows.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: spill files, by the hash's top _BITS bits: a file holds about 16 bytes x rows / PARTITIONS
_BITS = 6
PARTITIONS = 1 << _BITS
_RECORD = np.dtype([("hash", "<u8"), ("row", "<i8")])
#: bytes per held hash while sorting: the hash, its sort order and the sorted copy, and the compare
_SORT_BYTES = 32


class RepeatFinder:
    """Collect row hashes batch by batch, then name the rows that repeat an earlier one.

    Parameters
    ----------
    scratch : path-like
        Folder for the spill files (a temporary folder is made in it and removed by :meth:`close`).
    budget_bytes : int
        Memory the held hashes may take while sorted; above it they go to disk.

    Examples
    --------
    >>> finder = RepeatFinder(".", 1 << 20)
    >>> finder.add(np.array([5, 7, 5], dtype=np.uint64)); finder.add(np.array([7, 9], dtype=np.uint64))
    >>> finder.repeats().tolist()
    [2, 3]
    >>> finder.close()
    """

    def __init__(self, scratch: str | Path, budget_bytes: int):
        self.scratch, self.budget = Path(scratch), int(budget_bytes)
        self.rows = 0
        self._held: list[np.ndarray] = []
        self._held_rows = 0
        self._folder: tempfile.TemporaryDirectory | None = None
        self._files: list | None = None

    @property
    def spilled(self) -> bool:
        """Whether the hashes went to disk."""
        return self._files is not None

    def add(self, hashes: np.ndarray) -> None:
        """The hashes of the next rows, in row order."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        if self._files is None:
            self._held.append(hashes)
            self._held_rows += len(hashes)
            if (self._held_rows * _SORT_BYTES) > self.budget:
                self._spill_held()
        else:
            self._write(hashes, self.rows)
        self.rows += len(hashes)

    def _spill_held(self) -> None:
        self._folder = tempfile.TemporaryDirectory(dir=self.scratch, prefix=".repeats-", suffix=".tmp")
        self._files = [open(Path(self._folder.name) / f"part-{p:02d}.bin", "wb") for p in range(PARTITIONS)]
        log.info("duplicate check: %d row hashes are above the memory budget (%.0f MiB): sorted on disk in %d parts",
                 self._held_rows, self.budget / 2**20, PARTITIONS)
        start = 0
        for hashes in self._held:
            self._write(hashes, start)
            start += len(hashes)
        self._held, self._held_rows = [], 0

    def _write(self, hashes: np.ndarray, start: int) -> None:
        records = np.empty(len(hashes), dtype=_RECORD)
        records["hash"], records["row"] = hashes, np.arange(start, start + len(hashes), dtype=np.int64)
        part = (hashes >> np.uint64(64 - _BITS)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(PARTITIONS + 1))
        for p in range(PARTITIONS):
            if bounds[p] < bounds[p + 1]:
                records[order[bounds[p]:bounds[p + 1]]].tofile(self._files[p])

    def repeats(self) -> np.ndarray:
        """Sorted rows (int64) whose hash an earlier row had; the first of each hash is not one."""
        if self._files is None:
            hashes = np.concatenate(self._held) if self._held else np.zeros(0, np.uint64)
            return _repeated(hashes, np.arange(len(hashes), dtype=np.int64))
        found = []
        for handle in self._files:
            handle.close()
            records = np.fromfile(handle.name, dtype=_RECORD)
            found.append(_repeated(records["hash"], records["row"]))
        return np.sort(np.concatenate(found))

    def close(self) -> None:
        """Remove the spill files."""
        for handle in self._files or []:
            handle.close()
        if self._folder is not None:
            self._folder.cleanup()
        self._files = self._folder = None
        self._held = []

    def __enter__(self) -> RepeatFinder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _repeated(hashes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows whose hash appears at a lower row too, sorted; ``rows`` must be increasing (they
    are: held in row order, and each spill file is written in row order), so a stable sort by
    hash puts the first row of each hash first."""
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    same = sorted_hashes[1:] == sorted_hashes[:-1]
    return np.sort(rows[order[1:][same]])
