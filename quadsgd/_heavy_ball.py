r"""The heavy-ball SGD recursion of the linear model, written once (PyTorch's momentum convention).

.. math:: b_{t+1} = \beta b_t + \Omega u_t - \xi_t,\qquad u_{t+1} = u_t - \lambda_t b_{t+1}

Per eigenvalue :math:`\kappa` of :math:`\Omega` (``eps`` = :math:`\lambda\kappa`) this is the AR(2)
:math:`u_{t+1} = (1+\beta-\epsilon)u_t - \beta u_{t-1} + \lambda\xi_t`, whose characteristic polynomial
:math:`x^2 - (1+\beta-\epsilon)x + \beta` gives the spectral radius (:func:`spectral_radius`) and the
companion matrix on :math:`(u_t, u_{t-1})` (:func:`companion`, used by the stationary theory); its roots
with :math:`1\mp z` computed without cancellation (:func:`companion_roots`). Stability is decided in closed
form, without forming the spectral radius (:func:`stable_lr_bound`, :func:`is_stable`). The
state-space form on :math:`(u, b, e^{(1..m)}, S)` (:func:`one_step_matrices`) drives the simulator's exact
transitions, and :func:`i_minus_m` the cancellation-free :math:`E = I - M` of its (u, b) part (the
stationary Lyapunov solve, :mod:`quadsgd.theory._stein`). The compiled transient-moment kernels
(:mod:`quadsgd.theory._moments`, ``_fill_transition``)
and the simulator's step loops evaluate the same recursion inline in Numba.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["spectral_radius", "stable_lr_bound", "is_stable", "companion", "companion_roots",
           "companion_shifted_inverse", "one_step_matrices", "i_minus_m", "Roots"]


def spectral_radius(eps, beta: float) -> np.ndarray:
    """Spectral radius of x^2 - (1 + beta - eps) x + beta per element of ``eps`` = lr * eigenvalue (complex ok)."""
    eps = np.asarray(eps, dtype=np.complex128)
    p = 1.0 + beta - eps
    disc = np.sqrt(p * p - 4.0 * beta)
    return np.maximum(np.abs((p + disc) / 2.0), np.abs((p - disc) / 2.0))


def stable_lr_bound(lam, beta: float) -> np.ndarray:
    r"""Supremum of the stable learning rates per eigenvalue :math:`\lambda = a + ib` of :math:`\Omega`, in closed form.

    .. math:: \lambda^* = \frac{2a(1+\beta)(1-\beta)^2}{a^2(1-\beta)^2 + b^2(1+\beta)^2}
              = \frac{2(1+\beta)}{a + t^2/a},\quad t = \frac{b(1+\beta)}{1-\beta}

    (real :math:`\lambda`: :math:`2(1+\beta)/a`; SGD: :math:`2a/|\lambda|^2`); 0 where :math:`a \le 0`.
    The iteration is stable (both roots of :math:`x^2-(1+\beta-\epsilon)x+\beta` strictly inside the unit
    disk) exactly for :math:`0 < \lambda_{lr} < \lambda^*`.

    Derivation (Schur-Cohn on the characteristic polynomial): ``docs/stationary-theory.md``.
    ``tests/test_hardening.py`` checks it against the spectral radius on random cases away from the rounding regime.

    Nothing here forms a root or a spectral radius, so the decision is exact down to :math:`\lambda_{lr}\kappa
    \approx 10^{-300}` (the spectral radius rounds to 1.0 once :math:`\lambda_{lr}\kappa < 10^{-16}`). No
    floating-point warnings: overflow gives a bound of inf (huge) or 0 (tiny).
    lam: array of eigenvalues (any shape, real or complex). Returns float64 of the same shape.
    """
    lam = np.asarray(lam)
    a = np.asarray(lam.real, dtype=np.float64)
    b = np.asarray(lam.imag, dtype=np.float64) if np.iscomplexobj(lam) else np.zeros_like(a)
    c = 1.0 + beta
    with np.errstate(all="ignore"):
        t = b * (c / (1.0 - beta))
        bound = (2.0 * c) / (a + t * (t / a))  # b = 0: exactly 2(1+beta)/a
    return np.where(a > 0, bound, 0.0)


def is_stable(eps, beta: float) -> np.ndarray:
    r"""True where :math:`\epsilon = \lambda_{lr}\lambda` (complex ok) is strictly inside the stability ellipse
    (see :func:`stable_lr_bound`): :math:`x(2(1+\beta)-x)(1-\beta)^2 > y^2(1+\beta)^2`, :math:`\epsilon = x+iy`."""
    eps = np.asarray(eps)
    x = np.asarray(eps.real, dtype=np.float64)
    y = np.asarray(eps.imag, dtype=np.float64) if np.iscomplexobj(eps) else np.zeros_like(x)
    c = 1.0 + beta
    with np.errstate(all="ignore"):
        return (x > 0) & (x * (2.0 * c - x) * (1.0 - beta) ** 2 > (y * c) ** 2)


def companion(lam, lr: float, beta: float):
    r"""Heavy-ball companion matrices per eigenvalue: :math:`x_t = (u_t, u_{t-1})`,
    :math:`\Phi = \begin{pmatrix}1+\beta-\lambda\kappa & -\beta\\ 1 & 0\end{pmatrix}`; shape (d, 2, 2)."""
    lam = np.asarray(lam)
    Phi = np.zeros(lam.shape + (2, 2), dtype=np.result_type(lam, np.float64))
    Phi[..., 0, 0] = 1.0 + beta - lr * lam
    Phi[..., 0, 1] = -beta
    Phi[..., 1, 0] = 1.0
    return Phi


class Roots(NamedTuple):
    r"""Roots :math:`z_{hi}, z_{lo}` of :math:`z^2-(1+\beta-\epsilon)z+\beta` per mode, with :math:`1\mp z`
    cancellation-free.

    Real roots: ``z_hi >= z_lo``; complex roots: ``z_hi`` has the positive imaginary part. ``one_minus``
    and ``one_plus`` are (2, ...) arrays for (z_hi, z_lo); ``gap`` = z_hi - z_lo; ``real``: bool mask.
    """

    z: np.ndarray          # (2, ...) complex: z_hi, z_lo
    one_minus: np.ndarray  # (2, ...) complex: 1 - z
    one_plus: np.ndarray   # (2, ...) complex: 1 + z
    gap: np.ndarray        # (...) complex: z_hi - z_lo
    real: np.ndarray       # (...) bool: real roots


def companion_roots(eps, beta: float) -> Roots:
    r"""The two roots of :math:`z^2-(1+\beta-\epsilon)z+\beta` per real ``eps`` = lr * kappa, cancellation-free.

    With :math:`\delta = 2(1+\beta)-\epsilon` (the distance to the fast stability edge),
    :math:`A = 1-\beta+\epsilon`, :math:`B = 1-\beta+\delta`, the discriminant is
    :math:`(1-\beta)^2 - \epsilon\delta` (no cancellation at either edge) and, for real roots
    (:math:`s = \sqrt{\mathrm{disc}}`), :math:`1 - z_{hi} = 2\epsilon/(A+s)`, :math:`1 - z_{lo} = (A+s)/2`,
    :math:`1 + z_{lo} = 2\delta/(B+s)`, :math:`1 + z_{hi} = (B+s)/2` (Vieta: :math:`(1-z_{hi})(1-z_{lo}) = \epsilon`,
    :math:`(1+z_{hi})(1+z_{lo}) = \delta`); complex roots (:math:`t = \sqrt{-\mathrm{disc}}`):
    :math:`z = (1+\beta-\epsilon \pm it)/2`,
    :math:`1 - z = (A \mp it)/2`, :math:`1 + z = (B \pm it)/2`. Small roots come from Vieta
    (:math:`z_{hi}z_{lo} = \beta`).
    """
    eps = np.asarray(eps, dtype=np.float64)
    c = 1.0 + beta
    delta = 2.0 * c - eps
    A = (1.0 - beta) + eps
    B = (1.0 - beta) + delta
    phi = c - eps
    disc = (1.0 - beta) ** 2 - eps * delta
    real = disc >= 0
    s = np.sqrt(np.where(real, disc, 0.0))
    t = np.sqrt(np.where(real, 0.0, -disc))
    with np.errstate(divide="ignore", invalid="ignore"):
        # real roots: the larger-magnitude one from the formula, the other from z_hi z_lo = beta
        big_hi = phi >= 0
        zb = np.where(big_hi, (phi + s) / 2.0, (phi - s) / 2.0)
        zs = np.where(zb != 0, beta / zb, 0.0)
        zr_hi = np.where(big_hi, zb, zs)
        zr_lo = np.where(big_hi, zs, zb)
        omr_hi = 2.0 * eps / (A + s)
        omr_lo = (A + s) / 2.0
        opr_lo = 2.0 * delta / (B + s)
        opr_hi = (B + s) / 2.0
    z = np.stack([np.where(real, zr_hi, phi / 2.0 + 0.5j * t), np.where(real, zr_lo, phi / 2.0 - 0.5j * t)])
    one_minus = np.stack([np.where(real, omr_hi, A / 2.0 - 0.5j * t), np.where(real, omr_lo, A / 2.0 + 0.5j * t)])
    one_plus = np.stack([np.where(real, opr_hi, B / 2.0 + 0.5j * t), np.where(real, opr_lo, B / 2.0 - 0.5j * t)])
    gap = np.where(real, s + 0j, 1j * t)
    return Roots(z, one_minus, one_plus, gap, real)


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


def i_minus_m(m, lr: float, scaled: bool = True):
    r""":math:`E = I - M` of the (u, b) state of dense omega, formed without cancellation; and the noise factor.

    SGD: :math:`E = \lambda\Omega`, :math:`N = \lambda I` (state u). Heavy ball, ``scaled=False`` (state (u, b)):
    :math:`E = \begin{pmatrix}\lambda\Omega & \lambda\beta I\\ -\Omega & (1-\beta)I\end{pmatrix}`,
    :math:`N = (\lambda I; -I)`. ``scaled=True`` uses the state :math:`(u, \lambda b)` (the velocity
    :math:`u_t - u_{t+1}`):
    :math:`E = \begin{pmatrix}\lambda\Omega & \beta I\\ -\lambda\Omega & (1-\beta)I\end{pmatrix}`,
    :math:`N = \lambda(I; -I)` -- all blocks on the scale of :math:`\epsilon = \lambda\kappa`, so that
    :math:`\|E\| \le 4` for any stable model (a Schur form of E then has small absolute errors). The u-block
    of :math:`P` and every kernel average are the same in both bases.
    Returns (E (pd, pd), N (pd, d), M = I - E (pd, pd)); a diagonal omega is densified.
    """
    om = np.asarray(m.omega, np.float64)
    om = np.diag(om) if om.ndim == 1 else om
    d = om.shape[0]
    beta = float(m.momentum)
    I = np.eye(d)
    if beta == 0.0:
        E = lr * om
        N = lr * I
    else:
        s = lr if scaled else 1.0
        E = np.block([[lr * om, (lr * beta / s) * I], [-s * om, (1.0 - beta) * I]])
        N = np.vstack([lr * I, -s * I])
    M = np.eye(E.shape[0]) - E
    if beta != 0.0:
        # the blocks of M that E forms by subtraction: write them exactly
        M[d:, d:] = beta * I
        M[:d, d:] = -E[:d, d:]
        M[d:, :d] = -E[d:, :d]
    return E, N, M
