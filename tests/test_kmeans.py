"""MiniBatchKMeans: quality against scikit-learn, inputs, determinism, save/load, errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import DEVICES
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from gpuseg.cluster import InputDataError, InvalidParameterError, MiniBatchKMeans, NotFittedError
from gpuseg.cluster._assign import PreparedCenters
from gpuseg.cluster._init import kmeans_plusplus
from gpuseg.runtime.errors import UserInputError


def blobs(n=4000, d=6, k=8, std=1.5, seed=0, noise=0.03):
    """Gaussian blobs with uneven spreads plus a few uniform background points."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10, 10, (k, d))
    stds = rng.uniform(0.5, 1.0, k) * std
    y = rng.integers(0, k, n)
    X = centers[y] + rng.standard_normal((n, d)) * stds[y, None]
    m = int(noise * n)
    X[:m] = rng.uniform(-12, 12, (m, d))
    return X.astype(np.float32), y


def brute_labels(X, C):
    d = ((X[:, None, :].astype(np.float64) - C[None, :, :].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


@pytest.fixture(scope="module")
def data():
    return blobs()


# --------------------------------------------------------------------------- quality


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_quality_matches_sklearn_kmeans(device, seed):
    X, y = blobs(n=6000, d=8, k=12, std=2.5, seed=seed)
    ref = KMeans(12, init="k-means++", n_init=1, random_state=seed).fit(X)
    m = MiniBatchKMeans(12, batch_size=512, random_state=seed, device=device).fit(X)
    ref_ari = adjusted_rand_score(y, ref.labels_)
    ours_ari = adjusted_rand_score(y, m.labels_)
    assert ours_ari >= ref_ari - 1e-3, (ours_ari, ref_ari)
    assert m.inertia_ <= 1.01 * ref.inertia_, (m.inertia_, ref.inertia_)
    assert m.cluster_centers_.shape == (12, 8)
    assert m.labels_.shape == (6000,) and m.labels_.dtype == np.int32
    assert m.n_features_in_ == 8 and m.n_steps_ > 0 and m.n_iter_ >= 1


@pytest.mark.parametrize("device", DEVICES)
def test_lloyd_refinement_reaches_a_fixed_point(device, data):
    X, _ = data
    m = MiniBatchKMeans(8, batch_size=256, max_iter=1, refine_passes=100, random_state=0,
                        device=device).fit(X)
    labels, d2 = brute_labels(X, m.cluster_centers_)
    # at convergence every centre is the mean of its points and labels are nearest centres
    means = np.stack([X[labels == j].astype(np.float64).mean(0) for j in range(8)])
    np.testing.assert_allclose(m.cluster_centers_, means, atol=1e-4)
    assert (labels == m.labels_).mean() > 0.999
    assert m.inertia_ == pytest.approx(d2.sum(), rel=1e-4)
    few = MiniBatchKMeans(8, batch_size=256, max_iter=1, refine_passes=0, random_state=0,
                          device=device).fit(X)
    assert m.inertia_ <= few.inertia_ * (1 + 1e-6)


def test_kmeans_plusplus_seeds_every_blob():
    X, y = blobs(n=3000, d=4, k=10, std=0.3, noise=0.0)
    gen = torch.Generator().manual_seed(0)
    c = kmeans_plusplus(torch.from_numpy(X), 10, gen).numpy()
    rows = {tuple(r) for r in X}
    assert all(tuple(r) in rows for r in c)  # centres are data rows
    nearest, _ = brute_labels(c, X)  # index of the data row each centre is
    assert len(set(y[nearest])) == 10  # one seed in each well-separated blob


def test_empty_cluster_is_relocated_by_lloyd(data):
    X, _ = data
    init = X[:8].copy()
    init[3] = 1e4  # a centre no point will ever choose
    m = MiniBatchKMeans(8, init=init, max_iter=0, refine_passes=5, random_state=0).fit(X)
    assert np.abs(m.cluster_centers_[3]).max() < 100
    assert len(np.unique(m.labels_)) == 8


def test_tiny_cluster_is_reassigned_in_minibatch_phase(data):
    X, _ = data
    init = X[:8].copy()
    init[5] = 1e4
    m = MiniBatchKMeans(8, init=init, batch_size=128, max_iter=2, refine_passes=0,
                        max_no_improvement=None, random_state=0).fit(X)
    assert np.abs(m.cluster_centers_[5]).max() < 100
    assert len(np.unique(m.labels_)) == 8
    no = MiniBatchKMeans(8, init=init, batch_size=128, max_iter=2, refine_passes=0,
                         max_no_improvement=None, reassignment_ratio=0.0, random_state=0).fit(X)
    assert np.abs(no.cluster_centers_[5]).max() > 1000  # the rule, not luck, moved it


def test_early_stopping_on_ewa_inertia(data):
    X, _ = data
    patient = MiniBatchKMeans(8, batch_size=64, max_iter=5, max_no_improvement=None,
                              refine_passes=0, random_state=0).fit(X)
    eager = MiniBatchKMeans(8, batch_size=64, max_iter=5, max_no_improvement=3,
                            refine_passes=0, random_state=0).fit(X)
    assert patient.n_steps_ == 5 * int(np.ceil(len(X) / 64))
    assert eager.n_steps_ < patient.n_steps_
    assert eager.n_iter_ <= patient.n_iter_


def test_compute_labels_false_skips_the_labelling_pass(data):
    X, _ = data
    m = MiniBatchKMeans(8, batch_size=256, random_state=0).fit(X)
    assert hasattr(m, "labels_")
    m.set_params(compute_labels=False).fit(X)
    assert not hasattr(m, "labels_") and not hasattr(m, "inertia_")  # no stale answers
    assert m.predict(X[:10]).shape == (10,)
    with pytest.raises(InvalidParameterError, match="compute_labels=True"):
        m.fit_predict(X)


# ----------------------------------------------------------------------- determinism


def test_same_seed_same_result_cpu(data):
    X, _ = data
    a = MiniBatchKMeans(8, batch_size=256, random_state=3).fit(X)
    b = MiniBatchKMeans(8, batch_size=256, random_state=3).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_ and a.n_steps_ == b.n_steps_
    c = MiniBatchKMeans(8, batch_size=256, random_state=4).fit(X)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)


# ---------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_and_tensor_inputs_agree(device, data):
    X, _ = data
    a = MiniBatchKMeans(8, batch_size=256, random_state=0, device=device).fit(X)
    b = MiniBatchKMeans(8, batch_size=256, random_state=0, device=device).fit(torch.from_numpy(X))
    c = MiniBatchKMeans(8, batch_size=256, random_state=0, device=device).fit(X.astype(np.float64))
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.cluster_centers_, c.cluster_centers_)
    out = a.predict(torch.from_numpy(X).to(device))
    assert isinstance(out, torch.Tensor) and out.device.type == torch.device(device).type
    np.testing.assert_array_equal(out.cpu().numpy(), a.labels_)


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_core_inputs_reach_the_same_quality(device, data, tmp_path):
    X, y = data
    ref = MiniBatchKMeans(8, batch_size=256, random_state=0, device=device).fit(X)
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    batches = [X[i : i + 700] for i in range(0, len(X), 700)]
    for source in (mm, lambda: iter(batches), batches, lambda: (torch.from_numpy(b) for b in batches)):
        m = MiniBatchKMeans(8, batch_size=256, chunk_size=500, random_state=0, device=device)
        m.fit(source)
        assert m.labels_.shape == (len(X),)
        assert m.inertia_ <= 1.01 * ref.inertia_
        assert adjusted_rand_score(y, m.labels_) >= adjusted_rand_score(y, ref.labels_) - 0.01
        np.testing.assert_array_equal(m.predict(source), m.labels_)


def test_assignment_is_chunked_and_exact(data, monkeypatch):
    X, _ = data
    m = MiniBatchKMeans(8, batch_size=256, chunk_size=97, random_state=0).fit(X)
    seen = []
    original = PreparedCenters.scores

    def spy(self, x):
        seen.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(PreparedCenters, "scores", spy)
    labels = m.predict(X)
    assert max(seen) <= 97 and sum(seen) == len(X)  # never a full N x K block
    ref_labels, ref_d2 = brute_labels(X, m.cluster_centers_)
    assert (labels == ref_labels).mean() > 0.9995  # float32 vs float64 near-ties only
    assert -m.score(X) == pytest.approx(ref_d2.sum(), rel=1e-5)
    dist = m.transform(X[:50])
    np.testing.assert_allclose(dist**2, brute_d2(X[:50], m.cluster_centers_), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(dist.argmin(1), labels[:50])


def brute_d2(X, C):
    return ((X[:, None, :].astype(np.float64) - C[None].astype(np.float64)) ** 2).sum(-1)


@pytest.mark.parametrize("device", DEVICES)
def test_partial_fit_streams_batches(device, data):
    from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans

    X, y = data
    m = MiniBatchKMeans(8, random_state=1, device=device)
    sk = SkMiniBatchKMeans(8, n_init=1, random_state=1)
    assert not hasattr(m, "cluster_centers_")
    for i in range(0, len(X), 500):
        m.partial_fit(X[i : i + 500])
        sk.partial_fit(X[i : i + 500])
    assert m.n_steps_ == int(np.ceil(len(X) / 500))
    # seeded on the first 500 rows only: as good as scikit-learn's partial_fit, not as a fit
    assert -m.score(X) <= 1.01 * -sk.score(X)
    assert adjusted_rand_score(y, m.predict(X)) >= adjusted_rand_score(y, sk.predict(X)) - 0.01
    with pytest.raises(InputDataError, match="n_samples=3 should be >= n_clusters=8"):
        MiniBatchKMeans(8, device=device).partial_fit(X[:3])
    with pytest.raises(InputDataError, match="X has 2 features, but MiniBatchKMeans is expecting 6"):
        m.partial_fit(X[:100, :2])


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_gemm_agrees_with_float32(device, data):
    X, _ = data
    ref = MiniBatchKMeans(8, batch_size=256, random_state=0, device=device).fit(X)
    for precision in ("tf32", "bf16"):
        m = MiniBatchKMeans(8, batch_size=256, random_state=0, device=device,
                            compute_precision=precision).fit(X)
        assert m.inertia_ <= 1.01 * ref.inertia_
        assert (ref.predict(X) == m.predict(X)).mean() > 0.95


# ------------------------------------------------------------------------- save/load


@pytest.mark.parametrize("device", DEVICES)
def test_save_load_predicts_identically(device, data, tmp_path):
    X, _ = data
    m = MiniBatchKMeans(8, batch_size=256, random_state=0, device=device).fit(X)
    json_path = m.save(tmp_path / "model")
    assert json_path.name == "model.json" and (tmp_path / "model.safetensors").exists()
    meta = json.loads(json_path.read_text())
    assert meta["schema_version"] == 1 and meta["n_features_in_"] == 6
    assert meta["params"]["n_clusters"] == 8 and "torch" in meta["versions"]
    loaded = MiniBatchKMeans.load(tmp_path / "model.safetensors", device=device)
    np.testing.assert_array_equal(loaded.cluster_centers_, m.cluster_centers_)
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))
    np.testing.assert_array_equal(loaded.transform(X[:20]), m.transform(X[:20]))
    assert loaded.inertia_ == m.inertia_ and loaded.get_params()["batch_size"] == 256
    loaded.partial_fit(X[:300])  # a loaded model keeps learning from its saved counts
    assert loaded.n_steps_ == m.n_steps_ + 1


def test_load_rejects_mismatched_or_foreign_files(data, tmp_path):
    X, _ = data
    MiniBatchKMeans(8, random_state=0).fit(X).save(tmp_path / "a")
    MiniBatchKMeans(8, random_state=1).fit(X).save(tmp_path / "b")
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "b.safetensors").read_bytes())
    with pytest.raises(InputDataError, match="SHA-256 differs"):
        MiniBatchKMeans.load(tmp_path / "a")
    meta = json.loads((tmp_path / "b.json").read_text())
    meta["schema_version"] = 99
    (tmp_path / "b.json").write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="schema_version 99"):
        MiniBatchKMeans.load(tmp_path / "b")
    with pytest.raises(InputDataError, match="does not exist"):
        MiniBatchKMeans.load(tmp_path / "missing")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        MiniBatchKMeans(3).save(tmp_path / "c")


# -------------------------------------------------------------------- sklearn API


def test_params_api_and_clone():
    from sklearn.base import clone

    m = MiniBatchKMeans(5, batch_size=100, random_state=7)
    params = m.get_params()
    assert params["n_clusters"] == 5 and params["batch_size"] == 100 and params["device"] == "auto"
    assert m.set_params(n_clusters=6) is m and m.n_clusters == 6
    c = clone(m)
    assert c.get_params() == m.get_params() and c is not m
    assert repr(m) == "MiniBatchKMeans(n_clusters=6, batch_size=100, random_state=7)"
    with pytest.raises(InvalidParameterError, match="Invalid parameter 'nope'"):
        m.set_params(nope=1)


def test_fit_predict_transform_and_logging(data, caplog):
    X, _ = data
    m = MiniBatchKMeans(8, batch_size=256, random_state=0, verbose=1)
    with caplog.at_level(logging.INFO, logger="gpuseg.cluster.kmeans"):
        labels = m.fit_predict(X)
    assert any("Lloyd pass" in r.message for r in caplog.records)
    np.testing.assert_array_equal(labels, m.labels_)
    assert m.fit_transform(X).shape == (len(X), 8)


# ------------------------------------------------------------------------ bad input

NAME = "MiniBatchKMeans"


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_clusters": 0}, r"The 'n_clusters' parameter of MiniBatchKMeans must be an int in the range \[1, inf\). Got 0 instead."),
        ({"n_clusters": 2.5}, r"'n_clusters' parameter .* Got 2.5 instead"),
        ({"n_clusters": "3"}, r"'n_clusters' parameter .* Got '3' instead"),
        ({"n_clusters": True}, r"'n_clusters' parameter .* Got True instead"),
        ({"batch_size": 0}, r"'batch_size' parameter .* range \[1, inf\)"),
        ({"init": "kmeans"}, r"'init' parameter of MiniBatchKMeans must be a str among \{'k-means\+\+', 'random'\}"),
        ({"init": np.zeros((3, 6))}, r"initial centers \(3, 6\) does not match the number of clusters 8"),
        ({"init": np.zeros((8, 2))}, r"initial centers \(8, 2\) does not match the number of features of the data 6"),
        ({"n_init": 0}, r"'n_init' parameter"),
        ({"tol": -1.0}, r"'tol' parameter of MiniBatchKMeans must be a float in the range \[0.0, inf\)"),
        ({"compute_precision": "fp8"}, r"'compute_precision' parameter .* \{'float32', 'tf32', 'bf16'\}. Got 'fp8'"),
        ({"device": "tpu"}, r"'device' parameter .* Got 'tpu' instead"),
        ({"random_state": -1}, r"'random_state' parameter"),
        ({"max_no_improvement": -2}, r"'max_no_improvement' parameter .* or None"),
        ({"compute_labels": "yes"}, r"'compute_labels' parameter .* 'bool'"),
    ],
)
def test_parameter_errors_use_sklearn_wording(data, params, match):
    X, _ = data
    args = {"n_clusters": 8, **params}
    with pytest.raises(InvalidParameterError, match=match) as info:
        MiniBatchKMeans(**args).fit(X)
    assert isinstance(info.value, ValueError) and isinstance(info.value, UserInputError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_reported(data, bad, tmp_path):
    X, _ = data
    X = X.copy()
    X[123, 2] = bad
    what = "NaN" if np.isnan(bad) else "infinity"
    for source in (X, torch.from_numpy(X), lambda: iter([X[:100], X[100:]])):
        with pytest.raises(InputDataError, match=f"Input X contains {what}.*row 123"):
            MiniBatchKMeans(8, random_state=0).fit(source)
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(InputDataError, match=f"contains {what}.*row 123"):
        MiniBatchKMeans(8, random_state=0, chunk_size=50).fit(np.load(tmp_path / "x.npy", mmap_mode="r"))
    good = MiniBatchKMeans(8, random_state=0).fit(np.nan_to_num(X, posinf=0, neginf=0))
    with pytest.raises(InputDataError, match=f"contains {what}.*row 123"):
        good.predict(X)


def test_bad_shapes_and_sizes(data):
    X, _ = data
    with pytest.raises(InputDataError, match="n_samples=5 should be >= n_clusters=8"):
        MiniBatchKMeans(8).fit(X[:5])
    with pytest.raises(InputDataError, match="Expected 2D array, got 1D array"):
        MiniBatchKMeans(2).fit(X[:, 0])
    with pytest.raises(InputDataError, match="0 sample"):
        MiniBatchKMeans(2).fit(X[:0])
    with pytest.raises(InputDataError, match="must be numeric"):
        MiniBatchKMeans(2).fit(np.array([["a", "b"], ["c", "d"]]))
    m = MiniBatchKMeans(8, random_state=0).fit(X)
    with pytest.raises(InputDataError, match="X has 5 features, but MiniBatchKMeans is expecting 6 features"):
        m.predict(X[:, :5])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        MiniBatchKMeans(8).predict(X)


def test_bad_iterators(data):
    X, _ = data
    with pytest.raises(InputDataError, match="empty: the iterator yielded no rows"):
        MiniBatchKMeans(8).fit(lambda: iter([]))
    with pytest.raises(InputDataError, match="one-shot iterator.*callable"):
        MiniBatchKMeans(8).fit(b for b in [X[:2000], X[2000:]])
    with pytest.raises(InputDataError, match="batch 1 has 4 features, but earlier batches had 6"):
        MiniBatchKMeans(8).fit(lambda: iter([X[:2000], X[2000:, :4]]))
    # a one-shot iterator is fine where one pass is enough
    m = MiniBatchKMeans(8, random_state=0).fit(X)
    labels = m.predict(b for b in [X[:2000], X[2000:]])
    np.testing.assert_array_equal(labels, m.labels_)


def test_unavailable_cuda_device_is_a_config_error(data):
    missing = f"cuda:{torch.cuda.device_count() + 3}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(UserInputError, match=f"(?s)device '{missing}'.*config key to change: device"):
        MiniBatchKMeans(8, device=missing).fit(data[0])
