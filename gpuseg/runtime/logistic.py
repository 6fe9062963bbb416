"""L2-penalised logistic regression by L-BFGS in torch: the one fit behind every logistic model.

The churn model's ``hidden=0``, its RFM+ baseline, the journey job's RFM+ comparison and the
segment-confidence calibration all solve the same problem; solving it exactly (full batch,
strong-Wolfe line search, float64 on CPU) makes the result independent of learning rates and
epochs, so a comparison between two of them is a comparison of their inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpuseg.runtime.errors import UserInputError


def fit_logistic(X: Any, y: Any, *, l2: float = 1e-3, max_iter: int = 200,
                 device: torch.device | str | None = None) -> tuple[np.ndarray, float]:
    """Minimise ``mean log loss + l2 * ||coef||^2`` (the intercept is not penalised).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Finite features; standardise them first when their scales differ.
    y : array-like of shape (n_samples,)
        0/1 labels.
    l2 : float, default=1e-3
        Penalty on the coefficients.
    max_iter : int, default=200
        L-BFGS iterations.
    device : torch.device or str, optional
        Where to fit (float64 on CPU, float32 on CUDA).

    Returns
    -------
    (ndarray of shape (n_features,), float)
        Coefficients and intercept.
    """
    device = torch.device(device or "cpu")
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64), dtype=dtype, device=device)
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64), dtype=dtype, device=device)
    if Xt.ndim != 2 or Xt.shape[0] != yt.shape[0]:
        raise UserInputError(f"The 'X' and 'y' parameters must be (n, d) and (n,). Got {tuple(Xt.shape)} and "
                             f"{tuple(yt.shape)}.")
    if not torch.isfinite(Xt).all():
        raise UserInputError("The 'X' parameter must be finite.")
    w = torch.zeros(Xt.shape[1], dtype=dtype, device=device, requires_grad=True)
    b = torch.zeros(1, dtype=dtype, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=int(max_iter), line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w + b, yt) + float(l2) * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().double().cpu().numpy(), float(b.detach())


def logistic_proba(X: Any, coef: np.ndarray, intercept: float) -> np.ndarray:
    """``sigmoid(X @ coef + intercept)`` as float64."""
    z = np.asarray(X, dtype=np.float64) @ np.asarray(coef, dtype=np.float64) + float(intercept)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
