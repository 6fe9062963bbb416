"""The jobs ``gpuseg`` knows: name -> (module, one-line description, delivered yet)."""

from __future__ import annotations

import importlib
from types import ModuleType

#: name -> (module path or None while planned, one-line description)
JOBS: dict[str, tuple[str | None, str]] = {
    "generate": ("gpuseg.jobs.generate", "make the synthetic multi-table dataset with planted personas"),
    "validate": ("gpuseg.jobs.validate", "check the input tables and write the canonical tables + rejects"),
    "features": ("gpuseg.jobs.features", "RFM+ tabular features at as_of, and their fitted transform"),
    "text": ("gpuseg.jobs.text", "embed reviews and tickets with a transformers encoder, per customer"),
    "journeys": ("gpuseg.jobs.journeys", "train the LSTM journey encoder and embed each customer"),
    "fuse": ("gpuseg.jobs.fuse", "align, scale and weight the blocks into one fused matrix"),
    "segment": ("gpuseg.jobs.segment", "mini-batch k-means segments with auto-k, confidence and outliers"),
    "profile": ("gpuseg.jobs.profile", "segment profiles, personas, churn risk and the HTML report"),
    "lookalike": ("gpuseg.jobs.lookalike", "FAISS nearest-neighbour expansion of a seed audience"),
    "assign": ("gpuseg.jobs.assign", "re-score new data against saved models, with hysteresis and drift"),
    "audience": ("gpuseg.jobs.audience", "an audience by rule or in plain words, with its profile against the base"),
    "export": ("gpuseg.jobs.export", "an audience or segment list to CSV/Parquet, identifiers normalised and hashed"),
    "bench": ("gpuseg.jobs.bench", "the pipeline stage by stage on synthetic data: time, throughput, peak memory, peers"),
    "run": ("gpuseg.jobs.run", "the whole pipeline; makes synthetic data first when none is configured"),
}


def available(name: str) -> bool:
    """Whether the job is delivered (not only planned)."""
    return JOBS.get(name, (None, ""))[0] is not None


def load(name: str) -> ModuleType:
    """Import a delivered job's module."""
    module, _ = JOBS[name]
    if module is None:
        raise KeyError(name)
    return importlib.import_module(module)
