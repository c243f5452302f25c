r"""The heavy-ball SGD recursion of the linear model, written once (PyTorch's momentum convention).

.. math:: b_{t+1} = \beta b_t + \Omega u_t - \xi_t,\qquad u_{t+1} = u_t - \lambda_t b_{t+1}

Per eigenvalue :math:`\kappa` of :math:`\Omega` (``eps`` = :math:`\lambda\kappa`) this is the AR(2)
:math:`u_{t+1} = (1+\beta-\epsilon)u_t - \beta u_{t-1} + \lambda\xi_t`, whose characteristic polynomial
:math:`x^2 - (1+\beta-\epsilon)x + \beta` gives the spectral radius (:func:`spectral_radius`) and the
companion matrix on :math:`(u_t, u_{t-1})` (:func:`companion`, used by the stationary theory). The
state-space form on :math:`(u, b, e^{(1..m)}, S)` (:func:`one_step_matrices`) drives the simulator's exact
transitions. The compiled transient-moment kernels (:mod:`quadsgd.theory._moments`, ``_fill_transition``)
and the simulator's step loops evaluate the same recursion inline in Numba.
"""
from __future__ import annotations

import numpy as np

__all__ = ["spectral_radius", "companion", "companion_shifted_inverse", "one_step_matrices"]


def spectral_radius(eps, beta: float) -> np.ndarray:
    """Spectral radius of x^2 - (1 + beta - eps) x + beta per element of ``eps`` = lr * eigenvalue (complex ok)."""
    eps = np.asarray(eps, dtype=np.complex128)
    p = 1.0 + beta - eps
    disc = np.sqrt(p * p - 4.0 * beta)
    return np.maximum(np.abs((p + disc) / 2.0), np.abs((p - disc) / 2.0))


def companion(lam, lr: float, beta: float):
    r"""Heavy-ball companion matrices per eigenvalue: :math:`x_t = (u_t, u_{t-1})`,
    :math:`\Phi = \begin{pmatrix}1+\beta-\lambda\kappa & -\beta\\ 1 & 0\end{pmatrix}`; shape (d, 2, 2)."""
    lam = np.asarray(lam)
    Phi = np.zeros(lam.shape + (2, 2), dtype=np.result_type(lam, np.float64))
    Phi[..., 0, 0] = 1.0 + beta - lr * lam
    Phi[..., 0, 1] = -beta
    Phi[..., 1, 0] = 1.0
    return Phi


def companion_shifted_inverse(lam, lr: float, beta: float, a: float):
    r""":math:`(I - (1-a)\Phi)^{-1}` of the companion matrices via the adjugate; shape (d, 2, 2).

    :math:`\det = \epsilon(1-a) + a(1 - \beta(1-a))` has no cancellation for slow modes (:math:`\epsilon\to0`).
    """
    Phi = companion(lam, lr, beta)
    eps = lr * np.asarray(lam)
    A = np.zeros_like(Phi)
    A[..., 0, 0] = eps - beta + a * (1.0 + beta - eps)
    A[..., 0, 1] = beta * (1.0 - a)
    A[..., 1, 0] = -(1.0 - a)
    A[..., 1, 1] = 1.0
    det = eps * (1.0 - a) + a * (1.0 - beta * (1.0 - a))
    inv = np.empty_like(A)
    inv[..., 0, 0] = A[..., 1, 1]
    inv[..., 0, 1] = -A[..., 0, 1]
    inv[..., 1, 0] = -A[..., 1, 0]
    inv[..., 1, 1] = A[..., 0, 0]
    inv /= det[..., None, None]
    return inv


def one_step_matrices(m, lr: float, ema_a, has_S: bool):
    r"""One-step matrices (M, N) of the augmented state :math:`z = (u, [b], e^{(1..m)}, [S])`.

    :math:`z_{t+1} = M z_t + N\xi_t`, with (blocks; :math:`G = I - \lambda\Omega`):
    :math:`u' = Gu - \lambda\beta b + \lambda\xi`, :math:`b' = \Omega u + \beta b - \xi`,
    :math:`e_j' = a_j(Gu - \lambda\beta b + \lambda\xi) + (1-a_j)e_j`,
    :math:`S' = S + Gu - \lambda\beta b + \lambda\xi`.

    Diagonal omega: M (d, p, p), N (d, p) (one small system per coordinate); dense: M (pd, pd),
    N (pd, d) with the blocks in the order above. p = 1 + [momentum] + m + [S].
    """
    beta = float(m.momentum)
    mom = beta != 0.0
    ema_a = np.asarray(ema_a, dtype=np.float64)
    ne = ema_a.size
    p = 1 + int(mom) + ne + int(has_S)
    ib = 1
    ie = 1 + int(mom)
    iS = p - 1
    d = m.dim
    if m.diagonal:
        om = np.asarray(m.omega, np.float64)
        G = 1.0 - lr * om
        M = np.zeros((d, p, p))
        N = np.zeros((d, p))
        rows_u = [0] + list(range(ie, ie + ne)) + ([iS] if has_S else [])
        scale = [1.0] + list(ema_a) + ([1.0] if has_S else [])
        for r, a in zip(rows_u, scale):
            M[:, r, 0] = a * G
            if mom:
                M[:, r, ib] = -a * lr * beta
            N[:, r] = a * lr
        for j, a in enumerate(ema_a):
            M[:, ie + j, ie + j] = 1.0 - a
        if has_S:
            M[:, iS, iS] = 1.0
        if mom:
            M[:, ib, 0] = om
            M[:, ib, ib] = beta
            N[:, ib] = -1.0
        return M, N
    om = np.asarray(m.omega, np.float64)
    I = np.eye(d)
    G = I - lr * om
    M = np.zeros((p * d, p * d))
    N = np.zeros((p * d, d))

    def blk(i, j):
        return slice(i * d, (i + 1) * d), slice(j * d, (j + 1) * d)

    rows_u = [0] + list(range(ie, ie + ne)) + ([iS] if has_S else [])
    scale = [1.0] + list(ema_a) + ([1.0] if has_S else [])
    for r, a in zip(rows_u, scale):
        M[blk(r, 0)] = a * G
        if mom:
            M[blk(r, ib)] = -a * lr * beta * I
        N[r * d:(r + 1) * d] = a * lr * I
    for j, a in enumerate(ema_a):
        M[blk(ie + j, ie + j)] = (1.0 - a) * I
    if has_S:
        M[blk(iS, iS)] = I
    if mom:
        M[blk(ib, 0)] = om
        M[blk(ib, ib)] = beta * I
        N[ib * d:(ib + 1) * d] = -I
    return M, N
