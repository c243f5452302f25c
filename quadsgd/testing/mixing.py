r"""How long a chain from :math:`u_0 = 0` must run to be stationary: :func:`mixing_time`, :func:`burn_in_steps`.

The per-eigenvalue spectral radius is :func:`quadsgd._heavy_ball.spectral_radius` (the one heavy-ball
recursion); a kernel states its own memory through :meth:`~quadsgd.AveragingKernel.tracking`
(a geometric average remembers :math:`1/a` steps, a finite one its support).
"""
from __future__ import annotations

import math

import numpy as np

from sgdtraj.arguments import check_real

from .._heavy_ball import spectral_radius
from ..kernels import AveragingKernel, Last
from ..model import LinearModel
from ._args import check_model, kernel_list

__all__ = ["mixing_time", "burn_in_steps"]


def mixing_time(model: LinearModel) -> float:
    r"""Mixing time :math:`1/(1-\rho)` in steps, :math:`\rho` the spectral radius of the (u, b) transition.

    Per eigenvalue :math:`\kappa` of :math:`\Omega`, :math:`\rho` is the largest root modulus of
    :math:`x^2-(1+\beta-\lambda\kappa)x+\beta` (SGD: :math:`|1-\lambda\kappa|`; small
    :math:`\lambda\kappa`: :math:`\tau\approx(1-\beta)/(\lambda\kappa)`). Correlations decay as
    :math:`\rho^t \le e^{-t/\tau}` (times the eigenvector condition number for non-normal
    :math:`\Omega`).
    """
    check_model(model)
    rho = float(np.max(spectral_radius(model.lr * np.asarray(model.eigenvalues), model.momentum)))
    return math.inf if rho >= 1.0 else 1.0 / (1.0 - rho)


def kernel_time(kernel: AveragingKernel) -> tuple[float, int]:
    """(memory time scale, support) of a kernel: geometric averages (1/a, 1); finite kernels (1, support)."""
    t = kernel.tracking()
    if t.kind == "geometric":
        return (1.0 / t.decay, 1)
    return (1.0, int(kernel.support))


def burn_in_steps(model: LinearModel, kernel=Last(), burn_in: float = 40.0) -> int:
    r"""Steps from :math:`u_0 = 0` after which the averaged iterate is stationary to
    :math:`O(e^{-2\,\mathrm{burn\_in}})`.

    ``ceil(burn_in * max(mixing_time(model), 1/a of every EMA)) + max support of the finite kernels``
    (momentum enters through :func:`mixing_time`). kernel: one averaging kernel or a sequence of them.
    Returns ``math.inf`` for a model that does not mix (spectral radius >= 1).
    """
    ks = kernel_list(kernel)
    burn_in = check_real("burn_in", burn_in, 0.0, low_open=True)
    tau = mixing_time(model)
    scale = max([tau] + [kernel_time(k)[0] for k in ks])
    support = max(kernel_time(k)[1] for k in ks)
    if not math.isfinite(scale):
        return math.inf  # type: ignore[return-value]
    return int(math.ceil(burn_in * scale)) + support
