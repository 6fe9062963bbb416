"""A job's outputs appear together or not at all: staged in a private folder, then published.

While a job runs, :func:`gpuseg.runtime.layout.job_dir` sends its own writes (and reads) to
``<work>/.staging/<folder>``, which starts as hard links of the published folder: resumable state
(text parts, journey checkpoints, the lookalike index cache) carries over, and the published
folder is never touched. On success the staged folder replaces the published one (two renames;
the old one is kept under ``.staging`` until the second has happened, and :func:`recover` puts it
back after a crash in between). A killed or failed job leaves the published set as it was and
its staging folder for the next run to resume from. Leftover ``.*.tmp`` files of killed writes
are removed when a job starts.

Under torchrun a job whose ranks share its work (text, journeys, segment) stages the same way:
rank 0 prepares the staging folder, every rank writes into it, and once every rank is done rank
0 publishes and the others wait until it has; a job that runs on rank 0 alone stages as in one
process. Either way the published set and its record are written once, by rank 0.

Every published folder holds a record, ``.publish.json``: a fresh id, its files with their sizes,
and the ids of the upstream folders the job read (its lineage). When a job reads another job's
folder (:func:`check_upstream`, called by ``job_dir``), the record must match the files (none
missing, truncated or swapped in since) and its lineage the upstream folders as they are now: a
folder made from an earlier run of a job that has been re-run since is refused, naming the job to
re-run, so a job never mixes outputs of two different upstream runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.errors import UserInputError

log = logging.getLogger(__name__)

STAGING = ".staging"
RECORD = ".publish.json"


@dataclass
class _StagedJob:
    work: Path  # resolved work directory
    job: str
    stage: Path
    #: upstream job -> (its folder, the publish id read), for the lineage of this job's record
    read: dict[str, tuple[Path, str | None]] = field(default_factory=dict)


#: the job running in this context
_ACTIVE: ContextVar[_StagedJob | None] = ContextVar("gpuseg_staged_job", default=None)


def staged_folder(work: str | os.PathLike, job: str) -> Path | None:
    """The staging folder of ``job`` when it is the job running now in ``work``, else None."""
    active = _ACTIVE.get()
    if active is None or active.job != job:
        return None
    return active.stage if Path(work).resolve() == active.work else None


def read_record(folder: Path) -> dict[str, Any] | None:
    """A published folder's record, or None where it has none (written in place, or by an old gpuseg)."""
    path = folder / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UserInputError(f"the publish record '{path}' cannot be read ({err}): re-run the job that "
                             "writes this folder", config_key="paths.work_dir") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise UserInputError(f"the publish record '{path}' is not one gpuseg wrote: re-run the job that "
                             "writes this folder", config_key="paths.work_dir")
    return record


def _listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (but the record and leftover temporaries) -> its size."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != RECORD and not (path.name.startswith(".") and path.name.endswith(".tmp")):
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    return files


def verify_folder(folder: Path, job: str) -> dict[str, Any] | None:
    """The record of a published folder, checked against its files (an error naming the job if not)."""
    record = read_record(folder)
    if record is None:
        return None
    for name, size in record["files"].items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            what = "is missing" if actual is None else f"has {actual} bytes where gpuseg wrote {size}"
            raise UserInputError(f"the {job} outputs in '{folder}' are not the set gpuseg published: "
                                 f"'{name}' {what}; re-run `gpuseg {job}` (or `gpuseg run`)",
                                 config_key="paths.work_dir")
    return record


def check_upstream(work: str | os.PathLike, job: str, folder: Path, folders: dict[str, str]) -> None:
    """Called when the running job reads ``job``'s ``folder``: check it once, and note it for the lineage.

    The folder must match its record, and each upstream folder its record names must still be the
    one it was made from; else a :class:`UserInputError` names the jobs to re-run, in order.

    Parameters
    ----------
    work : path-like
        The work directory.
    job : str
        The job whose folder is read.
    folder : Path
        That folder.
    folders : dict
        Every job -> its folder name, in pipeline order (``layout.JOB_DIRS``).
    """
    active = _ACTIVE.get()
    if active is None or job == active.job or job in active.read or Path(work).resolve() != active.work:
        return
    recover(work, folder.name)  # a publish of that job killed between its two renames
    if not folder.is_dir():
        return
    record = verify_folder(folder, job)
    active.read[job] = (folder, None if record is None else record.get("id"))
    if record is None:
        return
    for upstream, entry in (record.get("lineage") or {}).items():
        now = read_record(Path(work) / entry["folder"])
        if now is not None and entry.get("id") is not None and now.get("id") != entry["id"]:
            rerun = ", then ".join(f"`gpuseg {name}`" for name in _stale_jobs(Path(work), folders))
            raise UserInputError(f"the {job} outputs in '{folder}' were made from an earlier `gpuseg {upstream}` "
                                 f"run than the one in '{Path(work) / entry['folder']}' now: re-run {rerun} "
                                 "(or `gpuseg run`)", config_key="paths.work_dir")


def _stale_jobs(work: Path, folders: dict[str, str]) -> list[str]:
    """The jobs, in pipeline order, whose folder was made from an upstream run replaced since."""
    stale: set[str] = set()
    records = {job: read_record(work / name) for job, name in folders.items() if (work / name).is_dir()}
    for job, record in records.items():  # pipeline order: a job's upstreams are judged before it
        for upstream, entry in ((record or {}).get("lineage") or {}).items():
            now = records.get(upstream)
            if upstream in stale or (now is not None and now.get("id") != entry.get("id")):
                stale.add(job)
    return [job for job in folders if job in stale]


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


def _write_record(stage: Path, job: str, read: dict[str, tuple[Path, str | None]]) -> None:
    record = {"job": job, "id": uuid.uuid4().hex,
              "published": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "lineage": {upstream: {"folder": folder.name, "id": ident} for upstream, (folder, ident) in sorted(read.items())},
              "files": _listing(stage)}
    tmp = stage / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, stage / RECORD)


def _remove_tmp(folder: Path) -> None:
    for tmp in sorted(folder.rglob(".*.tmp")):  # listed first: a folder's removal takes what it holds
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)  # of io.atomic_dir
        else:
            tmp.unlink(missing_ok=True)


def recover(work: str | os.PathLike, folder: str) -> None:
    """Put back a published folder that a crash between the two renames of a publish left aside."""
    final, old = Path(work) / folder, Path(work) / STAGING / f"{folder}.old"
    if old.is_dir() and not final.exists():
        try:
            os.replace(old, final)
        except FileNotFoundError:  # another rank of the job restored it first
            return
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
    # under torchrun every rank of the job writes into the stage that rank 0 prepares and publishes
    main = ddp.rank_and_world()[0] == 0
    if main:
        _prepare(final, stage, old, job)
    ddp.wait_for_all(what=f"preparing the {job} staging folder")
    active = _StagedJob(work.resolve(), job, stage)
    token = _ACTIVE.set(active)
    try:
        yield stage
    finally:
        _ACTIVE.reset(token)
    # reached only when the job succeeded (a failing rank leaves without waiting: the others'
    # collectives fail, or torchrun stops them): record the set, then swap the staged folder in
    ddp.wait_for_all(what=f"the {job} job")
    if main:
        _publish(final, stage, old, job, active.read)
    ddp.wait_for_all(what=f"publishing the {job} outputs")


def _prepare(final: Path, stage: Path, old: Path, job: str) -> None:
    """Make (or resume) the staging folder of a job: hard links of the published one."""
    recover(final.parent, final.name)
    if final.is_dir():
        _remove_tmp(final)
    if stage.is_dir():
        _remove_tmp(stage)
        log.info("resuming from the staged outputs of an earlier, unfinished %s run", job)
    else:
        stage.mkdir(parents=True)
        if final.is_dir():
            _link_tree(final, stage)


def _publish(final: Path, stage: Path, old: Path, job: str, read: dict[str, tuple[Path, str | None]]) -> None:
    """Record the staged set, then swap it in for the published folder (two renames)."""
    _write_record(stage, job, read)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)
