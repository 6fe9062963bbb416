"""Helpers shared by the benchmark scripts: machine, versions, dates and result files.

The scripts import it as ``from _common import ...``: Python puts a script's own folder on
``sys.path``, so this works from the repository root (``python benchmarks/bench_x.py``) and from
inside ``benchmarks/``. Importing this module also puts the repository root on ``sys.path``, so a
script measures this checkout's ``gpuseg`` even where the package is not installed; the scripts
therefore import ``_common`` before ``gpuseg``.

Every result JSON records the same machine description (:func:`machine_info`), library versions
(:func:`library_versions`) and date (:func:`utc_now`), from :mod:`gpuseg.runtime.machine` (which
``gpuseg bench`` uses too), and is written atomically to
``benchmarks/results/<name>[_<device>]_<date>[_quick].json`` (:func:`result_path`,
:func:`write_result`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpuseg.runtime.io import write_json  # noqa: E402

# the core lives in the package, where `gpuseg bench` uses it too
from gpuseg.runtime.machine import device_type as _device_type  # noqa: E402
from gpuseg.runtime.machine import library_versions, machine_info, today, utc_now  # noqa: E402

__all__ = [
    "RESULTS",
    "ROOT",
    "library_versions",
    "machine_info",
    "result_path",
    "sync",
    "today",
    "utc_now",
    "write_result",
]


def result_path(
    name: str,
    device: Any = None,
    quick: bool = False,
    out: str | os.PathLike | None = None,
    results_dir: str | os.PathLike | None = None,
) -> Path:
    """Where a benchmark writes its JSON.

    Parameters
    ----------
    name : str
        Benchmark name, the file name's prefix (``"kmeans"``).
    device : torch.device or str, optional
        Its type (``cpu``, ``cuda``) follows the name; left out when ``None``.
    quick : bool, default=False
        Appends ``_quick``.
    out : path, optional
        An explicit file path; returned as is when given.
    results_dir : path, optional
        The folder, ``benchmarks/results`` by default.

    Returns
    -------
    Path
        ``out``, else ``<results_dir>/<name>[_<device>]_<YYYY-MM-DD>[_quick].json``.
    """
    if out is not None:
        return Path(out)
    parts = [name] if device is None else [name, _device_type(device)]
    parts.append(today())
    if quick:
        parts.append("quick")
    return Path(results_dir or RESULTS) / ("_".join(parts) + ".json")


def write_result(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write a result as indented JSON (folders created; numpy values converted)."""
    return write_json(path, payload)


def sync(device: Any) -> None:
    """Wait for queued CUDA work on ``device`` so that a timer sees all of it; no-op on CPU."""
    if _device_type(device) == "cuda":
        import torch

        torch.cuda.synchronize(device)
