"""``BlockFuser``: alignment, missing blocks, equal-variance weights, PCA/L2, save/load."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import DEVICES

from gpuseg.fusion import BlockFuser, block_from_table
from gpuseg.runtime.errors import UserInputError


def _blocks(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    ids = [f"c{i:04d}" for i in range(n)]
    tab = rng.normal(size=(n, 6)) * np.array([1, 10, 100, 0.1, 5, 2]) + 3
    text = rng.normal(size=(n - 40, 48)) * 0.05  # 40 customers without text
    journey = rng.normal(size=(n, 16))
    text_ids = ids[40:][::-1]  # another order than the reference
    return ids, {"tabular": (ids, tab), "text": (text_ids, text), "journey": (ids, journey)}


@pytest.mark.parametrize("device", DEVICES)
def test_missing_block_gets_zeros_and_flag_and_every_customer_is_kept(device):
    ids, blocks = _blocks()
    fuser = BlockFuser(device=device)
    out_ids, X = fuser.fit_transform(blocks, ids=ids)
    assert out_ids.to_pylist() == ids and X.shape[0] == len(ids) and X.dtype == np.float32
    assert fuser.flagged_ == {"tabular": False, "text": True, "journey": False}
    assert fuser.block_columns_["text"][-1] == "text__present"
    names = fuser.feature_names_out_
    text_cols = [i for i, c in enumerate(names) if c.startswith("text:text[")]
    flag = names.index("text:text__present")
    # customers without a text row: the block mean (0 after standardisation) and the flag low
    assert np.all(X[:40][:, text_cols] == 0)
    assert np.unique(X[:40, flag]).size == 1 and np.all(X[40:, flag] > X[0, flag])
    # the text rows are aligned on customer id, not on position
    t_ids, t_vals = blocks["text"][0], blocks["text"][1]
    row = t_ids.index("c0100")
    expected = (t_vals[row] - fuser.means_["text"][:48]) / fuser.scales_["text"][:48] * fuser.block_weights_["text"]
    np.testing.assert_allclose(X[100, text_cols], expected, rtol=1e-5, atol=1e-6)
    # the union of the blocks' ids when no reference is given
    union_ids, _ = BlockFuser().fit_transform({"a": (["x", "y"], np.eye(2)), "b": (["z", "y"], np.eye(2))})
    assert union_ids.to_pylist() == ["x", "y", "z"]


def test_equal_variance_gives_each_block_the_same_total_variance():
    ids, blocks = _blocks()
    fuser = BlockFuser()
    _, X = fuser.fit_transform(blocks, ids=ids)
    widths = [len(fuser.block_columns_[b]) for b in fuser.blocks_]
    starts = np.cumsum([0, *widths])
    totals = [X[:, a:b].astype(np.float64).var(0).sum() for a, b in zip(starts[:-1], starts[1:], strict=True)]
    np.testing.assert_allclose(totals, 1.0, rtol=1e-4)
    assert fuser.variance_shares_ == pytest.approx({b: 1 / 3 for b in fuser.blocks_})
    # without reweighting the 48-dim text block dominates
    plain = BlockFuser(weights="none").fit(blocks, ids=ids)
    assert plain.variance_shares_["text"] > 0.6
    # a dict sets each block's share of the total variance
    shares = BlockFuser(weights={"tabular": 2.0, "text": 1.0, "journey": 1.0}).fit(blocks, ids=ids).variance_shares_
    assert shares == pytest.approx({"tabular": 0.5, "text": 0.25, "journey": 0.25})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pca,l2", [(None, False), (8, False), (0.9, True)])
def test_transform_on_new_data_reproduces_fit_and_survives_save_load(tmp_path, device, pca, l2):
    ids, blocks = _blocks()
    fuser = BlockFuser(pca_components=pca, l2_normalize=l2, device=device)
    _, X = fuser.fit_transform(blocks, ids=ids)
    _, again = fuser.transform(blocks, ids=ids)
    np.testing.assert_allclose(again, X, atol=1e-5)
    # a subset of customers in another order: the same rows
    sub = ids[::-7]
    new = {name: (list(b_ids), vals) for name, (b_ids, vals) in blocks.items()}
    sub_ids, sub_X = fuser.transform(new, ids=sub)
    np.testing.assert_allclose(sub_X, X[[ids.index(i) for i in sub]], atol=1e-5)
    fuser.save(tmp_path / "transform")
    assert (tmp_path / "transform.json").exists() and (tmp_path / "transform.safetensors").exists()
    loaded = BlockFuser.load(tmp_path / "transform.json", device=device)
    np.testing.assert_allclose(loaded.transform(blocks, ids=ids)[1], X, atol=1e-5)
    if pca is None:
        assert X.shape[1] == 6 + 49 + 16 and fuser.components_ is None
    else:
        comps = fuser.components_
        np.testing.assert_allclose(comps @ comps.T, np.eye(comps.shape[0]), atol=1e-8)
        if isinstance(pca, int):
            assert X.shape[1] == pca
        else:
            assert fuser.explained_variance_ratio_.sum() >= 0.9
            assert fuser.explained_variance_ratio_[:-1].sum() < 0.9
        # the components are ordered by variance
        assert np.all(np.diff(X.astype(np.float64).var(0)) <= 1e-6) or l2
    if l2:
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_bad_parameters_and_inputs_are_clear_errors():
    ids, blocks = _blocks()
    with pytest.raises(UserInputError, match="'weights' parameter of BlockFuser"):
        BlockFuser(weights="equal").fit(blocks)
    with pytest.raises(UserInputError, match="names blocks \\['nope'\\]"):
        BlockFuser(weights={"nope": 1.0}).fit(blocks)
    with pytest.raises(UserInputError, match="'pca_components' parameter"):
        BlockFuser(pca_components=0).fit(blocks)
    with pytest.raises(UserInputError, match="at most"):
        BlockFuser(pca_components=500).fit(blocks)
    with pytest.raises(UserInputError, match="not fitted"):
        BlockFuser().transform(blocks)
    fuser = BlockFuser().fit(blocks, ids=ids)
    with pytest.raises(UserInputError, match="missing \\['journey'\\]"):
        fuser.transform({k: v for k, v in blocks.items() if k != "journey"})
    with pytest.raises(UserInputError, match="fitted with 16"):
        fuser.transform({**blocks, "journey": (ids, np.zeros((len(ids), 3)))})
    bad = np.ones((len(ids), 6))
    bad[3, 2] = np.nan
    with pytest.raises(UserInputError, match="rows \\[3\\]"):
        BlockFuser().fit({**blocks, "tabular": (ids, bad)})
    with pytest.raises(UserInputError, match="duplicate"):
        BlockFuser().fit({"a": (["x", "x", "y"], np.eye(3))})


def test_block_from_table_flattens_vectors_and_checks_columns():
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 3)
    table = pa.table({"customer_id": ["a", "b"], "has": [True, False], "v": vec, "n": pa.array([1, 2])})
    ids, X, names = block_from_table(table, ["v", "has"], block="text")
    assert ids.to_pylist() == ["a", "b"] and names == ["v[0]", "v[1]", "v[2]", "has"]
    np.testing.assert_array_equal(X, [[0, 1, 2, 1], [3, 4, 5, 0]])
    assert block_from_table(table)[2] == ["has", "v[0]", "v[1]", "v[2]", "n"]
    with pytest.raises(UserInputError, match="no column\\(s\\) \\['w'\\]"):
        block_from_table(table, ["w"], block="text")
