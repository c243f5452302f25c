r"""Exact stationary theory (constant lr, t -> inf): covariance, loss, effective lr and radius of an average.

Everything here reduces to one identity (paper eq. 17-19, made exact): for the averaged iterate
:math:`\hat u_t = \sum_k\mu_k u_{t-k}` of a chain with state transition :math:`M` and stationary state
covariance :math:`P = MPM^\top + NN^\top`,

.. math:: \mathrm{Cov}\,\hat u = \big[\Psi(M)P + P\Psi(M)^\top\big]_{uu},\qquad
          \Psi(M) = \tfrac{C_0}{2}I + \sum_{\delta\ge1}C_\delta M^\delta,

where :math:`\Psi` is the kernel's generating function (:meth:`AveragingKernel.psi
<quadsgd.kernels.AveragingKernel.psi>`, evaluated on a :class:`~quadsgd._linalg.Transition`). This module
never looks at the kernel's type: it asks the kernel for :math:`\Psi` (or its scalar variance ratio) and
supplies the transition -- scalars :math:`g = 1-\lambda\omega` (SGD), the heavy-ball companion matrices
per eigenvalue (:mod:`quadsgd._heavy_ball`) or the full augmented state (the Lyapunov fallback).

Layout: :func:`stationary_covariance` (dispatch: diagonal, eigen-coordinates, Lyapunov fallback; the
paper's printed formula lives in :mod:`quadsgd.theory.paper`), :func:`_pair_moments` (the cancellation-free
AR(2) moments), :func:`stationary_loss`, :func:`stationary_loss_per_coordinate`,
:func:`kernel_variance_ratio`, :func:`effective_lr`, :func:`stationary_radius`.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import scipy.linalg as sla

from .._checks import check_choice
from .._heavy_ball import companion, companion_shifted_inverse, one_step_matrices
from .._linalg import Ops, Transition
from ..kernels import AveragingKernel, Last
from . import paper

__all__ = [
    "stationary_covariance", "stationary_loss", "stationary_loss_per_coordinate", "effective_lr",
    "kernel_variance_ratio", "stationary_radius",
]

_METHODS = ("exact", "paper", "lyapunov")


def _check_model_kernel(m, kernel):
    from ..model import LinearModel

    if not isinstance(m, LinearModel):
        raise ValueError(f"m must be a qs.LinearModel, got {type(m).__name__}")
    if not isinstance(kernel, AveragingKernel):
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...), got {kernel!r}")


# ====================================================================================
# Kernel generating function on the transitions of the model
# ====================================================================================

def kernel_variance_ratio(kernel: AveragingKernel, g) -> np.ndarray:
    r"""Variance ratio of the average for a scalar AR(1) :math:`u' = g u + \text{noise}` (paper eq. 19's bracket).

    .. math:: K(g) = \frac{\mathrm{Var}\,\hat u}{\mathrm{Var}\,u} = C_0 + 2\sum_{\delta\ge1} C_\delta g^\delta
       = \sum_{j,k}\mu_j\mu_k g^{|j-k|} = 2\Psi(g).

    TwoPoint: :math:`(1+g^\Delta)/2` (eq. 20); EMA with weight a: :math:`\frac{a}{2-a}\frac{1+(1-a)g}{1-(1-a)g}`.
    g: array of any shape (|g| < 1). Returns an array of the same shape.
    """
    return kernel.variance_ratio(g)


def _psi_companion(kernel, lam, lr: float, beta: float):
    r""":math:`\Psi` of the heavy-ball companion matrix per eigenvalue; shape (d, 2, 2).

    The transition carries the adjugate form of :math:`(I-(1-a)\Phi)^{-1}` (no cancellation for slow
    modes), which kernels with a geometric tail (EMA) use.
    """
    Phi = companion(lam, lr, beta)
    T = Transition(Phi, Ops(Phi, matrix=True),
                   shifted_inverse=lambda a: companion_shifted_inverse(lam, lr, beta, a))
    return kernel.psi(T)


def _pair_moments(lam_i, lam_j, lr: float, beta: float):
    r"""Stationary second moments of the heavy-ball AR(2) modes i, j with unit noise cross-covariance.

    Mode recursion :math:`u_{t+1} = \phi_1 u_t - \beta u_{t-1} + \lambda\xi_t`, :math:`\phi_1 = 1+\beta-\lambda\kappa`.
    Returns (p, q, r) with :math:`p = E[u_i \bar u_j]`, :math:`q = E[u_{i,t}\bar u_{j,t-1}]`,
    :math:`r = E[u_{i,t-1}\bar u_{j,t}]`, for :math:`E[\xi_i\bar\xi_j] = 1`. Written so that nothing
    cancels for slow modes (:math:`\epsilon = \lambda\kappa \to 0`):

    .. math:: p = \frac{\lambda^2(1-\beta^2)}{(1-\beta^2)(1-\beta)(\epsilon_i+\bar\epsilon_j)
              - (\bar\epsilon_j-\beta\epsilon_i)(\epsilon_i-\beta\bar\epsilon_j)}

    (SGD, :math:`\beta = 0`: :math:`p = \lambda/(\kappa(2-\lambda\kappa))`, Lemma 1 / eq. 19's :math:`S_\lambda`).
    """
    ei = lr * lam_i
    ejc = np.conj(lr * lam_j)
    b2 = 1.0 - beta * beta
    den = b2 * (1.0 - beta) * (ei + ejc) - (ejc - beta * ei) * (ei - beta * ejc)
    p = lr * lr * b2 / den
    phi_i = 1.0 + beta - ei
    phi_jc = 1.0 + beta - ejc
    r = p * (phi_jc - beta * phi_i) / b2
    q = phi_i * p - beta * r
    return p, q, r


# ====================================================================================
# Stationary covariance (eq. 19 made exact)
# ====================================================================================

def stationary_covariance(m, kernel: AveragingKernel = Last(), method: str = "exact") -> np.ndarray:
    r"""Stationary covariance of the averaged iterate :math:`\hat u_t = \sum_k\mu_k u_{t-k}` (constant lr, t -> inf).

    Exact for any kernel, momentum :math:`\beta\in[0,1)`, diagonal or dense (also non-normal) :math:`\Omega`:

    .. math:: \mathrm{Cov}\,\hat u = \sum_{j,k}\mu_j\mu_k R_{k-j}
              = \big[\Psi(M)P + P\Psi(M)^\top\big]_{uu},\qquad
              \Psi(M) = \tfrac{C_0}{2}I + \sum_{\delta\ge1}C_\delta M^\delta,

    with :math:`R_\delta = E[u_{t+\delta}u_t^\top]`, :math:`M` the (augmented) transition matrix and
    :math:`P = MPM^\top + NN^\top` the stationary covariance of the state (paper eq. 17-19; eq. 19
    is the special case of symmetric :math:`\Omega`, :math:`\beta = 0`, where :math:`\Psi` and
    :math:`P` commute).

    Algorithms (``method="exact"``):

    * diagonal :math:`\Omega`: per coordinate, O(d) -- SGD: :math:`S_\lambda K(g)`, :math:`g = 1-\lambda\omega_i`;
      momentum: 2x2 companion form of the AR(2) per coordinate;
    * dense diagonalizable :math:`\Omega = V\Lambda V^{-1}`: one eigendecomposition; in eigen-coordinates
      the noise has covariance :math:`\Sigma' = V^{-1}V^{-H}` and
      :math:`\mathrm{Cov}'_{ij} = \Sigma'_{ij}\,[\Psi_i p_{ij} + \Psi_{i,01} r_{ij} + \bar\Psi_j p_{ij} + \bar\Psi_{j,01} q_{ij}]`
      (see :func:`_pair_moments`), O(d^2) plus two d x d products;
    * defective or badly conditioned :math:`V` (cond > 1e8), or ``method="lyapunov"``: a discrete
      Lyapunov solve of the augmented (u, buf) state (scipy) and :math:`\Psi(M)` by the kernel.

    ``method="paper"``: eq. 19 with the closed forms eq. 20 (TwoPoint) and eq. 21 (NPoint, SWA as
    NPoint with :math:`\Delta=1`) exactly as printed (:func:`quadsgd.theory.paper.paper_covariance`).
    Exact for symmetric :math:`\Omega`; for non-normal :math:`\Omega` it is wrong and not even symmetric
    (returned as is). No momentum.

    Returns: shape (d,) (the variances) for a 1-D omega, (d, d) otherwise.
    """
    _check_model_kernel(m, kernel)
    check_choice("method", method, _METHODS)
    if method == "paper":
        return paper.paper_covariance(m, kernel)
    lr, beta = m.lr, m.momentum
    if m.diagonal and method == "exact":
        w = m.omega
        if beta == 0.0:
            g = 1.0 - lr * w
            S = lr / (w * (2.0 - lr * w))  # eq. 19's S_lambda: Var of plain SGD per coordinate
            return S * kernel.variance_ratio(g)  # (Last: K = 1 exactly)
        p, q, r = _pair_moments(w, w, lr, beta)
        Psi = _psi_companion(kernel, w, lr, beta)
        return 2.0 * (Psi[:, 0, 0] * p + Psi[:, 0, 1] * r)
    if method == "exact":
        lam, V, Vinv, cond = m._eig
        if Vinv is not None and cond < 1e8:
            return _eigen_covariance(m, kernel, lam, V, Vinv)
    return _lyapunov_covariance(m, kernel)


def _eigen_covariance(m, kernel, lam, V, Vinv):
    """Dense diagonalizable omega: pair moments in eigen-coordinates, then back; (d, d)."""
    lr, beta = m.lr, m.momentum
    Sig = Vinv @ Vinv.conj().T  # noise covariance in eigen-coordinates
    li, lj = lam[:, None], lam[None, :]
    p, q, r = _pair_moments(li, lj, lr, beta)
    if beta == 0.0:
        g = 1.0 - lr * lam
        psi = 0.5 * kernel.variance_ratio(g)
        C = p * (psi[:, None] + np.conj(psi)[None, :])
    else:
        Psi = _psi_companion(kernel, lam, lr, beta)
        a, b = Psi[:, 0, 0], Psi[:, 0, 1]
        C = a[:, None] * p + b[:, None] * r + p * np.conj(a)[None, :] + q * np.conj(b)[None, :]
    C = C * Sig
    out = (V @ C @ V.conj().T).real
    return 0.5 * (out + out.T)


def _augmented_system(m):
    r"""The (u, buf) state of :func:`quadsgd._heavy_ball.one_step_matrices` as dense matrices.

    Returns (M, N, I - M): M (pd x pd), N (pd x d), p = 1 (SGD) or 2 (momentum); the u-block of
    :math:`I - M` is :math:`\lambda\Omega`, formed without cancellation.
    """
    om = m.omega if not m.diagonal else np.diag(m.omega)
    dense = m if not m.diagonal else SimpleNamespace(momentum=m.momentum, dim=m.dim, diagonal=False, omega=om)
    M, N = one_step_matrices(dense, m.lr, (), False)
    d = m.dim
    IminusM = np.eye(M.shape[0]) - M
    IminusM[:d, :d] = m.lr * om
    return M, N, IminusM


def _lyapunov_covariance(m, kernel):
    """Fallback: augmented-state Lyapunov solve + Psi(M) from the kernel; O(d^3 log n)."""
    M, N, IminusM = _augmented_system(m)
    P = sla.solve_discrete_lyapunov(M, N @ N.T)
    P = 0.5 * (P + P.T)
    Psi = kernel.psi(Transition(M, Ops(M, matrix=True), I_minus_M=IminusM))
    X = Psi @ P
    d = m.dim
    out = (X + X.T)[:d, :d]
    out = 0.5 * (out + out.T)
    return np.diag(out).copy() if m.diagonal else out


# ====================================================================================
# Losses
# ====================================================================================

def stationary_loss(m, kernel: AveragingKernel = Last(), method: str = "exact") -> float:
    r"""Stationary expected loss :math:`\tfrac12 E[\hat u^\top H\hat u] = \tfrac12\mathrm{tr}(H\,\mathrm{Cov}\,\hat u)`.

    H is ``m.hessian`` (:math:`\Omega` for a symmetric omega, :math:`Q^\top AQ` from
    :meth:`LinearModel.from_quadratic`). ``method`` as in :func:`stationary_covariance`.
    """
    _check_model_kernel(m, kernel)
    H = m.loss_matrix()
    C = stationary_covariance(m, kernel, method=method)
    if m.diagonal:
        return float(0.5 * np.dot(H, C))
    if H.ndim == 1:
        return float(0.5 * np.dot(H, np.diag(C)))
    return float(0.5 * np.sum(H * C.T))


def stationary_loss_per_coordinate(m, kernel: AveragingKernel = Last()) -> np.ndarray:
    r"""Per-coordinate stationary loss :math:`\tfrac12 H_{ii}\mathrm{Var}\,\hat u_i` for diagonal omega; shape (d,).

    (Fig. 11b of the paper: averaging mostly reduces the fast coordinates' contribution.)
    """
    _check_model_kernel(m, kernel)
    if not m.diagonal:
        raise ValueError("stationary_loss_per_coordinate needs a diagonal (1-D) omega")
    return 0.5 * m.loss_matrix() * stationary_covariance(m, kernel)


# ====================================================================================
# Effective learning rate (eq. 20 generalised) and the stationary radius (Lemma 1, eq. 13)
# ====================================================================================

def _mode_variance_ratio(m, kernel, lam):
    """Var(u_hat)/Var(u) of each (possibly complex) mode of Omega, with isotropic noise; shape (d,)."""
    lr, beta = m.lr, m.momentum
    if beta == 0.0:
        return kernel.variance_ratio(1.0 - lr * lam).real
    p, q, r = _pair_moments(lam, lam, lr, beta)
    Psi = _psi_companion(kernel, lam, lr, beta)
    return (2.0 * (Psi[:, 0, 0] * p + Psi[:, 0, 1] * r)).real / p.real


def effective_lr(m, kernel: AveragingKernel, method: str = "ratio") -> np.ndarray:
    r"""Effective learning rate of the averaged iterate per eigen-direction of :math:`\Omega`; shape (d,).

    ``method="ratio"`` (default, the paper's definition, eq. 20 generalised):
    :math:`\hat\lambda_i = \lambda K_i` with :math:`K_i = \mathrm{Var}\,\hat u/\mathrm{Var}\,u` the exact stationary
    variance ratio of eigen-direction i (noise isotropic in that direction). For TwoPoint and
    :math:`\beta = 0` this is eq. 20, :math:`\lambda(1+(1-\lambda\kappa)^\Delta)/2`, exactly; it is
    the learning rate at which the same optimizer would have the averaged variance to first order
    in :math:`\lambda\kappa` (:math:`S_\lambda \approx \lambda/(2\kappa)`).

    ``method="exact"``: the learning rate :math:`\lambda'` at which the same optimizer (same
    momentum) without averaging has *exactly* the averaged iterate's stationary variance:
    :math:`\lambda' = 2\kappa V(1-\beta^2)/((1+\beta) + V(1-\beta)\kappa^2)` with V the averaged
    variance per unit noise (real eigenvalues only).

    Directions are ordered as ``m.eigenvalues``.
    """
    _check_model_kernel(m, kernel)
    check_choice("method", method, ("ratio", "exact"))
    lam = np.asarray(m.eigenvalues).astype(np.complex128)
    K = _mode_variance_ratio(m, kernel, lam)
    if method == "ratio":
        return m.lr * K
    if np.any(np.abs(lam.imag) > 1e-12 * np.abs(lam)):
        raise ValueError("effective_lr(method='exact') needs real eigenvalues of omega; use method='ratio'")
    kap = lam.real
    lr, beta = m.lr, m.momentum
    p, _, _ = _pair_moments(kap, kap, lr, beta)
    V = K * p.real  # averaged stationary variance per unit noise
    # invert Var_Last(lr') = lr'(1+beta) / ((1-beta) kappa (2+2beta-lr' kappa)) = V
    return 2.0 * kap * V * (1.0 - beta * beta) / ((1.0 + beta) + V * (1.0 - beta) * kap * kap)


def stationary_radius(m, kernel: AveragingKernel = Last(), method: str = "exact") -> float:
    r"""Stationary root-mean-square distance to the minimum in the original coordinates (Lemma 1, eq. 13).

    ``method="exact"``: :math:`\sqrt{E\|\hat\theta\|^2} = \sqrt{\mathrm{tr}(Q\,\mathrm{Cov}\,\hat u\,Q^\top)}`
    (:math:`\theta = Qu`; for a model built directly from omega, :math:`Q = I`).

    ``method="paper"``: eq. 13 as printed (:func:`quadsgd.theory.paper.paper_radius`),
    :math:`\|\theta\| = \sqrt{E\|\xi\|^2}\sqrt{\lambda/2}` with :math:`E\|\xi\|^2 = \mathrm{tr}\,C`
    (:math:`C = QQ^\top`), derived under Lemma 1's assumption :math:`E[A_x^\top A_x] = I` and to first
    order in :math:`\lambda`; the raw trajectory only (a kernel whose average is the last iterate), no
    momentum. For :math:`\Omega = I` the exact value is :math:`\sqrt{\mathrm{tr}C\,\lambda/(2-\lambda)}`.
    """
    _check_model_kernel(m, kernel)
    check_choice("method", method, ("exact", "paper"))
    if method == "paper":
        return paper.paper_radius(m, kernel)
    C = stationary_covariance(m, kernel)
    if m.diagonal:
        return float(np.sqrt(np.sum(C)))
    Q = m.Q
    return float(np.sqrt(np.trace(Q @ C @ Q.T)))
