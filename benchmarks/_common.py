"""Helpers shared by the benchmark scripts: machine, versions, dates and result files.

The scripts import it as ``from _common import ...``: Python puts a script's own folder on
``sys.path``, so this works from the repository root (``python benchmarks/bench_x.py``) and from
inside ``benchmarks/``. Importing this module also puts the repository root on ``sys.path``, so a
script measures this checkout's ``gpuseg`` even where the package is not installed; the scripts
therefore import ``_common`` before ``gpuseg``.

Every result JSON records the same machine description (:func:`machine_info`), library versions
(:func:`library_versions`) and date (:func:`utc_now`), and is written atomically to
``benchmarks/results/<name>[_<device>]_<date>[_quick].json`` (:func:`result_path`,
:func:`write_result`).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from datetime import date, datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpuseg.runtime.io import write_json  # noqa: E402
from gpuseg.runtime.manifest import library_versions as _core_versions  # noqa: E402

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


def _device_type(device: Any) -> str:
    """``"cpu"``/``"cuda"`` from a ``torch.device`` or a string such as ``"cuda:0"``."""
    return getattr(device, "type", None) or str(device).split(":", 1)[0]


def _cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: Any = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Describe the machine a benchmark ran on.

    Parameters
    ----------
    device : torch.device or str, default="cpu"
        The device measured; on CUDA the GPU's name is recorded under ``"gpu"``.
    threads : int, optional
        The torch CPU threads used; by default ``torch.get_num_threads()``. Torch is only
        consulted if the benchmark already imported it (``torch_threads`` is ``None`` otherwise),
        so a benchmark that does not use torch does not pay for importing it.

    Returns
    -------
    dict
        ``hostname``, ``platform``, ``processor``, ``cpu`` (model name), ``cpu_count``,
        ``torch_threads``, ``load_average`` (1, 5 and 15 minutes; ``None`` where unavailable)
        and, on CUDA, ``gpu``. Scripts add their own keys to it.
    """
    torch = sys.modules.get("torch")
    if threads is None and torch is not None:
        threads = torch.get_num_threads()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if _device_type(device) == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _version(name: str) -> str | None:
    # A distribution name ("scikit-learn") first, then a module's __version__ ("sklearn",
    # "faiss"), so that keys of older result files keep their meaning.
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
    try:
        return str(importlib.import_module(name).__version__)
    except (ImportError, AttributeError):
        return None


def library_versions(*extra: str) -> dict[str, str | None]:
    """Versions of Python, gpuseg's core libraries and ``extra`` ones (``None`` if missing).

    Parameters
    ----------
    *extra : str
        More distributions (``"pandas"``, ``"sentence-transformers"``) or importable modules
        with a ``__version__`` (``"sklearn"``, ``"faiss"``); each becomes a key as written.

    Returns
    -------
    dict
        :func:`gpuseg.runtime.manifest.library_versions` plus one key per ``extra`` name.
    """
    versions = _core_versions()
    for name in extra:
        versions[name] = _version(name)
    return versions


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the ``"date"`` of most result files)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def today() -> str:
    """Today's local date as ``YYYY-MM-DD`` (the date in result file names)."""
    return date.today().isoformat()


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
