"""Which incremental input files were consumed, and at which ``as_of``: each one is used once.

A file is known by its content (SHA-256): the same bytes under another name, or the same file
found again on a later run, are not consumed twice. The ledger is plain JSON, written by the job
inside its staged folder, so it is published together with the outputs that used the files: a
killed run consumes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.io import read_json, write_json

log = logging.getLogger(__name__)

LEDGER_VERSION = 1
_BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Ledger:
    """The consumed files: one entry each (path, size, sha256, the as_of it was consumed at).

    Parameters
    ----------
    entries : list of dict
        ``path``, ``size``, ``sha256``, ``table`` (events or texts), ``as_of`` and ``as_of_us``.
    """

    entries: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """The ledger at ``path`` (empty when there is none yet)."""
        if not Path(path).exists():
            return cls()
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("version") != LEDGER_VERSION or not isinstance(doc.get("files"), list):
            raise UserInputError(f"'{path}' is not an assign ledger of version {LEDGER_VERSION}; move it away "
                                 "to consume every input file again", config_key="assign.input")
        return cls(list(doc["files"]))

    def save(self, path: Path) -> Path:
        """Write the ledger (atomically), entries in the order they were consumed."""
        return write_json(path, {"version": LEDGER_VERSION, "files": self.entries})

    def known(self, sha256: str) -> dict[str, Any] | None:
        """The entry of a file with these bytes, if one was consumed."""
        return next((e for e in self.entries if e["sha256"] == sha256), None)

    def consume(self, path: Path, sha256: str, table: str, as_of: str, as_of_us: int) -> dict[str, Any]:
        """Record ``path`` as consumed at ``as_of`` and return its entry."""
        entry = {"path": str(path), "size": int(Path(path).stat().st_size), "sha256": sha256, "table": table,
                 "as_of": as_of, "as_of_us": int(as_of_us)}
        self.entries.append(entry)
        return entry

    def up_to(self, as_of_us: int) -> list[dict[str, Any]]:
        """Entries consumed at or before ``as_of_us`` (what a run at that cut-off includes), in order."""
        return [e for e in self.entries if int(e["as_of_us"]) <= as_of_us]


def input_files(folder: Path) -> list[tuple[Path, str]]:
    """The event and text files of an incremental input folder, sorted, with their table.

    A file is a texts file when it sits under a ``texts/`` folder or its name starts with
    ``texts``; every other CSV or Parquet file is an events file. Hidden files are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"assign.input '{folder}' is not a folder of event/text files",
                             config_key="assign.input")
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith((".", "_")) for part in rel.parts):
            continue
        if not path.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".tsv", ".txt")):
            log.warning("assign.input: '%s' is not a CSV or Parquet file, skipped", path)
            continue
        is_text = "texts" in rel.parts[:-1] or path.name.lower().startswith("texts")
        found.append((path, "texts" if is_text else "events"))
    return found
