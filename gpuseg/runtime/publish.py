"""A job's outputs appear together or not at all: staged in a private folder, then published.

While a job runs, :func:`gpuseg.runtime.layout.job_dir` sends its own writes (and reads) to
``<work>/.staging/<folder>``, which starts as hard links of the published folder: resumable state
(text parts, journey checkpoints, the lookalike index cache) carries over, and the published
folder is never touched. On success the staged folder replaces the published one (two renames;
the old one is kept under ``.staging`` until the second has happened, and :func:`recover` puts it
back after a crash in between). A killed or failed job leaves the published set as it was and
its staging folder for the next run to resume from. Leftover ``.*.tmp`` files of killed writes
are removed when a job starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

log = logging.getLogger(__name__)

STAGING = ".staging"

#: (resolved work dir, job, staging folder) of the job running in this context
_ACTIVE: ContextVar[tuple[Path, str, Path] | None] = ContextVar("gpuseg_staged_job", default=None)


def staged_folder(work: str | os.PathLike, job: str) -> Path | None:
    """The staging folder of ``job`` when it is the job running now in ``work``, else None."""
    active = _ACTIVE.get()
    if active is None or active[1] != job:
        return None
    return active[2] if Path(work).resolve() == active[0] else None


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` made of hard links (a plain copy across filesystems)."""
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir() and not path.is_symlink():
            dest.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)


def _remove_tmp(folder: Path) -> None:
    for tmp in folder.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def recover(work: str | os.PathLike, folder: str) -> None:
    """Put back a published folder that a crash between the two renames of a publish left aside."""
    final, old = Path(work) / folder, Path(work) / STAGING / f"{folder}.old"
    if old.is_dir() and not final.exists():
        os.replace(old, final)
        log.warning("restored '%s' after an interrupted publish", final)


@contextlib.contextmanager
def staged_outputs(work: str | os.PathLike, job: str, folder: str) -> Iterator[Path]:
    """Run a job's writes in a staging folder and publish them together when the block succeeds.

    Parameters
    ----------
    work : path-like
        The work directory (a sweep run's own one in a multirun).
    job : str
        The job, as :func:`gpuseg.runtime.layout.job_dir` names it.
    folder : str
        Its folder under ``work``.
    """
    work = Path(work)
    final, stage, old = work / folder, work / STAGING / folder, work / STAGING / f"{folder}.old"
    recover(work, folder)
    if final.is_dir():
        _remove_tmp(final)
    if stage.is_dir():
        _remove_tmp(stage)
        log.info("resuming from the staged outputs of an earlier, unfinished %s run", job)
    else:
        stage.mkdir(parents=True)
        if final.is_dir():
            _link_tree(final, stage)
    token = _ACTIVE.set((work.resolve(), job, stage))
    try:
        yield stage
    finally:
        _ACTIVE.reset(token)
    # reached only when the job succeeded: swap the staged folder in
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)
