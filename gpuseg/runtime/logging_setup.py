"""A quiet console: third-party chatter off, gpuseg's own INFO lines kept.

Called once by the ``gpuseg`` command before a job imports faiss or transformers (the
environment variables below are read when those libraries are first imported), and again at the
start of the job, after Hydra has configured logging. Every setting is a default: an environment
variable the user set beforehand wins (``TRANSFORMERS_VERBOSITY=warning gpuseg text`` brings the
transformers warnings back).
"""

from __future__ import annotations

import logging
import os
import sys

#: library loggers that speak at INFO about themselves, not about the user's data
#: (faiss: "Loading faiss with AVX2 support.", "Successfully loaded faiss.", ...)
QUIET_LOGGERS = {"faiss": logging.WARNING}

#: transformers / huggingface_hub: only errors are worth a line on a segmentation job's console
_ENV_DEFAULTS = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_console(progress: bool | None = None) -> None:
    """Silence library noise on the console; idempotent.

    Parameters
    ----------
    progress : bool, optional
        The job's ``progress`` setting. Hugging Face progress bars (transformers' "Loading
        weights") are switched off when it is false or when stderr is not a terminal, like
        gpuseg's own bars.
    """
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    bars = progress is not False and sys.stderr.isatty()
    if not bars:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # libraries imported already have read their environment: tell them directly
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if os.environ.get("TRANSFORMERS_VERBOSITY") == "error":
            hf_logging.set_verbosity_error()
        if not bars:
            hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars
        from huggingface_hub.utils import logging as hub_logging

        if os.environ.get("HF_HUB_VERBOSITY") == "error":
            hub_logging.set_verbosity_error()
        if not bars:
            disable_progress_bars()
