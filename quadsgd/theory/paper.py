r"""The paper's stationary formulas exactly as printed (Sandler et al., Appendix A.2-A.4 and Lemma 1).

They are kept verbatim -- including where they are only approximate -- so that the exact theory
(:mod:`quadsgd.theory.stationary`) can be compared with what the paper states:

* :func:`paper_covariance` -- eq. 19, :math:`F = S_\lambda\,(C_0 + 2\sum_\delta C_\delta\Gamma^\delta)` with
  :math:`S_\lambda = \lambda(2\Omega-\lambda\Omega^2)^{-1}`, :math:`\Gamma = I-\lambda\Omega`, and the bracket in
  the closed forms of eq. 20 (two-point) and eq. 21 (n-point, SWA as n-point with :math:`\Delta = 1`),
  inverses of :math:`I-\Gamma^\Delta` included (the bracket comes from
  :meth:`AveragingKernel.paper_factor <quadsgd.kernels.AveragingKernel.paper_factor>`). Exact for
  symmetric :math:`\Omega`; for non-normal :math:`\Omega` it is wrong and not even symmetric. No momentum.
* :func:`paper_radius` -- eq. 13, :math:`\|\theta\| = \sqrt{E\|\xi\|^2}\sqrt{\lambda/2}` (first order in
  :math:`\lambda`, the raw trajectory only).

Reached through ``method="paper"`` of :func:`~quadsgd.theory.stationary_covariance` and
:func:`~quadsgd.theory.stationary_radius`.
"""
from __future__ import annotations

import numpy as np

from .._linalg import Ops

__all__ = ["paper_covariance", "paper_radius"]


def paper_covariance(m, kernel) -> np.ndarray:
    r"""eq. 19 as printed; shape (d,) for a 1-D omega, (d, d) otherwise (not symmetrised)."""
    if m.momentum != 0.0:
        raise ValueError("method='paper' (eq. 19) has no momentum: momentum must be 0 "
                         f"(got {m.momentum}); use method='exact'")
    lr = m.lr
    if m.diagonal:
        w = m.omega
        Gam = 1.0 - lr * w
        S = lr / (2.0 * w - lr * w * w)
        return S * kernel.paper_factor(Gam, Ops(Gam, matrix=False))
    om = m.omega
    d = m.dim
    Gam = np.eye(d) - lr * om
    S = lr * np.linalg.inv(2.0 * om - lr * om @ om)  # S_lambda = lambda (2 Omega - lambda Omega^2)^{-1}
    return S @ kernel.paper_factor(Gam, Ops(Gam, matrix=True))


def paper_radius(m, kernel) -> float:
    r"""eq. 13: :math:`\sqrt{\lambda\,\mathrm{tr}(QQ^\top)/2}`; the raw trajectory (``kernel.is_last``), no momentum."""
    if not kernel.is_last or m.momentum != 0.0:
        raise ValueError("method='paper' (eq. 13) applies to the raw trajectory: kernel must be "
                         f"Last() (got {kernel!r}) and momentum 0 (got {m.momentum})")
    Q = m.Q
    return float(np.sqrt(m.lr * np.sum(Q * Q) / 2.0))
