"""``gpuseg segment`` above its memory budget: the matrix read from disk block by block.

:class:`~gpuseg.runtime.matrix.MatrixFile` reads a ``.npy`` by row slices and gathers;
``segment.memory_mb`` decides whether the job holds the matrix whole or reads it from the file;
the same seed gives the same segments either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import synthetic_project

from gpuseg.cluster import MiniBatchKMeans
from gpuseg.jobs import segment
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.matrix import MatrixFile, open_matrix, read_matrix


def _rss_file_kb() -> int:
    """This process's resident file-backed pages (kB), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def _vector_parquet(path: Path, x: np.ndarray) -> Path:
    ids = pa.array([f"c{i:05d}" for i in range(len(x))])
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
    pq.write_table(pa.table({"customer_id": ids, "fused": vectors}), path, row_group_size=97)
    return path


def test_matrix_file_reads_slices_gathers_and_views(tmp_path):
    x = np.random.default_rng(0).normal(size=(1000, 7)).astype(np.float32)
    np.save(tmp_path / "m.npy", x)
    with MatrixFile(tmp_path / "m.npy") as m:
        assert m.shape == (1000, 7) and m.dtype == np.float32 and len(m) == 1000
        np.testing.assert_array_equal(m[10:20], x[10:20])
        np.testing.assert_array_equal(m[990:2000], x[990:])  # clipped like numpy
        idx = np.array([999, 3, 3, 500, -1, 0])
        np.testing.assert_array_equal(m[idx], x[idx])  # any order, repeats, negative indices
        np.testing.assert_array_equal(m.take(np.arange(0, 1000, 3)), x[::3])
        shard = m.view(200, 400)
        assert shard.shape == (200, 7)
        np.testing.assert_array_equal(shard[0:5], x[200:205])
        np.testing.assert_array_equal(shard[[199, 0]], x[[399, 200]])
        assert [s for s, _ in m.blocks(300)] == [0, 300, 600, 900]
        np.testing.assert_array_equal(np.concatenate([b for _, b in m.blocks(300)]), x)
        with pytest.raises(IndexError):
            m[[1000]]
        with pytest.raises(IndexError):
            m[0:10:2]


def test_matrix_file_gathers_keep_no_file_pages(tmp_path):
    """A gather over every row of a 64 MB file leaves (almost) none of it resident."""
    n, d = 65536, 256
    path = tmp_path / "big.npy"
    np.save(path, np.ones((n, d), np.float32))
    with MatrixFile(path) as m:
        before = _rss_file_kb()
        rows = m.take(np.random.default_rng(0).permutation(n)[: n // 2])
        assert rows.shape == (n // 2, d)
        grown = _rss_file_kb() - before
        assert grown < 16 * 1024, f"{grown} kB of the file stayed resident"
        mapped = np.load(path, mmap_mode="r")  # what a plain memmap keeps, for contrast
        np.asarray(mapped[np.arange(0, n, 2)])
        assert _rss_file_kb() - before > 32 * 1024


def test_matrix_file_refuses_what_is_not_a_2d_matrix(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(UserInputError, match="2-D"):
        MatrixFile(tmp_path / "cube.npy")
    np.save(tmp_path / "short.npy", np.zeros((100, 4), np.float32))
    data = (tmp_path / "short.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-64])
    with pytest.raises(UserInputError, match="shorter than its header"):
        MatrixFile(tmp_path / "short.npy")
    (tmp_path / "text.npy").write_text("not a matrix")
    with pytest.raises(UserInputError, match="not a readable .npy"):
        MatrixFile(tmp_path / "text.npy")


def test_open_matrix_streams_a_parquet_without_npy(tmp_path):
    x = np.random.default_rng(1).normal(size=(500, 5)).astype(np.float32)
    parquet = _vector_parquet(tmp_path / "users.parquet", x)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ids, m, names = open_matrix(parquet, scratch, batch_rows=64)
    with m:
        assert m.path == scratch / "users.npy"
        want_ids, want, want_names = read_matrix(parquet)
        assert ids.equals(want_ids) and names == want_names == [f"fused[{i}]" for i in range(5)]
        np.testing.assert_array_equal(m[0:500], want)


def test_open_matrix_checks_the_npy_beside_its_parquet(tmp_path):
    x = np.random.default_rng(2).normal(size=(300, 4)).astype(np.float32)
    parquet = _vector_parquet(tmp_path / "fused.parquet", x)
    np.save(tmp_path / "fused.npy", x)
    _, m, _ = open_matrix(parquet, tmp_path, batch_rows=50)
    with m:
        assert m.path == tmp_path / "fused.npy"
        np.testing.assert_array_equal(m[0:300], x)
    np.save(tmp_path / "fused.npy", x[:299])
    with pytest.raises(UserInputError, match=r"fused\.npy' does not match .*fused\.parquet"):
        open_matrix(parquet, tmp_path)
    bad = x.copy()
    bad[123, 2] = np.nan
    np.save(tmp_path / "fused.npy", bad)
    with pytest.raises(UserInputError, match=r"NaN or infinity \(first rows \[123\]\)"):
        open_matrix(parquet, tmp_path, batch_rows=50)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("segstream") / "work"
    return work, synthetic_project(work, 600)


def _outputs(work: Path) -> tuple[pa.Table, np.ndarray, dict, dict]:
    folder = work / "segment"
    assert not list(folder.glob(".matrix-*")), "the temporary matrix outlived the run"
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("seconds")
    metrics["read_by_blocks"] = metrics["read_by_blocks"] is not None  # the block size is the budget's
    segmentation = json.loads((folder / "segmentation.json").read_text())
    segmentation.pop("config_hash")  # memory_mb is part of the config
    return (pq.read_table(folder / "segments.parquet"),
            MiniBatchKMeans.load(folder / "kmeans", device="cpu").cluster_centers_, segmentation, metrics)


@pytest.mark.parametrize("overrides", [("segment.k_min=3", "segment.k_max=5", "segment.selection.n_bootstrap=1"),
                                       ("segment.n_clusters=6", "segment.confidence.n_bootstrap=2")],
                         ids=["auto_k", "fixed_k"])
def test_streamed_segments_equal_resident_ones(project, caplog, overrides):
    """memory_mb below the matrix (600 x ~40 x 4 bytes) reads it from disk: same outputs, same seed."""
    work, cfg = project
    segment.run(cfg("segment", "device=cpu", "segment.memory_mb=1024", *overrides))
    resident = _outputs(work)
    with caplog.at_level("INFO", logger="gpuseg.jobs.segment"):
        segment.run(cfg("segment", "device=cpu", "segment.memory_mb=0.01", *overrides))
    assert "above segment.memory_mb" in caplog.text  # the streamed path was taken
    streamed = _outputs(work)
    assert streamed[0].equals(resident[0])
    np.testing.assert_array_equal(streamed[1], resident[1])
    assert streamed[3].pop("read_by_blocks") and not resident[3].pop("read_by_blocks")
    assert streamed[2] == resident[2] and streamed[3] == resident[3]


def test_streamed_segments_read_the_npy_beside_the_input(project, tmp_path):
    """A Parquet input with its ``.npy`` beside (as fuse writes): that file is read, same result."""
    work, cfg = project
    _, x, _ = read_matrix(work / "features" / "matrix.parquet")
    parquet = _vector_parquet(tmp_path / "fused.parquet", x)
    runs = {}
    for budget in ("1024", "0.01"):
        segment.run(cfg("segment", "device=cpu", "segment.n_clusters=4", f"segment.input={parquet}",
                        f"segment.memory_mb={budget}"))
        runs[budget] = _outputs(work)
    np.save(tmp_path / "fused.npy", x)
    segment.run(cfg("segment", "device=cpu", "segment.n_clusters=4", f"segment.input={parquet}",
                    "segment.memory_mb=0.01"))
    beside = _outputs(work)
    assert runs["0.01"][0].equals(runs["1024"][0]) and beside[0].equals(runs["1024"][0])
    np.testing.assert_array_equal(beside[1], runs["1024"][1])
    np.save(tmp_path / "fused.npy", x[:, :-1])
    with pytest.raises(UserInputError, match="does not match"):
        segment.run(cfg("segment", "device=cpu", "segment.n_clusters=4", f"segment.input={parquet}",
                        "segment.memory_mb=0.01"))


@pytest.mark.parametrize("value", [0, -5, "lots"])
def test_memory_budget_is_checked(project, value):
    _, cfg = project
    with pytest.raises(ConfigError, match="memory_mb") as err:
        segment.run(cfg("segment", "device=cpu", "segment.n_clusters=3", f"segment.memory_mb={value}"))
    assert err.value.config_key == "segment.memory_mb"


def test_a_shard_of_the_file_fits_like_the_same_rows_in_memory(tmp_path):
    """What a torchrun rank fits, ``x[lo:hi]``: the file's view gives the tensor's centres."""
    import torch

    x = np.random.default_rng(3).normal(size=(900, 6)).astype(np.float32)
    np.save(tmp_path / "m.npy", x)
    cpu = torch.device("cpu")
    with MatrixFile(tmp_path / "m.npy") as m:
        file_rows = segment._Rows(m, cpu, block_rows=50)
        memory_rows = segment._Rows(torch.from_numpy(x), cpu, block_rows=65536)
        fits = [MiniBatchKMeans(n_clusters=5, random_state=0, device="cpu", batch_size=64)
                .fit(rows.fit_input(300, 800, world=2)) for rows in (file_rows, memory_rows)]
        np.testing.assert_array_equal(fits[0].cluster_centers_, fits[1].cluster_centers_)
        assert fits[0].labels_.shape == (500,)
        np.testing.assert_array_equal(segment._predict(fits[0], file_rows), segment._predict(fits[1], memory_rows))
