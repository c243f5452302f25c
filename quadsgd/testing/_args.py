"""Argument checks shared by the checks and the mixing time of :mod:`quadsgd.testing` (built on
:mod:`sgdtraj.arguments`)."""
from __future__ import annotations

import numpy as np

from sgdtraj.arguments import check_choice, check_int, check_real

from ..kernels import AveragingKernel
from ..model import LinearModel


def kernel_list(kernel) -> list:
    """One averaging kernel or a non-empty sequence of them -> a list; ValueError otherwise."""
    if isinstance(kernel, AveragingKernel):
        return [kernel]
    try:
        ks = list(kernel)
    except TypeError:
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...) or a "
                         f"sequence of them, got {kernel!r}") from None
    if not ks or not all(isinstance(k, AveragingKernel) for k in ks):
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...) or a "
                         f"non-empty sequence of them, got {kernel!r}")
    return ks


def check_model(model) -> LinearModel:
    if not isinstance(model, LinearModel):
        raise ValueError(f"model must be a qs.LinearModel, got {type(model).__name__}")
    return model


def check_alpha(alpha) -> float:
    try:
        return check_real("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    except ValueError:
        raise ValueError(f"alpha must be in (0, 1) (the false-alarm rate), got {alpha!r}") from None


def check_common(model, kernel, alpha, chains, method):
    """(kernels, alpha, chains) after checking model, kernel(s), alpha in (0, 1), chains >= 2, method."""
    check_model(model)
    ks = kernel_list(kernel)
    alpha = check_alpha(alpha)
    chains = check_int("chains", chains, 2)
    check_choice("method", method, ("exact", "step"))
    return ks, alpha, chains


def split_predictions(predicted, kernel, ks) -> list:
    """One prediction per kernel: ``predicted`` itself for a single kernel; for a sequence of kernels a
    sequence of the same length."""
    if isinstance(kernel, AveragingKernel):
        return [predicted]
    if not isinstance(predicted, (list, tuple)) or len(predicted) != len(ks):
        n = f" of length {len(predicted)}" if isinstance(predicted, (list, tuple)) else ""
        raise ValueError(f"with a sequence of {len(ks)} kernels, predicted must be a list of {len(ks)} "
                         f"predictions (one per kernel), got {type(predicted).__name__}{n}")
    return list(predicted)


def as_prediction(p, d: int, idx_text: str) -> tuple[str, np.ndarray]:
    """(kind, array) of a stationary prediction: "scalar", "variances" (d,) or "covariance" (d, d)."""
    try:
        a = np.array(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"predicted{idx_text} must be a real number or array, got {type(p).__name__}") from None
    shapes = f"a scalar (the mean of `quantity`, default the loss), ({d},) variances or ({d}, {d}) covariance"
    if a.ndim == 0:
        kind = "scalar"
    elif a.shape == (d,):
        kind = "variances"
    elif a.shape == (d, d):
        kind = "covariance"
    else:
        raise ValueError(f"predicted{idx_text} has shape {a.shape}; expected {shapes} for this "
                         f"{d}-dimensional model")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"predicted{idx_text} contains NaN or inf")
    return kind, a
