"""tqdm progress bars that stay silent off a terminal or when ``progress=false``."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(enabled: bool = True, **kwargs) -> tqdm:
    """Return a tqdm bar, disabled when ``enabled`` is false or stderr is not a TTY."""
    disable = (not enabled) or not sys.stderr.isatty()
    return tqdm(disable=disable, dynamic_ncols=True, **kwargs)
