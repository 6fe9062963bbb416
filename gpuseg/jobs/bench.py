"""``gpuseg bench``: the pipeline on synthetic data of a given size, stage by stage.

Each stage runs in its own process (``python -m gpuseg <stage> <overrides>``) so that its peak
host RSS is its own (``os.wait4`` gives the child's ``ru_maxrss``); the stage's manifest gives
its peak CUDA allocation (:func:`gpuseg.jobs.common.finish` records it). Per stage the result
holds the wall time (process start and imports included: what a user waits for), throughput
(customers/s, and events/s or texts/s where the stage reads them), peak RSS and peak device
memory; with the machine, device, library versions and config, it is written as JSON to
``<bench.results_dir>/bench_<device>_<n>_<date>.json`` and printed as a table.

``bench.sizes=[100000,300000,1000000]`` runs each size and adds
``bench_<device>_scaling_<date>.json``: each stage's time and RSS against N with their ratio to
linear growth. ``bench.compare=true`` times the peers on the same data in the same run (see
:func:`_compare`). ``bench.table_only=true`` prints the README's markdown tables from the result
files and runs nothing (``scripts/bench_table.py`` does the same).

Overrides other than ``bench.*``, ``paths.*`` and ``hydra.*`` are passed on to every stage whose
config has the key (``text.model=static`` reaches the text stage, ``device=cuda`` every stage).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from omegaconf import DictConfig, ListConfig, OmegaConf

from gpuseg.jobs import registry
from gpuseg.jobs.common import finish, start
from gpuseg.runtime.errors import ConfigError, GpusegError
from gpuseg.runtime.io import read_json, write_json
from gpuseg.runtime.layout import artifact, manifest_path
from gpuseg.runtime.machine import library_versions, machine_info, today, utc_now
from gpuseg.runtime.validation import is_int

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: the whole pipeline in order (bench.stages' default); a table says which of these a run left out
PIPELINE = ("generate", "validate", "features", "text", "journeys", "fuse", "segment", "profile", "lookalike")
#: peers whose versions every result records (None when not installed)
_PEER_PACKAGES = ("scikit-learn", "faiss-cpu", "faiss-gpu", "sentence-transformers", "model2vec")
#: the tables each stage reads, beyond the customers: its throughput is also given per row of them
_STAGE_ROWS = {"generate": ("events", "texts"), "validate": ("events", "texts"), "features": ("events",),
               "text": ("texts",), "journeys": ("events",)}
#: override roots the bench keeps for itself (the children get their own paths and sizes)
_OWN_ROOTS = ("bench", "paths", "hydra")
_OWN_KEYS = ("data.generator.n_customers", "data.dir", "overwrite", "force", "stages")
_MARKER = ".gpuseg_bench"
_CONF = Path(__file__).resolve().parents[1] / "conf"
_MIB = 1024 * 1024


# ----------------------------------------------------------------------------- settings


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """The ``bench`` section, checked: every bad value is a ConfigError naming its key."""
    b = cfg.bench

    def count(key: str, value: Any, low: int = 1) -> int:
        if not is_int(value) or value < low:
            raise ConfigError(f"bench.{key} must be an integer >= {low}, got {value!r}", config_key=f"bench.{key}")
        return int(value)

    sizes_value = b.get("sizes")
    if sizes_value is None:
        sizes = [count("n_customers", b.n_customers, 20)]
    else:
        if not isinstance(sizes_value, ListConfig | list) or len(sizes_value) == 0:
            raise ConfigError(f"bench.sizes must be a non-empty list of customer counts such as "
                              f"[100000,300000,1000000], or null, got {sizes_value!r}", config_key="bench.sizes")
        sizes = [count("sizes", v, 20) for v in sizes_value]
        if len(set(sizes)) != len(sizes):
            raise ConfigError(f"bench.sizes has a size twice: {list(sizes)}", config_key="bench.sizes")
        sizes = sorted(sizes)
    stages = list(b.stages) if isinstance(b.stages, ListConfig | list) else None
    known = [j for j in registry.JOBS if registry.available(j) and j not in ("bench", "run")]
    if not stages:
        raise ConfigError(f"bench.stages must be a non-empty list of stages among {known}, got {b.stages!r}",
                          config_key="bench.stages")
    for stage in stages:
        if stage not in known:
            raise ConfigError(f"unknown stage {stage!r} in bench.stages; stages are among {known}",
                              config_key="bench.stages")
    if stages[0] != "generate":
        raise ConfigError(f"bench.stages must start with generate (the bench makes its data), got {stages}",
                          config_key="bench.stages")
    timeout = b.get("stage_timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"bench.stage_timeout_s must be a positive number of seconds or null, got {timeout!r}",
                          config_key="bench.stage_timeout_s")
    for flag in ("compare", "keep_work", "table_only"):
        if not isinstance(b.get(flag), bool):
            raise ConfigError(f"bench.{flag} must be true or false, got {b.get(flag)!r}", config_key=f"bench.{flag}")
    cs = b.compare_settings
    return {
        "sizes": sizes, "stages": stages, "timeout": timeout, "compare": bool(b.compare),
        "keep_work": bool(b.keep_work), "lookalike_seeds": count("lookalike_seeds", b.lookalike_seeds),
        "results_dir": Path(str(b.results_dir)), "work_dir": Path(str(b.work_dir)),
        "text_sample": count("compare_settings.text_sample", cs.text_sample),
        "search_queries": count("compare_settings.search_queries", cs.search_queries),
        "search_k": count("compare_settings.search_k", cs.search_k),
        "faiss_niter": count("compare_settings.faiss_niter", cs.faiss_niter),
    }


# ----------------------------------------------------------------------------- overrides


def _task_overrides() -> list[str]:
    """The command line's overrides (empty when ``run(cfg)`` is called outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except (ImportError, ValueError):
        return []


def _override_key(override: str) -> str:
    """``text.model`` of ``text.model=static``, ``+x.y=1``, ``~x.y`` or ``group@pkg=opt``."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]


@cache
def _config_keys(name: str) -> frozenset[str]:
    """Top-level keys of the primary config ``name``: its own, its groups' and its defaults' keys."""
    raw = OmegaConf.to_container(OmegaConf.load(_CONF / f"{name}.yaml"), resolve=False)
    keys = {k for k in raw if k not in ("defaults", "hydra")}
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict):
            keys.update(str(k).split("@", 1)[0].lstrip("/") for k in entry if k != "override")
        elif entry != "_self_":
            keys |= _config_keys(str(entry))
    return frozenset(keys)


def passed_on(overrides: list[str], stage: str) -> list[str]:
    """The overrides meant for ``stage``: those whose first key its config has.

    Parameters
    ----------
    overrides : list of str
        The bench's command-line overrides.
    stage : str
        A job name (``text``, ``segment``).
    """
    keys = _config_keys(stage)
    out = []
    for override in overrides:
        key = _override_key(override)
        if key.split(".", 1)[0] in _OWN_ROOTS or key in _OWN_KEYS:
            continue
        if key.split(".", 1)[0] in keys:
            out.append(override)
    return out


# ----------------------------------------------------------------------------- one stage


def _run_child(cmd: list[str], log_path: Path, timeout: float | None) -> dict[str, Any]:
    """Run ``cmd``; its wall time, exit code and peak RSS (``ru_maxrss`` from ``os.wait4``)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            if hasattr(os, "wait4"):
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                # ru_maxrss: KiB on Linux, bytes on macOS; the child's own peak (and its waited-for children's)
                rss = int(usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024)
            else:  # pragma: no cover - Windows: the manifest's figure only
                proc.wait()
                rss = None
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "returncode": proc.returncode, "peak_rss_bytes": rss,
            "timed_out": bool(timeout) and proc.returncode == -9}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stage_record(stage: str, child: dict[str, Any], work: Path, rows: dict[str, int]) -> dict[str, Any]:
    """What the bench keeps of one stage: times, throughput, memory, a few of its result figures."""
    manifest = read_json(manifest_path(work, stage)) if manifest_path(work, stage).exists() else {}
    resources = manifest.get("resources") or {}
    wall = child["wall_s"]
    throughput = {"customers_per_s": rows["customers"] / wall}
    for table in _STAGE_ROWS.get(stage, ()):
        if rows.get(table):
            throughput[f"{table}_per_s"] = rows[table] / wall
    rss = child["peak_rss_bytes"] if child["peak_rss_bytes"] is not None else resources.get("peak_rss_bytes")
    result = manifest.get("result") or {}
    static = result.get("static") if isinstance(result.get("static"), dict) else None
    return {
        "stage": stage,
        "wall_s": wall,
        "throughput": throughput,
        "peak_rss_bytes": rss,
        "peak_rss_bytes_at_finish": resources.get("peak_rss_bytes"),
        "cuda_max_allocated_bytes": resources.get("cuda_max_allocated_bytes"),
        "cuda_max_reserved_bytes": resources.get("cuda_max_reserved_bytes"),
        "device": manifest.get("device"),
        "result": {k: v for k, v in result.items() if isinstance(v, int | float | str | bool) and not k.endswith(
            ("_path", "_dir"))},
        **({"static_model": {"distilled_in_this_stage": static.get("distilled"),
                             "distill_seconds": static.get("distill_seconds")}} if static else {}),
    }


def _seed_file(work: Path, data_dir: Path, n_seeds: int, seed: int) -> Path:
    """``n_seeds`` customer ids of the generated data (drawn with ``seed``), one per line."""
    ids = pq.read_table(data_dir / "customers.parquet", columns=["customer_id"]).column(0).to_pylist()
    picked = np.random.default_rng(seed).choice(len(ids), min(n_seeds, len(ids)), replace=False)
    path = work / "lookalike_seeds.txt"
    path.write_text("\n".join(str(ids[i]) for i in sorted(picked)) + "\n", encoding="utf-8")
    return path


def _fresh_work(folder: Path) -> None:
    """Empty a bench scratch folder (only one the bench made: it holds the marker file)."""
    if folder.exists():
        if not (folder / _MARKER).exists() and any(folder.iterdir()):
            raise ConfigError(f"'{folder}' is not empty and was not made by gpuseg bench; choose another "
                              "bench.work_dir (the bench empties its scratch folder first)", config_key="bench.work_dir")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / _MARKER).write_text("scratch folder of gpuseg bench: emptied by every bench run\n")


# ----------------------------------------------------------------------------- one size


def _bench_size(cfg: DictConfig, s: dict[str, Any], n: int, overrides: list[str], device: str) -> dict[str, Any]:
    work = (s["work_dir"] / f"n{n}").resolve()
    _fresh_work(work)
    data_dir = work / "data"
    logs = work / "stage_logs"
    logs.mkdir()
    rows: dict[str, int] = {"customers": n}
    records: list[dict[str, Any]] = []
    user_keys = {_override_key(o) for o in overrides}
    # the floor under every stage's figures: a fresh interpreter importing the stages' modules
    modules = ", ".join(["gpuseg.cli", *(registry.JOBS[stage][0] for stage in s["stages"])])
    startup = _run_child([sys.executable, "-c", f"import {modules}"], logs / "startup.log", s["timeout"])
    failure = None
    for stage in s["stages"]:
        cmd = [sys.executable, "-m", "gpuseg", stage, f"paths.work_dir={work}", f"paths.data_dir={data_dir}",
               "progress=false", f"seed={int(cfg.seed)}"]
        if stage == "generate":
            cmd.append(f"data.generator.n_customers={n}")
        if stage == "lookalike":
            cmd.append(f"lookalike.seeds={_seed_file(work, data_dir, s['lookalike_seeds'], int(cfg.seed))}")
            if not user_keys & {"lookalike.size", "lookalike.expansion", "lookalike.threshold"}:
                cmd.append("lookalike.expansion=balanced")
        if stage == "text" and "text.static.cache_dir" not in user_keys:
            # a static model is distilled once per bench folder, not once per size and run: the
            # distillation is a one-off cost, recorded apart from the stage's time (text.static in its result)
            cmd.append(f"text.static.cache_dir={(s['work_dir'] / 'static_model').resolve()}")
        cmd += [o for o in passed_on(overrides, stage) if not o.startswith("seed=")]
        log.info("bench n=%d: %s", n, stage)
        child = _run_child(cmd, logs / f"{stage}.log", s["timeout"])
        if child["returncode"] != 0:
            why = (f"took more than bench.stage_timeout_s={s['timeout']} s" if child["timed_out"]
                   else f"failed (exit code {child['returncode']})")
            failure = {"stage": stage, "message": f"stage {stage} {why}", "log_tail": _tail(logs / f"{stage}.log"),
                       "command": cmd}
            break
        if stage == "generate":
            generated = (read_json(manifest_path(work, "generate")).get("result") or {}).get("rows") or {}
            rows.update({k: int(v) for k, v in generated.items() if k in ("customers", "events", "texts")})
        records.append(_stage_record(stage, child, work, rows))
        log.info("bench n=%d: %s %.1f s, peak RSS %.0f MiB", n, stage, child["wall_s"],
                 (records[-1]["peak_rss_bytes"] or 0) / _MIB)
    payload: dict[str, Any] = {
        "benchmark": "bench",
        "schema_version": SCHEMA_VERSION,
        "date": utc_now(),
        "n_customers": n,
        "rows": rows,
        "device": device,
        "machine": machine_info(device),
        "versions": library_versions(*_PEER_PACKAGES),
        "overrides": overrides,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "startup": {"what": "a fresh python importing gpuseg.cli and the stages' job modules: the time and RSS "
                               "every stage's figures include", "wall_s": startup["wall_s"],
                    "peak_rss_bytes": startup["peak_rss_bytes"]},
        "stages": records,
        "total": _totals(records),
        "targets": _targets(cfg, n, records, s["stages"]) if failure is None else None,
        "compare": None,
        "failed": failure,
    }
    if failure is None and s["compare"]:
        payload["compare"] = _compare(cfg, s, work, data_dir, device, records)
    if not s["keep_work"]:
        shutil.rmtree(work, ignore_errors=True)
    else:
        payload["work_dir"] = str(work)
    return payload


def _totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    def peak(key: str) -> int | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return max(values) if values else None

    return {"wall_s": sum(r["wall_s"] for r in records), "peak_rss_bytes": peak("peak_rss_bytes"),
            "cuda_max_allocated_bytes": peak("cuda_max_allocated_bytes")}


def _targets(cfg: DictConfig, n: int, records: list[dict[str, Any]], stages: list[str]) -> dict[str, Any]:
    """The issue's end-to-end targets, judged only at their size and with every default stage run."""
    t = cfg.bench.targets
    total = _totals(records)
    out = {"at_n_customers": int(t.at_n_customers), "wall_s": float(t.wall_s), "peak_rss_bytes": int(t.peak_rss_bytes)}
    if n != int(t.at_n_customers):
        return {**out, "met": None, "why_not_judged": f"the targets are for n_customers={int(t.at_n_customers)}"}
    met_time = total["wall_s"] <= float(t.wall_s)
    met_rss = total["peak_rss_bytes"] is not None and total["peak_rss_bytes"] <= int(t.peak_rss_bytes)
    return {**out, "met": bool(met_time and met_rss), "wall_s_met": met_time, "peak_rss_met": met_rss,
            "stages": stages}


# ----------------------------------------------------------------------------- compare mode


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _timed(device: str, fn):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _nearest_centres(X: np.ndarray, centres: np.ndarray) -> tuple[float, np.ndarray]:
    """One evaluator for every method: inertia (float64 sum) and nearest-centre labels, exact."""
    import faiss

    index = faiss.IndexFlatL2(X.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    dist, labels = index.search(X, 1)
    return float(dist.astype(np.float64).sum()), labels[:, 0]


def _compare_kmeans(cfg: DictConfig, s: dict[str, Any], X: np.ndarray, k: int, device: str) -> dict[str, Any]:
    from gpuseg.cluster import MiniBatchKMeans
    from gpuseg.runtime.metrics import adjusted_rand_index

    kc = cfg.segment.kmeans
    seed = int(cfg.seed)
    params = {"batch_size": int(kc.batch_size), "n_init": int(kc.n_init), "max_iter": int(kc.max_iter),
              "max_no_improvement": int(kc.max_no_improvement)}
    ours, wall = _timed(device, lambda: MiniBatchKMeans(k, random_state=seed, device=device,
                                                        refine_passes=int(kc.refine_passes), **params).fit(X))
    inertia, labels = _nearest_centres(X, ours.cluster_centers_)
    out: dict[str, Any] = {"n": int(X.shape[0]), "d": int(X.shape[1]), "k": k, **params,
                           "gpuseg": {"wall_s": wall, "inertia": inertia}}

    def peer(name: str, fit) -> None:
        try:
            centres, peer_wall = fit()
        except ImportError as exc:
            out[name] = {"skipped": f"not installed: {exc.name}"}
            return
        peer_inertia, peer_labels = _nearest_centres(X, centres)
        out[name] = {"wall_s": peer_wall, "inertia": peer_inertia, "time_ratio": peer_wall / wall,
                     "inertia_ratio": peer_inertia / inertia if inertia > 0 else None,
                     "ari_vs_gpuseg": adjusted_rand_index(labels, peer_labels)}

    def sklearn_fit():
        from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans

        model, t = _timed("cpu", lambda: SkMiniBatchKMeans(k, random_state=seed, **params).fit(X))
        return model.cluster_centers_, t

    def faiss_fit():
        import faiss

        from gpuseg.lookalike.index import faiss_has_gpu

        km = faiss.Kmeans(X.shape[1], k, niter=s["faiss_niter"], seed=seed, gpu=device == "cuda" and faiss_has_gpu())
        _, t = _timed("cpu", lambda: km.train(X))
        return km.centroids, t

    peer("sklearn_minibatch_kmeans", sklearn_fit)
    peer("faiss_kmeans", faiss_fit)
    out["faiss_kmeans"]["niter"] = s["faiss_niter"] if "wall_s" in out["faiss_kmeans"] else None
    return out


def _compare_search(cfg: DictConfig, s: dict[str, Any], ids: Any, X: np.ndarray, device: str) -> dict[str, Any]:
    import faiss

    from gpuseg.lookalike import LookalikeIndex

    metric = str(cfg.lookalike.index.metric)
    k = min(s["search_k"], X.shape[0])
    rows = np.sort(np.random.default_rng(int(cfg.seed)).choice(X.shape[0], min(s["search_queries"], X.shape[0]),
                                                                replace=False))
    index, build_s = _timed(device, lambda: LookalikeIndex("exact", metric=metric, device=device).build(X, ids))
    (_, ours), search_s = _timed(device, lambda: index.search(X[rows], k, return_rows=True))
    base = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12) if metric == "cosine" else X
    base = np.ascontiguousarray(base, dtype=np.float32)
    flat = faiss.IndexFlatL2(X.shape[1]) if metric == "l2" else faiss.IndexFlatIP(X.shape[1])
    _, add_s = _timed("cpu", lambda: flat.add(base))
    (_, theirs), peer_s = _timed("cpu", lambda: flat.search(base[rows], k))
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours.tolist(), theirs.tolist(), strict=True)]))
    return {"metric": metric, "n": int(X.shape[0]), "queries": int(rows.size), "k": k,
            "gpuseg": {"build_s": build_s, "search_s": search_s, "backend": index.backend_used_},
            f"faiss_{type(flat).__name__}": {"build_s": add_s, "search_s": peer_s, "search_time_ratio":
                                             peer_s / search_s if search_s > 0 else None,
                                             "neighbour_overlap": overlap}}


def _compare_text(cfg: DictConfig, s: dict[str, Any], data_dir: Path, device: str,
                  records: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return {"skipped": "sentence-transformers is not installed (pip install 'gpuseg[dev]')"}
    from gpuseg.text import TextEmbedder
    from gpuseg.text.model_path import resolve_model

    notes = []
    try:  # the configured model when it is a transformers folder; else the packaged one, like for like
        model_dir = resolve_model(cfg.text.model)
    except GpusegError:
        notes.append(f"text.model={cfg.text.model!r} is not a transformers model sentence-transformers can load: "
                     "both encoders use the packaged default model")
        try:
            model_dir = resolve_model(None)
        except GpusegError as exc:
            return {"skipped": f"no transformers text model to compare: {exc}"}
    texts = pq.read_table(data_dir / "texts.parquet", columns=["text"]).column(0).drop_null().unique().to_pylist()
    texts = [t for t in texts if t.strip()]
    if not texts:
        return {"skipped": "the generated data have no texts"}
    picked = np.random.default_rng(int(cfg.seed)).choice(len(texts), min(s["text_sample"], len(texts)), replace=False)
    sample = [texts[i] for i in sorted(picked)]
    ours = TextEmbedder(model_dir, device=device, dedupe=False, batch_size=cfg.text.batch_size,
                        precision=str(cfg.text.precision))
    ours.encode(sample[:8])  # warm-up: first-call costs are not throughput
    mine, wall = _timed(device, lambda: ours.encode(sample))
    st = SentenceTransformer(model_dir, device=device)
    st.encode(sample[:8])
    batch = int(cfg.text.batch_size or (512 if device == "cuda" else 64))
    theirs, peer_wall = _timed(device, lambda: st.encode(sample, batch_size=batch, normalize_embeddings=True,
                                                         convert_to_numpy=True, show_progress_bar=False))
    mine = mine / np.maximum(np.linalg.norm(mine, axis=1, keepdims=True), 1e-12)
    agreement = np.sum(mine * np.asarray(theirs, dtype=np.float32), axis=1)
    out: dict[str, Any] = {
        "model": model_dir, "texts": len(sample), "batch_size": batch,
        "gpuseg": {"wall_s": wall, "texts_per_s": len(sample) / wall, "precision": ours.precision},
        "sentence_transformers": {"wall_s": peer_wall, "texts_per_s": len(sample) / peer_wall,
                                  "time_ratio": peer_wall / wall, "mean_cosine_vs_gpuseg": float(agreement.mean()),
                                  "min_cosine_vs_gpuseg": float(agreement.min())},
        "notes": notes,
    }
    stage = next((r for r in records if r["stage"] == "text"), None)
    if stage is not None:  # the pipeline's own text stage (its configured model, dedupe, I/O, aggregation)
        per_s = stage["throughput"].get("texts_per_s")
        out["pipeline_text_stage"] = {"texts_per_s": per_s, "model": stage["result"].get("model"),
                                      "vs_sentence_transformers": per_s / out["sentence_transformers"]["texts_per_s"]
                                      if per_s else None}
    return out


def _compare(cfg: DictConfig, s: dict[str, Any], work: Path, data_dir: Path, device: str,
             records: list[dict[str, Any]]) -> dict[str, Any]:
    """The peers on this run's data: k-means and exact search on the fused matrix, text encoders on its texts.

    Ratios are peer / gpuseg (a time ratio above 1: gpuseg is faster); quality beside speed
    (inertia ratio and ARI between the k-means labelings, neighbour overlap, embedding cosine).
    A peer that is not installed is reported as skipped, with the reason.
    """
    from gpuseg.runtime.matrix import read_matrix

    out: dict[str, Any] = {}
    ran = {r["stage"]: r for r in records}
    if artifact(work, "fuse", "fused").exists():
        ids, X, _ = read_matrix(artifact(work, "fuse", "fused"))
        X = np.ascontiguousarray(X, dtype=np.float32)
        k = int(ran["segment"]["result"]["n_clusters"]) if "segment" in ran else 8
        log.info("bench compare: k-means (k=%d) on the fused matrix %s", k, X.shape)
        out["kmeans"] = _compare_kmeans(cfg, s, X, k, device)
        log.info("bench compare: exact search")
        out["search"] = _compare_search(cfg, s, ids, X, device)
    else:
        out["kmeans"] = out["search"] = {"skipped": "the fuse stage did not run (bench.stages)"}
    log.info("bench compare: text encoders")
    out["text"] = _compare_text(cfg, s, data_dir, device, records)
    return out


# ----------------------------------------------------------------------------- sizes and tables


def scaling(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """Each stage's time and peak RSS against N, with the ratio to linear growth from the smallest N.

    ``time_vs_linear`` is ``(t_N / t_0) / (N / N_0)``: 1 is linear, below 1 better than linear
    (fixed costs such as imports amortised). RSS has a fixed floor (the interpreter, torch), so
    beside its ratio the growth per customer between sizes is given (``rss_bytes_per_customer``).
    """
    ns = [p["n_customers"] for p in payloads]
    stages: dict[str, Any] = {}
    for stage in [r["stage"] for r in payloads[0]["stages"]]:
        rec = [next((r for r in p["stages"] if r["stage"] == stage), None) for p in payloads]
        if any(r is None for r in rec):
            continue
        t = [r["wall_s"] for r in rec]
        rss = [r["peak_rss_bytes"] for r in rec]
        entry = {"wall_s": t, "peak_rss_bytes": rss,
                 "time_vs_linear": [(t[i] / t[0]) / (ns[i] / ns[0]) for i in range(len(ns))]}
        if all(v is not None for v in rss):
            entry["rss_vs_linear"] = [(rss[i] / rss[0]) / (ns[i] / ns[0]) for i in range(len(ns))]
            entry["rss_bytes_per_customer"] = [None] + [(rss[i] - rss[i - 1]) / (ns[i] - ns[i - 1])
                                                        for i in range(1, len(ns))]
        stages[stage] = entry
    return {"n_customers": ns, "stages": stages}


def _mib(value: Any) -> str:
    return "" if value is None else f"{value / _MIB:,.0f}"


def _rate(value: Any) -> str:
    return "" if value is None else f"{value:,.0f}"


def stage_table(payload: dict[str, Any]) -> str:
    """One result's stages as a markdown table (the console and the README use the same)."""
    lines = ["| stage | wall (s) | customers/s | events/s | texts/s | peak RSS (MiB) | peak device (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in payload["stages"]:
        tp = r["throughput"]
        lines.append(f"| {r['stage']} | {r['wall_s']:.1f} | {_rate(tp.get('customers_per_s'))} | "
                     f"{_rate(tp.get('events_per_s'))} | {_rate(tp.get('texts_per_s'))} | "
                     f"{_mib(r['peak_rss_bytes'])} | {_mib(r.get('cuda_max_allocated_bytes'))} |")
    total = payload["total"]
    lines.append(f"| **total** | **{total['wall_s']:.1f}** | {_rate(payload['n_customers'] / total['wall_s'])} "
                 f"| | | **{_mib(total['peak_rss_bytes'])}** (max) | {_mib(total.get('cuda_max_allocated_bytes'))} |")
    startup = payload.get("startup")
    if startup:
        lines.append(f"\nEach stage is its own process: its figures include a start-up of {startup['wall_s']:.1f} s "
                     f"and {_mib(startup['peak_rss_bytes'])} MiB (python, torch and the job modules imported).")
    return "\n".join(lines)


def scaling_table(summary: dict[str, Any]) -> str:
    """Time and RSS of each stage against N, with the time's ratio to linear, as markdown."""
    ns = summary["n_customers"]
    head = " | ".join(f"t @ {n:,}" for n in ns) + " | " + " | ".join(f"RSS @ {n:,}" for n in ns)
    lines = [f"| stage | {head} | time vs linear @ {ns[-1]:,} | RSS growth (bytes/customer) |",
             "|---|" + "---:|" * (2 * len(ns) + 2)]
    for stage, e in summary["stages"].items():
        times = " | ".join(f"{t:.1f}" for t in e["wall_s"])
        rss = " | ".join(_mib(v) for v in e["peak_rss_bytes"])
        growth = (e.get("rss_bytes_per_customer") or [None])[-1]
        lines.append(f"| {stage} | {times} | {rss} | {e['time_vs_linear'][-1]:.2f} | "
                     f"{'' if growth is None else f'{growth:,.0f}'} |")
    return "\n".join(lines) + "\n\n(times in s, RSS in MiB; time vs linear = (t_N / t_0) / (N / N_0))"


def compare_table(compare: dict[str, Any]) -> str:
    """The peers' ratios beside gpuseg's, as markdown (ratio = peer time / gpuseg time)."""
    lines = ["| task | gpuseg (s) | peer | peer (s) | time ratio | quality |", "|---|---:|---|---:|---:|---|"]
    km = compare.get("kmeans") or {}
    if "gpuseg" in km:
        for name in ("sklearn_minibatch_kmeans", "faiss_kmeans"):
            p = km.get(name) or {}
            if "skipped" in p:
                lines.append(f"| k-means k={km['k']} | {km['gpuseg']['wall_s']:.2f} | {name} | | | {p['skipped']} |")
                continue
            lines.append(f"| k-means k={km['k']}, n={km['n']:,}, d={km['d']} | {km['gpuseg']['wall_s']:.2f} | {name} "
                         f"| {p['wall_s']:.2f} | {p['time_ratio']:.2f} | inertia ratio {p['inertia_ratio']:.3f}, "
                         f"ARI {p['ari_vs_gpuseg']:.3f} |")
    se = compare.get("search") or {}
    if "gpuseg" in se:
        name, p = next((k, v) for k, v in se.items() if k.startswith("faiss_"))
        lines.append(f"| exact search {se['queries']:,} x {se['n']:,}, k={se['k']} | {se['gpuseg']['search_s']:.2f} "
                     f"| {name} | {p['search_s']:.2f} | {p['search_time_ratio']:.2f} | "
                     f"neighbour overlap {p['neighbour_overlap']:.3f} |")
    tx = compare.get("text") or {}
    if "gpuseg" in tx:
        p = tx["sentence_transformers"]
        lines.append(f"| text encode {tx['texts']:,} texts | {tx['gpuseg']['wall_s']:.2f} | sentence-transformers "
                     f"| {p['wall_s']:.2f} | {p['time_ratio']:.2f} | mean cosine {p['mean_cosine_vs_gpuseg']:.4f} |")
    elif "skipped" in tx:
        lines.append(f"| text encode | | sentence-transformers | | | skipped: {tx['skipped']} |")
    return "\n".join(lines)


def _heading(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    where = m.get("gpu") or f"{m.get('cpu')} ({m.get('cpu_count')} CPUs)"
    config = payload.get("config") or {}
    ran = (config.get("bench") or {}).get("stages") or []
    left_out = [stage for stage in PIPELINE if stage not in ran]
    notes = [f"text.model={(config.get('text') or {}).get('model') or 'default'}"] if "text" in ran else []
    notes += [f"without {', '.join(left_out)}"] if left_out else []
    return (f"**{payload['n_customers']:,} customers**, device {payload['device']} ({where}), "
            f"{', '.join([*notes, payload['date'][:10]])}")


def render_markdown(folder: Path) -> str:
    """The README's tables from the newest bench result of each (device, size) in ``folder``.

    Parameters
    ----------
    folder : Path
        ``bench.results_dir``.
    """
    newest: dict[tuple[str, Any], dict[str, Any]] = {}
    for path in sorted(folder.glob("bench_*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("skipped %s: not a readable result file", path)
            continue
        if payload.get("benchmark") != "bench":
            continue
        key = (payload.get("device"), payload.get("n_customers") if payload.get("kind") != "scaling" else "scaling")
        if key not in newest or payload["date"] > newest[key]["date"]:
            newest[key] = payload
    if not newest:
        raise ConfigError(f"no gpuseg bench result files (bench_*.json) in '{folder}'; run `gpuseg bench` first",
                          config_key="bench.results_dir")
    parts = []
    for (_, size), payload in sorted(newest.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]).zfill(12))):
        if size == "scaling":
            parts.append(f"{_heading(payload['runs'][-1])}: scaling over N\n\n{scaling_table(payload['scaling'])}")
            continue
        if payload.get("failed"):
            continue
        parts.append(f"{_heading(payload)}\n\n{stage_table(payload)}")
        if payload.get("compare"):
            parts.append(f"Peers on the same data ({payload['n_customers']:,} customers)\n\n"
                         f"{compare_table(payload['compare'])}")
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- the job


def _result_path(folder: Path, device: str, tag: str) -> Path:
    return folder / f"bench_{device}_{tag}_{today()}.json"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Bench the pipeline at ``bench.n_customers`` (or each of ``bench.sizes``); write and print the results."""
    s = _settings(cfg)
    if cfg.bench.table_only:
        text = render_markdown(s["results_dir"])
        print(text, end="")
        return {"table": text}
    ctx = start(cfg, "bench", needs_device=True)
    device = ctx["device"].type
    overrides = _task_overrides()
    files, payloads = [], []
    for n in s["sizes"]:
        payload = _bench_size(cfg, s, n, overrides, device)
        path = write_json(_result_path(s["results_dir"], device, str(n)), payload)
        files.append(str(path))
        payloads.append(payload)
        print(f"\ngpuseg bench: {_heading(payload)}\n\n{stage_table(payload)}")
        if payload["compare"]:
            print(f"\n{compare_table(payload['compare'])}")
        if payload["failed"]:
            f = payload["failed"]
            raise GpusegError(f"{f['message']} at n_customers={n} (partial results in {path}); its log ends with:\n"
                              f"{f['log_tail']}")
    result: dict[str, Any] = {"results_dir": str(s["results_dir"]), "results_paths": files, "n_customers": s["sizes"],
                              "total_wall_s": [p["total"]["wall_s"] for p in payloads],
                              "peak_rss_bytes": [p["total"]["peak_rss_bytes"] for p in payloads]}
    if len(payloads) > 1:
        summary = scaling(payloads)
        path = write_json(_result_path(s["results_dir"], device, "scaling"),
                          {"benchmark": "bench", "kind": "scaling", "schema_version": SCHEMA_VERSION,
                           "date": utc_now(), "device": device, "scaling": summary,
                           "runs": [{k: p[k] for k in ("n_customers", "date", "device", "machine", "config")}
                                    for p in payloads], "files": files})
        print(f"\n{scaling_table(summary)}")
        result["scaling_path"] = str(path)
    return finish(cfg, "bench", ctx["manifest"], result)
