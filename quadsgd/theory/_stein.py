r"""The stationary state covariance :math:`P = MPM^\top + Q` (a Stein / discrete Lyapunov equation), solved
without cancellation for slow directions, with iterative refinement and an error estimate.

* :func:`solve_stein` ``(E, Q, max_refine=8)`` -> :class:`SteinSolution` -- P with
  :math:`EP + PE^\top - EPE^\top = Q`, written in :math:`E = I - M` (formed without cancellation by
  :func:`quadsgd._heavy_ball.i_minus_m`); E (n, n) real with every eigenvalue of :math:`M = I - E` strictly inside
  the unit disk, Q (n, n) symmetric positive semi-definite. Complex Schur form of E, column-by-column triangular
  solves, 1-4 refinement steps; cost :math:`O(n^3)` per solve.
* :class:`SteinSolution` -- P, the last correction dP, its scaled size ``error`` (an estimate of the remaining
  relative error of P, :func:`scaled_error`) and the number of refinement steps.
* :class:`AccuracyWarning` -- emitted by the stationary theory when a result cannot be certified to the
  documented tolerance.

Why not ``scipy.linalg.solve_discrete_lyapunov``, the derivation of the solve and its accuracy:
``docs/stein-solver.md``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg as sla

__all__ = ["AccuracyWarning", "SteinSolution", "solve_stein", "scaled_error"]


class AccuracyWarning(UserWarning):
    """A result whose estimated relative error exceeds what its inputs justify (the estimate is in the message).

    Emitted by :func:`quadsgd.stationary_covariance` (and the functions built on it) when the Lyapunov
    path (``method="lyapunov"``, or ``method="exact"`` for a defective / badly conditioned
    :math:`\\Omega`) cannot certify its result to the documented tolerance. Turn it into an error with
    ``warnings.simplefilter("error", qs.AccuracyWarning)``.
    """


class SteinSolution(NamedTuple):
    """P (n, n) symmetric, the last refinement correction dP (n, n), its scaled size ``error``
    (an estimate of the remaining relative error of P) and the number of refinement steps."""

    P: np.ndarray
    dP: np.ndarray
    error: float
    steps: int


def scaled_error(dX: np.ndarray, X: np.ndarray) -> float:
    r""":math:`\max_{ij}|\Delta X_{ij}|/\sqrt{X_{ii}X_{jj}}` -- an error on the scale of each covariance entry."""
    dX = np.atleast_2d(dX)
    X = np.atleast_2d(X)
    s = np.sqrt(np.maximum(np.abs(np.diagonal(X)), np.finfo(np.float64).tiny))
    return float(np.max(np.abs(dX) / s[:, None] / s[None, :])) if X.ndim == 2 and X.shape[0] == X.shape[1] \
        else float(np.max(np.abs(dX) / s ** 2))


def _schur_solve(T: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Y with TY + YT^H - TYT^H = C for upper triangular complex T (n, n) and Hermitian C; Y Hermitian."""
    n = T.shape[0]
    Y = np.zeros((n, n), dtype=np.complex128)
    for j in range(n - 1, -1, -1):
        tau = np.conj(T[j, j])
        yk = np.conj(Y[j, j + 1:])  # rows > j of column j: Y is Hermitian and column l > j is done
        if j + 1 < n:
            g = Y[:, j + 1:] @ np.conj(T[j, j + 1:])
            rhs = C[:, j] - g + T @ g
        else:
            rhs = C[:, j].copy()
        K = (1.0 - tau) * T[:j + 1, :]
        K[:, :j + 1] += tau * np.eye(j + 1)
        r = rhs[:j + 1] - K[:, j + 1:] @ yk if j + 1 < n else rhs[:j + 1]
        y = sla.solve_triangular(K[:, :j + 1], r, lower=False, check_finite=False)
        Y[:j + 1, j] = y
        Y[j + 1:, j] = yk
        Y[j, :j + 1] = np.conj(y)
    return Y


def solve_stein(E: np.ndarray, Q: np.ndarray, max_refine: int = 8) -> SteinSolution:
    r"""P with :math:`EP + PE^\top - EPE^\top = Q` (i.e. :math:`P = (I-E)P(I-E)^\top + Q`), refined; see the module.

    E: (n, n) real, :math:`I - M` formed without cancellation, all eigenvalues of :math:`M = I - E`
    strictly inside the unit disk. Q: (n, n) symmetric positive semi-definite. Derivation: docs/stein-solver.md.
    """
    T, U = sla.schur(np.asarray(E, dtype=np.complex128), output="complex")
    Uh = U.conj().T

    def solve(R):
        C = Uh @ R @ U
        C = 0.5 * (C + C.conj().T)
        P = (U @ _schur_solve(T, C) @ Uh).real
        return 0.5 * (P + P.T)

    P = solve(Q)
    best = None
    steps = 0
    for steps in range(1, max_refine + 1):
        R = Q - (E @ P + P @ E.T - E @ (P @ E.T))
        R = 0.5 * (R + R.T)
        dP = solve(R)
        Pn = P + dP
        err = scaled_error(dP, Pn)
        if best is not None and err >= best.error:
            break  # no further progress (the rounding floor of the residual, or divergence)
        best = SteinSolution(Pn, dP, err, steps)
        P = Pn
        if err <= 4.0 * np.finfo(np.float64).eps:
            break
    return best
