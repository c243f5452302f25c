r"""Exact theory of averaged SGD iterates in the linear model (paper Appendix A, eq. 13-21, Table 1, Lemma 1-2).

Layout:

* :mod:`quadsgd.theory.stationary` -- constant lr, t -> inf: :func:`stationary_covariance` (diagonal,
  eigen-coordinate and Lyapunov algorithms), :func:`stationary_loss`, :func:`stationary_loss_per_coordinate`,
  :func:`kernel_variance_ratio`, :func:`effective_lr`, :func:`stationary_radius`;
* :mod:`quadsgd.theory.transient` -- any lr schedule from a given start: :func:`expected_loss` (exact
  moment propagation), :func:`equivalent_schedule` (Table 1 / Lemma 2);
* :mod:`quadsgd.theory.paper` -- the paper's formulas exactly as printed (eq. 19 with the closed forms
  of eq. 20/21, eq. 13), reached through ``method="paper"``;
* :mod:`quadsgd.theory._moments` -- the Numba kernels of the transient moments (private);
* :mod:`quadsgd.theory._stein` -- the stationary state covariance :math:`P = MPM^\top + Q` written in
  :math:`E = I - M` (Schur form, iterative refinement, error estimate) and :class:`AccuracyWarning`.

No function here branches on the type of a kernel: each asks the kernel (:mod:`quadsgd.kernels`) for
its generating function ``psi``, its printed factor ``paper_factor``, its ``variance_ratio``, how it is
``tracking``-ed online, ``cumulative`` and ``is_last``; the heavy-ball transition and its spectral
radius come from :mod:`quadsgd._heavy_ball`, argument checks from :mod:`sgdtraj.arguments`.
"""
from ._stein import AccuracyWarning
from .stationary import (
    effective_lr,
    kernel_variance_ratio,
    stationary_covariance,
    stationary_loss,
    stationary_loss_per_coordinate,
    stationary_radius,
)
from .transient import equivalent_schedule, expected_loss

__all__ = [
    "AccuracyWarning", "stationary_covariance", "stationary_loss", "stationary_loss_per_coordinate", "effective_lr",
    "equivalent_schedule", "expected_loss", "kernel_variance_ratio", "stationary_radius",
]
