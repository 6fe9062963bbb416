"""The machine a run or a benchmark ran on: hardware, library versions, dates, peak memory.

Shared by ``gpuseg bench``, the run manifests (peak memory) and the scripts in ``benchmarks/``
(through ``benchmarks/_common.py``), so that every result file describes its machine the same way.
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

from gpuseg.runtime.manifest import library_versions as _core_versions

__all__ = ["device_type", "library_versions", "machine_info", "peak_memory", "today", "utc_now"]


def device_type(device: Any) -> str:
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


def _proc_bytes(path: str, field: str) -> int | None:
    """A ``<field>: <n> kB`` line of a Linux ``/proc`` file, in bytes; None where there is none."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info(device: Any = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Describe the machine a benchmark ran on.

    Parameters
    ----------
    device : torch.device or str, default="cpu"
        The device measured; on CUDA the GPU's name and memory are recorded under ``"gpu"`` and
        ``"gpu_memory_bytes"``.
    threads : int, optional
        The torch CPU threads used; by default ``torch.get_num_threads()``. Torch is only
        consulted if the caller already imported it (``torch_threads`` is ``None`` otherwise),
        so a benchmark that does not use torch does not pay for importing it.

    Returns
    -------
    dict
        ``hostname``, ``platform``, ``processor``, ``cpu`` (model name), ``cpu_count``,
        ``memory_bytes``, ``torch_threads``, ``load_average`` (1, 5 and 15 minutes; ``None``
        where unavailable) and, on CUDA, ``gpu``. Callers add their own keys to it.
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
        "memory_bytes": _proc_bytes("/proc/meminfo", "MemTotal"),
        "torch_threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device_type(device) == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(device).total_memory)
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


def peak_memory() -> dict[str, int | None]:
    """Peak memory of this process so far: host RSS and, where CUDA was used, device memory.

    Returns
    -------
    dict
        ``peak_rss_bytes`` (``VmHWM`` on Linux, else ``ru_maxrss``) and
        ``cuda_max_allocated_bytes`` / ``cuda_max_reserved_bytes`` (torch's peaks on the current
        device; ``None`` when this process never initialised CUDA, so that asking costs nothing).
    """
    rss = _proc_bytes("/proc/self/status", "VmHWM")  # this process's peak resident set
    if rss is None:
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rss = int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
        except (ImportError, OSError):
            rss = None
    out: dict[str, int | None] = {"peak_rss_bytes": rss, "cuda_max_allocated_bytes": None,
                                  "cuda_max_reserved_bytes": None}
    torch = sys.modules.get("torch")  # never import torch (or start CUDA) just to ask
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        out["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return out
