r"""The stationary state covariance :math:`P = MPM^\top + Q` (a Stein / discrete Lyapunov equation), solved
without cancellation for slow directions, with iterative refinement and an error estimate.

Why not ``scipy.linalg.solve_discrete_lyapunov``: it works with :math:`M` itself (its bilinear transform
forms :math:`M - I`, and the direct method :math:`I - M\otimes M`). For a slow direction
(:math:`\epsilon = \lambda\kappa \ll 1`) the eigenvalue of :math:`M` is :math:`1 - O(\epsilon)`, so
:math:`1 - m_im_j` is formed by cancellation: with :math:`\epsilon = 10^{-12}` all digits are gone (the
audit saw 100 % errors on the two slowest coordinates of a 7-coordinate model).

Here the equation is written in :math:`E = I - M`, which the model gives without cancellation
(:func:`quadsgd._heavy_ball.i_minus_m`: :math:`\lambda\Omega` and :math:`\beta, 1-\beta` blocks):

.. math:: EP + PE^\top - EPE^\top = Q .

With the complex Schur form :math:`E = UTU^H` (T upper triangular, U unitary -- it exists and is
well conditioned for any E, defective or not) and :math:`Y = U^HPU`, :math:`C = U^HQU`, the equation
:math:`TY + YT^H - TYT^H = C` is solved column by column from the last (:func:`_schur_solve`):
column j solves the triangular system

.. math:: \big[(1-\bar t_{jj})T + \bar t_{jj}I\big]\,y_j = c_j - (I - T)\,g_j,\qquad
          g_j = \sum_{l>j} y_l\,\bar t_{jl},

whose diagonal :math:`t_{ii} + \bar t_{jj} - t_{ii}\bar t_{jj}` (:math:`= 1 - m_i\bar m_j`) does not cancel
for small :math:`t`. (A Cayley transform to a continuous Lyapunov equation,
:math:`A = -E(2I-E)^{-1}` and Bartels-Stewart, also avoids the cancellation, but blows up eigenvalues of
:math:`M` near -1 -- a fast coordinate at the stability edge makes :math:`\|A\|\sim10^7` and the absolute
Schur errors then swamp the slow eigenvalues: it fails on the audit's example.)

The Schur form has absolute errors :math:`\sim\epsilon_{mach}\|E\|` (:math:`\|E\|\le 4` in the scaled
heavy-ball basis), i.e. a relative error :math:`\epsilon_{mach}\|E\|/\epsilon` on a slow eigenvalue: the first
solve is accurate to about that, and **iterative refinement** (residual :math:`Q - (EP + PE^\top - EPE^\top)`
computed in the E form, correction by the same Schur solve) converges at that rate per step to the
rounding floor of the residual. The size of the last correction, :math:`\max_{ij}|\Delta P_{ij}|/\sqrt{P_{ii}P_{jj}}`
(the scale of a covariance entry), estimates the remaining error (:class:`SteinSolution`).
Cost: one complex Schur form, :math:`O(n^3)` per solve, 1-4 refinement steps.
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
    strictly inside the unit disk. Q: (n, n) symmetric positive semi-definite.
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
