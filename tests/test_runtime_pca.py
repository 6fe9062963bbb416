"""``gpuseg.runtime.pca``: the covariance and the sample routes give the same axes, signs fixed."""

from __future__ import annotations

import numpy as np
import torch

from gpuseg.runtime import pca


def test_covariance_and_svd_routes_agree():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)) + 3.0
    mean, cov = pca.streamed_covariance(X, torch.device("cpu"), chunk_rows=64)
    np.testing.assert_allclose(mean, X.mean(0))
    np.testing.assert_allclose(cov.numpy(), np.cov(X, rowvar=False), rtol=1e-10)
    a = pca.from_covariance(cov)
    b = pca.from_centred_sample(torch.as_tensor(X - mean))
    np.testing.assert_allclose(a.components.numpy(), b.components.numpy(), atol=1e-8)
    np.testing.assert_allclose(a.explained_variance.numpy(), b.explained_variance.numpy(), rtol=1e-8)
    np.testing.assert_allclose(a.explained_variance.numpy(), np.linalg.eigvalsh(cov.numpy())[::-1], rtol=1e-8)
    assert np.isclose(float(a.explained_variance_ratio.sum()), 1.0)
    assert (np.diff(a.explained_variance.numpy()) <= 0).all()
    two = pca.from_centred_sample(torch.as_tensor(X - mean), 2)
    assert two.components.shape == (2, 5)
    np.testing.assert_allclose(two.explained_variance_ratio.numpy(), b.explained_variance_ratio.numpy()[:2])


def test_sign_convention_and_component_count():
    comps = torch.tensor([[0.1, -0.9, 0.2], [0.0, 0.0, 0.0], [0.5, 0.2, -0.1]])
    fixed = pca.fix_signs(comps)
    np.testing.assert_array_equal(fixed.numpy(), np.array([[-0.1, 0.9, -0.2], [0, 0, 0], [0.5, 0.2, -0.1]],
                                                           dtype=np.float32))
    flipped = pca.from_covariance(torch.diag(torch.tensor([1.0, 4.0, 2.0], dtype=torch.float64)))
    assert (flipped.components.abs().argmax(1) == torch.tensor([1, 2, 0])).all()
    assert (flipped.components.max(1).values > 0).all()
    assert pca.n_components_for(np.array([0.5, 0.3, 0.2]), 0.8) == 2
    assert pca.n_components_for(np.array([0.5, 0.3, 0.2]), 0.81) == 3
    constant = pca.from_covariance(torch.zeros(2, 2, dtype=torch.float64))
    assert float(constant.explained_variance_ratio.sum()) == 0.0
