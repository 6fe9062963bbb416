"""When ``gpuseg run`` may reuse a stage: same config, same upstream results, outputs intact.

A stage's fingerprint hashes the config sections the job reads, the fingerprints of the stages it
reads from and (for ``validate``) the size and modification time of every input file. ``run``
records, per stage, the fingerprint and the digest of the job's own manifest; a later ``run``
reuses the stage when both still match, so a stage re-run by hand in between (its manifest
changed) or an input file touched since is run again. ``force=true`` runs every stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpuseg.runtime.io import read_json, write_json
from gpuseg.runtime.layout import artifact, manifest_path

#: the config sections each job reads (dotted keys; a missing one counts as null)
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "validate": ("data", "seed"),
    "features": ("data.as_of", "data.roles", "features"),
    "text": ("data.as_of", "text", "device", "seed"),
    "journeys": ("data.as_of", "journey", "device", "seed"),
    "fuse": ("fuse", "device", "seed"),
    "segment": ("segment", "device", "seed"),
    "profile": ("data.as_of", "data.roles", "profile", "device", "seed"),
    "lookalike": ("lookalike", "device", "seed"),
}

#: settings inside those sections that change how a job works, never what it writes (each is tested
#: to give the same outputs): changing one does not make ``run`` redo the stage
RESULT_NEUTRAL: tuple[str, ...] = ("data.memory_mb", "segment.memory_mb", "profile.memory_mb",
                                   "text.aggregate_memory_mb")

#: the stages whose outputs each job reads
UPSTREAM: dict[str, tuple[str, ...]] = {
    "validate": (),
    "features": ("validate",),
    "text": ("validate",),
    "journeys": ("validate", "features"),
    "fuse": ("validate", "features", "text", "journeys"),
    "segment": ("fuse", "features"),
    "profile": ("validate", "features", "journeys", "fuse", "segment"),
    "lookalike": ("fuse", "features", "segment"),
}

#: the artifact whose absence means a stage's outputs are gone
MAIN_OUTPUT: dict[str, tuple[str, str]] = {
    "validate": ("validate", "customers"), "features": ("features", "matrix"), "text": ("text", "embeddings"),
    "journeys": ("journeys", "embeddings"), "fuse": ("fuse", "fused"), "segment": ("segment", "segments"),
    "profile": ("profile", "report"), "lookalike": ("lookalike", "audience"),
}

RECORD = "run_stages.json"


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _input_files(cfg: DictConfig) -> list[str]:
    """Stat lines of the files the data config names (paths of tables and of sources)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    paths = [t.get("path") for t in (data.get(name) or {} for name in ("customers", "events", "texts"))]
    for source in (data.get("sources") or {}).values():
        paths.append(source.get("path") if isinstance(source, dict) else source)
    lines = []
    for path in sorted(str(p) for p in paths if p):
        target = Path(path)
        files = sorted(f for f in target.rglob("*") if f.is_file()) if target.is_dir() else [target]
        for f in files:
            stat = f.stat() if f.exists() else None
            lines.append(f"{f}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}")
    return lines


def _without_neutral(config: dict[str, Any]) -> dict[str, Any]:
    """The selected config sections less the :data:`RESULT_NEUTRAL` settings."""
    for dotted in RESULT_NEUTRAL:
        section, _, name = dotted.rpartition(".")
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items() if k != name}
    return config


def fingerprint(cfg: DictConfig, stage: str, upstream: dict[str, str]) -> str:
    """Hash of what the stage's result depends on; ``upstream`` maps stages to their fingerprints."""
    parts = {
        "stage": stage,
        "config": _without_neutral({key: _select(cfg, key) for key in CONFIG_KEYS.get(stage, ())}),
        "upstream": {name: upstream.get(name) for name in UPSTREAM.get(stage, ())},
        "inputs": _input_files(cfg) if stage == "validate" else [],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _manifest_digest(work: Path, stage: str) -> str | None:
    path = manifest_path(work, stage)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None


def recorded(work: Path) -> dict[str, dict[str, Any]]:
    """What the last ``run`` recorded per stage (empty when nothing, or unreadable)."""
    path = manifest_path(work, "run").with_name(RECORD)
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def reusable(work: Path, stage: str, print_: str, record: dict[str, dict[str, Any]]) -> bool:
    """Whether the stage ran with this fingerprint and its manifest is the one that run left."""
    entry = record.get(stage) or {}
    digest = _manifest_digest(work, stage)
    output = MAIN_OUTPUT.get(stage)
    if output is None or not artifact(work, *output).exists():
        return False
    return bool(entry) and entry.get("fingerprint") == print_ and digest is not None and entry.get("manifest") == digest


def known_prints(work: Path, record: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Fingerprints of stages not run in this call, as upstream of those that are.

    A recorded fingerprint stands only while the stage's manifest is the one that run left; a
    stage re-run by hand since is represented by its manifest's digest, which no record matches.
    """
    prints = {}
    for stage, entry in record.items():
        digest = _manifest_digest(work, stage)
        prints[stage] = entry.get("fingerprint") if digest == entry.get("manifest") else f"manifest:{digest}"
    return prints


def remember(work: Path, stage: str, print_: str, record: dict[str, dict[str, Any]]) -> None:
    """Record a finished stage (written at once: a run killed later keeps what it finished)."""
    record[stage] = {"fingerprint": print_, "manifest": _manifest_digest(work, stage)}
    write_json(manifest_path(work, "run").with_name(RECORD), record)
