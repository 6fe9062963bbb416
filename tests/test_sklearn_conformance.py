"""``MiniBatchKMeans`` and ``BlockFuser`` are scikit-learn estimators.

clone, ``Pipeline``, ``GridSearchCV``, ``set_params`` round trips, and scikit-learn's own
``check_estimator`` on ``MiniBatchKMeans`` (pass rate >= 90 %; the failures are listed in the
assertion message and in ``benchmarks/results/check_estimator.json``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import sklearn
from sklearn.base import clone, is_clusterer
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks
from sklearn.utils.validation import check_is_fitted

from gpuseg.cluster import InputDataError, InvalidParameterError, MiniBatchKMeans, NotFittedError
from gpuseg.fusion import BlockFuser
from gpuseg.runtime.errors import UserInputError

#: small settings so that the ~50 checks run in seconds; check_estimator keeps them (it clones)
FAST = {"n_init": 1, "max_iter": 10, "batch_size": 64, "random_state": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=600, centers=4, n_features=5, cluster_std=0.6, random_state=3)
    return X.astype(np.float32), y


# ---------------------------------------------------------------------------- MiniBatchKMeans


def test_is_a_sklearn_clusterer_and_transformer():
    m = MiniBatchKMeans(3)
    assert isinstance(m, sklearn.base.BaseEstimator) and is_clusterer(m)
    assert isinstance(m, sklearn.base.TransformerMixin)
    tags = m.__sklearn_tags__()
    assert tags.estimator_type == "clusterer" and not tags.input_tags.sparse
    assert tags.transformer_tags.preserves_dtype == ["float32"]


def test_clone_keeps_params_and_drops_the_fit(blobs):
    X, _ = blobs
    init = np.asarray(X[:3], dtype=np.float32)
    m = MiniBatchKMeans(3, init=init, n_init=1, batch_size=128, random_state=5, device="cpu")
    c = clone(m)
    assert c is not m and c.get_params().keys() == m.get_params().keys()
    np.testing.assert_array_equal(c.init, m.init)
    assert all(c.get_params()[k] == v for k, v in m.get_params().items() if k != "init")
    m.fit(X)
    fresh = clone(m)
    assert not hasattr(fresh, "cluster_centers_") and not hasattr(fresh, "n_features_in_")
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(fresh)
    check_is_fitted(m)
    # same seed, same data: the clone fits to the same centres
    np.testing.assert_array_equal(fresh.fit(X).cluster_centers_, m.cluster_centers_)


def test_set_params_round_trip():
    m = MiniBatchKMeans(4, random_state=1)
    params = m.get_params()
    assert m.set_params(**params) is m and m.get_params() == params
    m.set_params(n_clusters=7, tol=1e-4, max_no_improvement=None)
    assert (m.n_clusters, m.tol, m.max_no_improvement) == (7, 1e-4, None)
    assert MiniBatchKMeans(**m.get_params()).get_params() == m.get_params()
    with pytest.raises(InvalidParameterError, match="Invalid parameter 'n_cluster'") as info:
        m.set_params(n_cluster=3)
    assert isinstance(info.value, ValueError)
    pipe = make_pipeline(StandardScaler(), MiniBatchKMeans(3))
    pipe.set_params(minibatchkmeans__n_clusters=5, minibatchkmeans__device="cpu")
    assert pipe.get_params()["minibatchkmeans__n_clusters"] == 5
    assert pipe[-1].n_clusters == 5 and pipe[-1].device == "cpu"


def test_not_fitted_error_is_sklearns(blobs):
    X, _ = blobs
    m = MiniBatchKMeans(3, device="cpu")
    for method in (m.predict, m.transform, m.score):
        with pytest.raises(SklearnNotFittedError, match="not fitted yet") as info:
            method(X)
        assert isinstance(info.value, NotFittedError) and isinstance(info.value, UserInputError)
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(m)


def test_pipeline_with_standard_scaler(blobs):
    X, y = blobs
    X = X * np.array([1, 10, 100, 0.1, 5], dtype=np.float32)
    pipe = Pipeline([("scale", StandardScaler()), ("km", MiniBatchKMeans(4, **FAST))]).fit(X)
    Z = StandardScaler().fit_transform(X)
    alone = MiniBatchKMeans(4, **FAST).fit(Z)
    np.testing.assert_allclose(pipe[-1].cluster_centers_, alone.cluster_centers_, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pipe.predict(X), alone.predict(Z))
    np.testing.assert_array_equal(pipe.fit_predict(X), pipe[-1].labels_)
    assert pipe.transform(X).shape == (len(X), 4)
    assert pipe.score(X) == pytest.approx(alone.score(Z), rel=1e-5)
    assert sklearn.metrics.adjusted_rand_score(y, pipe.predict(X)) > 0.95


def test_grid_search_over_n_clusters_with_a_scorer(blobs):
    X, y = blobs
    grid = GridSearchCV(
        make_pipeline(StandardScaler(), MiniBatchKMeans(**FAST)),
        {"minibatchkmeans__n_clusters": [2, 3, 4, 6]},
        scoring="adjusted_rand_score",  # predict() on the held-out fold against y
        cv=KFold(3, shuffle=True, random_state=0),
    ).fit(X, y)
    assert grid.best_params_ == {"minibatchkmeans__n_clusters": 4}
    assert grid.best_score_ > 0.95
    assert grid.best_estimator_[-1].n_clusters == 4 and grid.predict(X).shape == (len(X),)

    def neg_inertia_per_row(est, X_, y_=None):
        return est.score(X_) / len(X_)

    inertia = GridSearchCV(MiniBatchKMeans(**FAST), {"n_clusters": [2, 4]},
                           scoring=neg_inertia_per_row, cv=3).fit(X)
    assert inertia.best_params_ == {"n_clusters": 4}


def test_array_likes_feature_names_and_set_output(blobs, tmp_path):
    pd = pytest.importorskip("pandas")
    X, _ = blobs
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    m = MiniBatchKMeans(4, **FAST).fit(df)
    assert m.n_features_in_ == 5 and list(m.feature_names_in_) == list(df.columns)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        np.testing.assert_array_equal(m.predict(df), m.predict(X.tolist()))
    with pytest.raises(InputDataError, match="feature names should match"):
        m.predict(df[df.columns[::-1]])
    assert list(m.get_feature_names_out()) == [f"minibatchkmeans{i}" for i in range(4)]
    out = m.set_output(transform="pandas").transform(df)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(m.get_feature_names_out())
    assert out.dtypes.iloc[0] == np.float32
    # the names survive save/load (JSON), so a loaded model checks them too
    loaded = MiniBatchKMeans.load(m.save(tmp_path / "km"), device="cpu")
    assert list(loaded.feature_names_in_) == list(df.columns)
    np.testing.assert_array_equal(loaded.predict(df), m.predict(df))
    with pytest.raises(InputDataError, match="feature names should match"):
        loaded.predict(df[df.columns[::-1]])
    # refitting on a plain array forgets the names
    m.set_output(transform="default").fit(X)
    assert not hasattr(m, "feature_names_in_")


def test_sklearn_style_input_errors(blobs):
    X, _ = blobs
    sp = pytest.importorskip("scipy.sparse")
    with pytest.raises(InputDataError, match="[Ss]parse") as info:
        MiniBatchKMeans(3, device="cpu").fit(sp.csr_matrix(X))
    assert isinstance(info.value, UserInputError)
    with pytest.raises(InputDataError, match=r"0 feature\(s\)"):
        MiniBatchKMeans(3, device="cpu").fit(np.empty((10, 0)))
    with pytest.raises(InputDataError, match="Complex data not supported"):
        MiniBatchKMeans(3, device="cpu").fit(X + 1j)
    bad = X.astype(object)
    bad[0, 0] = {"a": 1}
    with pytest.raises(TypeError, match="argument must be"):
        MiniBatchKMeans(3, device="cpu").fit(bad)
    obj = MiniBatchKMeans(3, **FAST).fit(X.astype(object))  # object array of numbers is fine
    assert obj.cluster_centers_.shape == (3, 5)


def test_check_estimator_pass_rate():
    """scikit-learn's own suite; see benchmarks/check_estimators.py for the full report."""
    est = MiniBatchKMeans(3, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = estimator_checks.check_estimator(est, on_fail=None, on_skip=None)
    ran = [r for r in results if r["status"] in ("passed", "failed")]
    failed = [f"{r['check_name']}: {str(r['exception']).splitlines()[0] if str(r['exception']) else ''}"
              for r in ran if r["status"] == "failed"]
    assert len(ran) >= 40
    rate = 1 - len(failed) / len(ran)
    assert rate >= 0.9, f"pass rate {rate:.1%}; failed: {failed}"


# --------------------------------------------------------------------------------- BlockFuser


def _blocks(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"c{i}" for i in range(n)]
    return {"a": (ids, rng.normal(size=(n, 3))), "b": (ids[5:], rng.normal(size=(n - 5, 4)))}


def test_block_fuser_params_clone_and_set_params():
    f = BlockFuser(weights={"a": 2.0, "b": 1.0}, pca_components=3, device="cpu")
    assert isinstance(f, sklearn.base.BaseEstimator)
    params = f.get_params()
    assert params == {"weights": {"a": 2.0, "b": 1.0}, "pca_components": 3, "l2_normalize": False,
                      "standardize": True, "device": "cpu", "chunk_rows": 65536}
    c = clone(f)
    assert c is not f and c.get_params() == params and c.weights is not f.weights
    assert f.set_params(**params) is f and f.get_params() == params
    f.set_params(pca_components=None, l2_normalize=True)
    assert (f.pca_components, f.l2_normalize) == (None, True)
    assert repr(BlockFuser(pca_components=0.9)) == "BlockFuser(pca_components=0.9)"
    with pytest.raises(InvalidParameterError, match="Invalid parameter 'pca'"):
        f.set_params(pca=2)
    # parameters are still validated at fit, in scikit-learn's words
    with pytest.raises(InvalidParameterError, match="'pca_components' parameter of BlockFuser"):
        clone(f).set_params(pca_components=-1).fit(_blocks())


def test_block_fuser_clone_of_a_fitted_fuser_is_unfitted():
    f = BlockFuser(device="cpu")
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(f)
    ids, X = f.fit_transform(_blocks())
    check_is_fitted(f)
    fresh = clone(f)
    assert not hasattr(fresh, "blocks_")
    with pytest.raises(SklearnNotFittedError, match="not fitted yet"):
        fresh.transform(_blocks())
    np.testing.assert_array_equal(fresh.fit_transform(_blocks())[1], X)


@pytest.mark.parametrize("check", ["check_no_attributes_set_in_init", "check_get_params_invariance",
                                   "check_set_params", "check_estimator_cloneable",
                                   "check_estimator_repr", "check_mixin_order",
                                   "check_estimator_tags_renamed", "check_valid_tag_types"])
def test_block_fuser_passes_the_api_checks_that_do_not_fit(check):
    fn = getattr(estimator_checks, check, None)
    if fn is None:
        pytest.skip(f"{check} not in scikit-learn {sklearn.__version__}")
    fn("BlockFuser", BlockFuser())


def test_churn_model_is_a_scikit_learn_classifier():
    from sklearn.base import clone, is_classifier
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from gpuseg.value import ChurnModel

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = (X[:, 0] - X[:, 1] + rng.normal(0, 0.5, 400) > 0).astype(int)
    model = ChurnModel(l2=0.1, device="cpu")
    assert is_classifier(model) and clone(model).get_params() == model.get_params()
    assert model.set_params(l2=0.01).l2 == 0.01
    pipe = make_pipeline(StandardScaler(), ChurnModel(device="cpu")).fit(X, y)
    assert pipe.score(X, y) > 0.8 and set(np.unique(pipe.predict(X))) == {0, 1}
    search = GridSearchCV(ChurnModel(device="cpu"), {"l2": [1e-3, 10.0]}, scoring="roc_auc", cv=3).fit(X, y)
    assert search.best_params_ == {"l2": 1e-3} and search.best_score_ > 0.9
    # the probability and the decision function rank alike
    fitted = ChurnModel(device="cpu").fit(X, y)
    assert np.array_equal(np.argsort(fitted.predict_proba(X)[:, 1]), np.argsort(fitted.decision_function(X)))


def test_value_models_clone_and_set_params():
    from sklearn.base import clone

    from gpuseg.value import BetaGeoModel, GammaGammaModel

    for model in (BetaGeoModel(penalizer_coef=0.1, device="cpu"), GammaGammaModel(max_iter=50, device="cpu")):
        twin = clone(model)
        assert twin is not model and twin.get_params() == model.get_params()
        assert "device" in twin.get_params() and not hasattr(twin, "params_")
        assert twin.set_params(tol=1e-6).tol == 1e-6
