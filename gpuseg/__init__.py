"""gpuseg: GPU-accelerated customer segmentation.

The public estimators are imported lazily so that ``import gpuseg`` stays cheap and a job that
needs only pyarrow never pays for importing transformers or faiss.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it; later issues add their estimators here
_LAZY = {
    "GpusegError": "gpuseg.runtime.errors",
    "UserInputError": "gpuseg.runtime.errors",
    "resolve_device": "gpuseg.runtime.device",
    "TabularTransform": "gpuseg.features.transform",
    "compute_rfm_features": "gpuseg.features.rfm",
    "generate_synthetic": "gpuseg.data.synthetic",
    "MiniBatchKMeans": "gpuseg.cluster.kmeans",
    "TextEmbedder": "gpuseg.text.embedder",
    "JourneyEncoder": "gpuseg.journey.model",
    "SequenceBuilder": "gpuseg.journey.sequences",
    "BlockFuser": "gpuseg.fusion.fuse",
    "LookalikeIndex": "gpuseg.lookalike.index",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpuseg' has no attribute {name!r}")
