"""Choose the compute device once per job, from the ``device`` config group."""

from __future__ import annotations

import logging

import torch

from gpuseg.runtime.errors import ConfigError

log = logging.getLogger(__name__)

_VALID = ("auto", "cpu", "cuda")


def resolve_device(spec: str | torch.device | None = "auto", *, key: str = "device.type") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a :class:`torch.device`.

    Parameters
    ----------
    spec : str or torch.device or None
        ``"auto"`` (or None) picks CUDA when available, else CPU. An explicit CUDA request on a
        machine without one is an error rather than a silent fall-back to CPU.
    key : str
        Config key named in the error message.

    Returns
    -------
    torch.device
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif spec == "cpu":
        device = torch.device("cpu")
    elif spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{spec}' was requested but no CUDA device is available "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                "use device=auto or device=cpu",
                config_key=key,
            )
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible",
                config_key=key,
            )
    else:
        raise ConfigError(f"device must be one of {_VALID} or 'cuda:N', got {spec!r}", config_key=key)
    log.debug("using device %s", device)
    return device
