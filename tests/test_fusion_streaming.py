"""Streamed fusion and text aggregation: the same numbers as the in-memory paths, memory bounded by chunks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuseg.fusion import BlockFuser
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.matrix import BlockFile, NpyStreamWriter, read_matrix
from gpuseg.text.aggregate import (
    TextPart,
    aggregate_by_customer,
    aggregate_parts,
    customer_text_tables,
)


def _write_block(path, ids, X, name="v", row_group=37):
    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).reshape(-1)), X.shape[1])
    pq.write_table(pa.table({"customer_id": pa.array(ids), name: vec,
                             "flag": pa.array(X[:, 0] > 0)}), path, row_group_size=row_group)
    return path


def _data(n=300, seed=3):
    rng = np.random.default_rng(seed)
    ids = [f"c{i:04d}" for i in range(n)]
    tab = (rng.normal(size=(n, 5)) * [1, 10, 100, 0.1, 5] + 3).astype(np.float32)
    keep = np.sort(rng.choice(n, size=n - 70, replace=False))  # 70 customers without text, order kept
    text = (rng.normal(size=(len(keep), 24)) * 0.05).astype(np.float32)
    shuffled = rng.permutation(n)  # journeys in another order than the customers
    journey = rng.normal(size=(n, 8)).astype(np.float32)
    return ids, {"tabular": ([ids[i] for i in range(n)], tab),
                 "text": ([ids[i] for i in keep], text),
                 "journey": ([ids[i] for i in shuffled], journey[shuffled])}


def _reference(blocks, ids, weights_share=None):
    """The fusion recipe written out in float64 numpy, in memory (what streaming must reproduce)."""
    parts = []
    for bids, X in blocks.values():
        pos = {c: i for i, c in enumerate(bids)}
        present = np.array([c in pos for c in ids])
        aligned = np.zeros((len(ids), X.shape[1]))
        aligned[present] = X[[pos[c] for c in ids if c in pos]]
        mean, std = aligned[present].mean(0), aligned[present].std(0)
        Z = (aligned - mean) / np.where(std > 1e-12, std, 1)
        Z[~present] = 0
        if not present.all():
            f = present.astype(float)
            Z = np.hstack([Z, ((f - f.mean()) / f.std())[:, None]])
        parts.append(Z / np.sqrt(Z.var(0).sum()))
    return np.hstack(parts)


@pytest.mark.parametrize("pca,l2", [(None, False), (6, True)])
@pytest.mark.parametrize("chunk_rows", [7, 64, 100_000])
def test_streamed_files_equal_in_memory_and_float64_reference(tmp_path, pca, l2, chunk_rows):
    ids, blocks = _data()
    files = {name: BlockFile(_write_block(tmp_path / f"{name}.parquet", b_ids, X), ["v"], where=f"block {name!r}")
             for name, (b_ids, X) in blocks.items()}
    memory = BlockFuser(pca_components=pca, l2_normalize=l2, device="cpu")
    ref_ids, expected = memory.fit_transform(blocks, ids=ids)
    streamed = BlockFuser(pca_components=pca, l2_normalize=l2, device="cpu", chunk_rows=chunk_rows)
    out_ids, chunks = streamed.fit_transform_chunks(files, ids=ids, scratch_dir=tmp_path / "scratch")
    got = list(chunks)
    assert all(len(c) <= chunk_rows and c.dtype == np.float32 for c in got)
    X = np.concatenate(got)
    assert out_ids.to_pylist() == ids == ref_ids.to_pylist()
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=2e-6)
    for b in memory.blocks_:
        np.testing.assert_allclose(streamed.means_[b], memory.means_[b], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(streamed.scales_[b], memory.scales_[b], rtol=1e-6)
        assert streamed.block_weights_[b] == pytest.approx(memory.block_weights_[b], rel=1e-6)
    # the realigned journey block's scratch file is gone once the chunks are consumed
    assert not list((tmp_path / "scratch").glob("**/*.npy"))
    if pca is None:
        np.testing.assert_allclose(X, _reference(blocks, ids), rtol=1e-4, atol=2e-5)
    else:
        np.testing.assert_allclose(np.abs(streamed.components_ @ memory.components_.T).diagonal(), 1, atol=1e-5)
        # transform() of the saved, reloaded transform streams from the files to the same rows
        streamed.save(tmp_path / "t")
        _, again = BlockFuser.load(tmp_path / "t.json", device="cpu").transform_chunks(files, ids=ids)
        np.testing.assert_allclose(np.concatenate(list(again)), X, atol=1e-6)


def test_streaming_reads_the_block_file_in_bounded_batches(tmp_path, monkeypatch):
    ids, blocks = _data(n=500)
    path = _write_block(tmp_path / "t.parquet", *blocks["tabular"], row_group=50)
    seen = []
    original = BlockFile.batches

    def spy(self, batch_rows=65536):
        for x in original(self, batch_rows):
            seen.append(len(x))
            yield x

    monkeypatch.setattr(BlockFile, "batches", spy)
    fuser = BlockFuser(device="cpu", chunk_rows=32)
    _, chunks = fuser.fit_transform_chunks({"t": BlockFile(path)}, ids=ids)
    assert sum(len(c) for c in chunks) == 500
    assert max(seen) <= 32 and sum(seen) == 2 * 500  # one pass for the moments, one for the rows


def test_block_file_errors_name_the_block_and_rows(tmp_path):
    X = np.ones((4, 3), np.float32)
    X[2, 1] = np.nan
    path = _write_block(tmp_path / "b.parquet", ["a", "b", "c", "d"], X)
    with pytest.raises(UserInputError, match=r"block 'text' has rows with NaN.*first rows \[2\]"):
        BlockFuser(device="cpu").fit({"text": BlockFile(path, ["v"], where="block 'text'")})
    with pytest.raises(UserInputError, match=r"block 'text' has no column\(s\) \['w'\]"):
        BlockFile(path, ["w"], where="block 'text'")
    with pytest.raises(UserInputError, match="chunk_rows"):
        BlockFuser(chunk_rows=0).fit({"t": (["a", "b"], np.eye(2))})


def test_npy_stream_writer_and_read_matrix(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3)).astype(np.float32)
    with NpyStreamWriter(tmp_path / "m.npy", 10, 3) as w:
        for s in range(0, 10, 4):
            w.write(X[s:s + 4])
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy", mmap_mode="r"), X)
    with pytest.raises(ValueError, match="6 rows written of 10"), NpyStreamWriter(tmp_path / "short.npy", 10, 3) as w:
        w.write(X[:6])
    assert not (tmp_path / "short.npy").exists() and not list(tmp_path.glob(".*.tmp"))
    path = _write_block(tmp_path / "b.parquet", [f"x{i}" for i in range(10)], X, row_group=3)
    ids, M, names = read_matrix(path)
    assert ids.to_pylist() == [f"x{i}" for i in range(10)] and names == ["v[0]", "v[1]", "v[2]", "flag"]
    np.testing.assert_array_equal(M[:, :3], X)
    np.testing.assert_array_equal(M[:, 3], X[:, 0] > 0)


def _texts(n_texts=400, n_customers=60, dim=5, seed=1):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_texts, dim)).astype(np.float32)
    emb[rng.random(n_texts) < 0.05] = 0  # empty texts
    cust = rng.integers(0, n_customers - 5, size=n_texts)  # the last 5 customers have no text
    as_of = np.datetime64("2024-06-30", "us")
    ts = as_of - rng.integers(-20, 400, size=n_texts) * np.timedelta64(1, "D")  # some after as_of
    ts[::17] = np.datetime64("NaT")
    src = rng.choice(["review", "ticket", "chat"], size=n_texts).astype(object)
    src[::23] = None
    return emb, cust, ts, src, as_of


@pytest.mark.parametrize("part_rows,customer_rows", [(400, None), (33, 7), (1, 60)])
def test_streamed_text_aggregation_equals_the_whole(part_rows, customer_rows):
    emb, cust, ts, src, as_of = _texts()
    whole = aggregate_by_customer(emb, cust, ts, src, 60, as_of=as_of, half_life_days=30)

    def parts():
        for s in range(0, len(emb), part_rows):
            yield TextPart(emb[s:s + part_rows], cust[s:s + part_rows], ts[s:s + part_rows], src[s:s + part_rows])

    got = list(aggregate_parts(parts, 60, 5, as_of=as_of, half_life_days=30, customer_rows=customer_rows))
    assert [s for s, _ in got] == list(range(0, 60, customer_rows or 60))
    for key, value in whole.items():
        streamed = np.concatenate([a[key] for _, a in got])
        assert streamed.dtype == value.dtype and streamed.shape == value.shape, key
        np.testing.assert_allclose(streamed, value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert whole["has_text"][-5:].sum() == 0 and whole["has_text"].sum() > 40
    # as_of and the sources read from the data take a first pass over the parts: the same result
    _, auto = next(aggregate_parts(parts, 60, 5, customer_rows=60))
    np.testing.assert_allclose(auto["ticket_mean"], aggregate_by_customer(emb, cust, ts, src, 60)["ticket_mean"],
                               rtol=1e-5, atol=1e-6)


def test_customer_text_tables_stream_in_customer_order(tmp_path):
    emb, cust, ts, src, as_of = _texts()
    ids = [f"c{i:02d}" for i in range(60)]
    whole = aggregate_by_customer(emb, cust, ts, src, 60, as_of=as_of)
    tables = list(customer_text_tables(lambda: [TextPart(emb, cust, ts, src)], ids, 5, as_of=as_of, memory_mb=1e-3))
    assert len(tables) > 1  # a tiny budget gives several ranges
    table = pa.concat_tables(tables)
    assert table["customer_id"].to_pylist() == ids
    mat = table["all_mean"].combine_chunks().values.to_numpy().reshape(-1, 5)
    np.testing.assert_allclose(mat, whole["all_mean"], rtol=1e-6)
    empty = list(customer_text_tables(lambda: [], [], 5, as_of=as_of))
    assert len(empty) == 1 and empty[0].num_rows == 0
