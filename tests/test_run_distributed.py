"""``gpuseg run`` under torchrun with 2 gloo processes against 1 process, on the same small data.

Both runs go through a launcher that records every file rename (``os.replace``: the last step of
every atomic write and of every publish) per rank, so the test can tell who wrote what.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import adjusted_rand_score

from gpuseg.runtime import distributed as ddp
from gpuseg.runtime.publish import RECORD

LAUNCHER = '''
import os, sys
log = open(os.environ["WRITES_LOG"] + "." + os.environ.get("RANK", "0"), "a")
_replace = os.replace

def replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    log.write(os.fspath(dst) + "\\n")
    log.flush()

os.replace = replace
fail = os.environ.get("FAIL_SEGMENT_ON_RANK")
if fail is not None and os.environ.get("RANK", "0") == fail:
    import gpuseg.jobs.segment as segment

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure in the k-means fit")

    segment._kmeans = broken
from gpuseg.cli import main
sys.exit(main())
'''

#: small settings that keep every stage (text and journeys included) to seconds
SETTINGS = ["data=custom", "data.as_of=2025-01-01", "data.customers.numeric=[age]", "data.customers.categorical=[region]",
            "data.customers.labels=[churned]", "data.texts.path=${data.dir}/texts.csv", "progress=false",
            "device=cpu", "seed=0", "journey.epochs=1", "journey.hidden_size=32", "journey.num_layers=1",
            "journey.out_dim=16", "text.max_length=32", "text.chunk_rows=100", "segment.n_clusters=4",
            "segment.confidence.n_bootstrap=1"]
#: planted groups: (event mix, amounts, category, channel, what they write), clear in every block
GROUPS = [
    ({"purchase": 0.8, "page_view": 0.2}, 250.0, "electronics", "web", "fast delivery, the laptop works great"),
    ({"purchase": 0.3, "page_view": 0.7}, 15.0, "books", "store", "a lovely novel, wrapped with care"),
    ({"page_view": 0.9, "purchase": 0.1}, 40.0, "garden", "app", "the app keeps crashing when I browse"),
    ({"support_ticket": 0.4, "return": 0.3, "purchase": 0.3}, 80.0, "fashion", "web",
     "refund still missing, the jacket was torn"),
]
N_PER_GROUP = 100


def _write_data(folder: Path) -> None:
    """Customers, events and texts of planted groups as CSV files (``c<group><number>`` ids)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    customers, events, texts = [], [], []
    start = np.datetime64("2024-01-01T00:00:00")
    for g, (mix, amount, category, channel, text) in enumerate(GROUPS):
        kinds, probs = list(mix), np.array(list(mix.values()))
        for i in range(N_PER_GROUP):
            cid = f"c{g}{i:04d}"
            customers.append(f"{cid},{20 + 10 * g + rng.integers(0, 5)},r{g},{int(g == 3)}")
            n = int(rng.integers(8, 16) * (3 if g in (0, 2) else 1))
            for t in np.sort(rng.integers(0, 360 * 86400, n)):
                kind = kinds[rng.choice(len(kinds), p=probs)]
                value = f"{amount * rng.uniform(0.8, 1.2):.2f}" if kind in ("purchase", "return") else ""
                events.append(f"{cid},{start + np.timedelta64(int(t), 's')},{kind},{value},{category},{channel}")
            if i % 2 == 0:
                when = start + np.timedelta64(int(rng.integers(0, 360 * 86400)), "s")
                texts.append(f"{cid},{when},{'ticket' if g == 3 else 'review'},\"{text} ({i % 7})\",{1 + g}")
    (folder / "customers.csv").write_text("customer_id,age,region,churned\n" + "\n".join(customers) + "\n")
    (folder / "events.csv").write_text("customer_id,timestamp,event_type,amount,category,channel\n"
                                       + "\n".join(events) + "\n")
    (folder / "texts.csv").write_text("customer_id,timestamp,source,text,rating\n" + "\n".join(texts) + "\n")
STAGES = ("validate", "features", "text", "journeys", "fuse", "segment", "profile")
FOLDERS = {"validate": "validated", "features": "features", "text": "text", "journeys": "journeys",
           "fuse": "fuse", "segment": "segment", "profile": "profile"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(log: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "SLURM_JOB_ID")}
    return {**env, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "WRITES_LOG": str(log),
            "HYDRA_FULL_ERROR": "0", **extra}


def _gpuseg(launcher: Path, work: Path, data: Path, nproc: int, log: Path, *, timeout: int = 300,
            extra: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    args = ["run", f"paths.work_dir={work}", f"paths.data_dir={data}", *SETTINGS, *extra]
    if nproc == 1:
        command = [sys.executable, str(launcher), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
                   str(launcher), *args]
    return subprocess.run(command, cwd=work.parent, env=_env(log, **env), capture_output=True, text=True,
                          timeout=timeout)


def _writes(log: Path, rank: int, work: Path) -> list[str]:
    path = Path(f"{log}.{rank}")
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if Path(line).resolve().is_relative_to(work.resolve())]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_distributed")
    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER)
    data = root / "data"
    _write_data(data)
    out = {}
    for name, nproc in (("single", 1), ("two", 2)):
        work = root / name
        work.mkdir()
        t0 = time.perf_counter()
        # two ranks: segment reads the fused matrix from disk by blocks (the path a large base takes)
        extra = ("segment.memory_mb=0.25",) if nproc == 2 else ()
        proc = _gpuseg(launcher, work, data, nproc, root / f"{name}.writes", extra=extra)
        assert proc.returncode == 0, proc.stderr[-4000:]
        out[name] = {"work": work, "log": root / f"{name}.writes", "seconds": time.perf_counter() - t0}
    out["root"], out["launcher"], out["data"] = root, launcher, data
    return out


def test_two_ranks_segment_the_same_customers_as_one(runs):
    single = pq.read_table(runs["single"]["work"] / "segment" / "segments.parquet")
    two = pq.read_table(runs["two"]["work"] / "segment" / "segments.parquet")
    customers = pq.read_table(runs["single"]["work"] / "validated" / "customers.parquet")
    assert two["customer_id"].to_pylist() == single["customer_id"].to_pylist() == customers["customer_id"].to_pylist()
    ari = adjusted_rand_score(single["segment"].to_numpy(), two["segment"].to_numpy())
    assert ari >= 0.95, ari
    planted = [int(c[1]) for c in single["customer_id"].to_pylist()]  # c<group><number>
    found = [adjusted_rand_score(planted, t["segment"].to_numpy()) for t in (single, two)]
    assert found[0] > 0.5 and abs(found[0] - found[1]) <= 0.05, found  # both find the groups as well
    metrics = json.loads((runs["two"]["work"] / "segment" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n_customers"] == customers.num_rows
    # the two-rank fit read its shards from the matrix file, the single one held the matrix
    assert metrics["read_by_blocks"] and metrics["read_by_blocks"] < customers.num_rows
    assert json.loads((runs["single"]["work"] / "segment" / "metrics.json").read_text())["read_by_blocks"] is None
    # the data-parallel stages did run on both ranks
    text = json.loads((runs["two"]["work"] / "text" / "metrics.json").read_text())
    journeys = json.loads((runs["two"]["work"] / "journeys" / "metrics.json").read_text())
    assert text["world_size"] == 2 and journeys["world_size"] == 2
    # the stages that run on one rank made the same outputs as in one process
    for job, name in (("features", "matrix.parquet"), ("validated", "customers.parquet")):
        a = pq.read_table(runs["single"]["work"] / job / name)
        b = pq.read_table(runs["two"]["work"] / job / name)
        assert a.schema == b.schema and a.num_rows == b.num_rows
    np.testing.assert_array_equal(
        pq.read_table(runs["single"]["work"] / "features" / "matrix.parquet").drop(["customer_id"]).to_pandas().to_numpy(),
        pq.read_table(runs["two"]["work"] / "features" / "matrix.parquet").drop(["customer_id"]).to_pandas().to_numpy())


def test_every_artifact_is_written_once_by_rank_0_and_published(runs):
    work, log = runs["two"]["work"], runs["two"]["log"]
    rank0, rank1 = _writes(log, 0, work), _writes(log, 1, work)
    # rank 1 wrote its share of the text chunks (into the text staging folder), and nothing else
    share = f"{os.sep}.staging{os.sep}text{os.sep}parts{os.sep}part-"
    assert rank1 and all(share in w for w in rank1), rank1
    assert not set(rank0) & set(rank1)  # no file written by both
    for stage in STAGES:
        folder = work / FOLDERS[stage]
        record = json.loads((folder / RECORD).read_text())  # staged and published, as in one process
        assert record["job"] == stage
        for name, size in record["files"].items():
            assert (folder / name).stat().st_size == size
        # each published file was written (renamed into place) once, in the staging folder
        staged = [w for w in rank0 if f"{os.sep}.staging{os.sep}{FOLDERS[stage]}{os.sep}" in w]
        assert len(staged) == len(set(staged)), stage
    # nothing was left behind, and both runs published the same files
    assert not list((work / ".staging").glob("*")) if (work / ".staging").exists() else True
    for stage in STAGES:
        one = json.loads((runs["single"]["work"] / FOLDERS[stage] / RECORD).read_text())["files"]
        two = json.loads((work / FOLDERS[stage] / RECORD).read_text())["files"]
        assert sorted(one) == sorted(two), stage
    manifest = json.loads((work / "manifests" / "run.json").read_text())
    assert manifest["result"]["world_size"] == 2 and manifest["result"]["stages"][-len(STAGES):] == list(STAGES)


def _lookalike(runs, nproc: int, log: Path, *extra: str) -> subprocess.CompletedProcess:
    """``gpuseg lookalike`` over the two-rank run's fused matrix, in ``nproc`` processes."""
    work = runs["two"]["work"]
    args = ["lookalike", f"paths.work_dir={work}", "progress=false", "device=cpu", "seed=0",
            "lookalike.seeds=[c00001,c00002,c30005]", "lookalike.size=60", "lookalike.mode=max", *extra]
    if nproc == 1:
        command = [sys.executable, str(runs["launcher"]), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
                   str(runs["launcher"]), *args]
    return subprocess.run(command, cwd=work.parent, env=_env(log), capture_output=True, text=True, timeout=300)


def test_two_ranks_each_holding_an_index_shard_find_the_single_process_audience(runs):
    work, root = runs["two"]["work"], runs["root"]
    audiences = {}
    for nproc in (1, 2):
        proc = _lookalike(runs, nproc, root / f"lookalike{nproc}.writes")
        assert proc.returncode == 0, proc.stderr[-4000:]
        audiences[nproc] = pq.read_table(work / "lookalike" / "audience.parquet").drop(["why_similar"])
        metrics = json.loads((work / "lookalike" / "metrics.json").read_text())
        assert metrics["world_size"] == nproc and metrics["n_customers"] == 4 * N_PER_GROUP
    # exact search: the same customers, in the same order, with the same nearest seeds
    one, two = audiences[1], audiences[2]
    assert one.num_rows == 60
    assert two["customer_id"].to_pylist() == one["customer_id"].to_pylist()
    assert two["nearest_seed"].to_pylist() == one["nearest_seed"].to_pylist()
    np.testing.assert_allclose(two["score"].to_numpy(), one["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    # each rank built and saved its own shard, rank 1 nothing but its shard; rank 0 wrote the rest once
    log = root / "lookalike2.writes"
    rank0, rank1 = _writes(log, 0, work), _writes(log, 1, work)
    assert rank1 and all(f"{os.sep}index{os.sep}shard-1-of-2{os.sep}" in w for w in rank1), rank1
    assert not set(rank0) & set(rank1)
    shards = [json.loads((work / "lookalike" / "index" / f"shard-{r}-of-2" / "source.json").read_text())["rows"]
              for r in (0, 1)]
    assert shards == [[0, 200], [200, 400]]
    # each rank logged to its own file in the run's log folder; rank 0's config is the record
    # (the ranks compose their run folder's time apart: it may differ by a second)
    logs = work / "logs" / "lookalike"
    main_logs = [f.read_text() for f in logs.glob("*/lookalike.log")]
    assert any("rank 0 of 2" in text for text in main_logs)
    assert not any("rank 1 of 2" in text for text in main_logs)
    assert any("rank 1 of 2" in f.read_text() for f in logs.glob("*/lookalike.rank1.log"))
    # run again: every shard is reused
    proc = _lookalike(runs, 2, root / "lookalike2b.writes")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((work / "lookalike" / "metrics.json").read_text())["index_reused"] is True


def test_a_rank_failing_in_the_shared_fit_stops_the_job(runs, tmp_path):
    """Rank 1 fails inside the data-parallel k-means fit while rank 0 waits in a collective."""
    work = tmp_path / "failing"
    work.mkdir()
    for job in ("validated", "features", "text", "journeys", "fuse"):  # start from the two-rank run's outputs
        os.symlink(runs["two"]["work"] / job, work / job)
    t0 = time.perf_counter()
    proc = _gpuseg(runs["launcher"], work, runs["data"], 2, tmp_path / "failing.writes", timeout=120,
                   FAIL_SEGMENT_ON_RANK="1", GPUSEG_DIST_TIMEOUT_S="60")
    seconds = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "injected failure in the k-means fit" in proc.stderr
    assert seconds < 100  # torchrun stops rank 0: nobody waits for the collective timeout
    assert not (work / "segment").exists()  # nothing published


def _on_main_worker(rank, world, init_file, out_dir):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        calls = []

        def alone():
            calls.append(ddp.rank_and_world())  # collectives are no-ops on rank 0 in here
            return "done"

        result = ddp.on_main(alone, what="test work")

        def broken():
            raise ValueError("rank 0 failed on purpose")

        t0 = time.perf_counter()
        try:
            ddp.on_main(broken, what="the broken stage")
            failure = None
        except (ValueError, ddp.PeerFailed) as err:
            failure = f"{type(err).__name__}: {err}"
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
            "result": result, "calls": calls, "failure": failure, "seconds": time.perf_counter() - t0,
            "shard": ddp.shard_bounds(11)}))
    finally:
        dist.destroy_process_group()


def test_on_main_runs_once_and_tells_the_others_when_it_fails(tmp_path):
    mp.spawn(_on_main_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["result"] == "done" and r1["result"] is None
    assert r0["calls"] == [[0, 1]] and r1["calls"] == []
    assert r0["failure"] == "ValueError: rank 0 failed on purpose"
    assert r1["failure"].startswith("PeerFailed:") and "the broken stage" in r1["failure"]
    assert r1["seconds"] < 30  # told at once, not after a timeout
    assert r0["shard"] == [0, 6] and r1["shard"] == [6, 11]
