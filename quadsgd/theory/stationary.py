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

import warnings

import numpy as np

from sgdtraj.arguments import check_choice

from .._heavy_ball import companion, companion_roots, companion_shifted_inverse, i_minus_m
from .._linalg import Ops, Transition
from ..kernels import AveragingKernel, Last
from . import paper
from ._stein import AccuracyWarning, scaled_error, solve_stein

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
    g: real or complex array of any shape with every |g| < 1 (ValueError naming ``g`` otherwise).
    Returns an array of the same shape.
    """
    if not isinstance(kernel, AveragingKernel):
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...), got {kernel!r}")
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
    # Towards the fast stability edge (Re(e_i + e_j) > 2(1 + beta)) the two terms of den nearly cancel
    # (den = 0 at the edge): there den is written as the identical
    # (1-beta)^2 [c (d_i + d_j) - d_i d_j] + beta (e_i - e_j)^2, c = 1 + beta, d = 2c - e (the distance to the
    # edge, formed once), and 1 - beta^2 as (1 - beta)(1 + beta) (its rounding would be amplified by
    # 1/(1 - beta^2) as beta -> 1). The slow half keeps the form above (cancellation-free there).
    c = 1.0 + beta
    # O(d) pre-check on the modes (ei, ejc broadcast to the pairs): no pair is past the edge -> no (d, d) mask
    if np.max(np.real(ei)) + np.max(np.real(ejc)) > 2.0 * c and np.any(fast := np.real(ei + ejc) > 2.0 * c):
        di, djc = 2.0 * c - ei, 2.0 * c - ejc
        b2f = (1.0 - beta) * c
        denf = (1.0 - beta) ** 2 * (c * (di + djc) - di * djc) + beta * (ei - ejc) ** 2
        b2 = np.where(fast, b2f, b2)
        den = np.where(fast, denf, den)
    p = lr * lr * b2 / den
    phi_i = 1.0 + beta - ei
    phi_jc = 1.0 + beta - ejc
    r = p * (phi_jc - beta * phi_i) / b2
    q = phi_i * p - beta * r
    return p, q, r


def _fast_edge_modes(lam, lr: float, beta: float):
    r"""(mask, roots): the modes whose averaged covariance comes from the eigen-root form (:func:`_root_cov`).

    Real eigenvalue, roots of the AR(2) in the left half-plane (:math:`\mathrm{Re}\,z_{lo} < 0`: towards the
    fast stability edge, where the stationary variance :math:`\propto 1/|1+z_{lo}|` grows and averaging removes
    most of it) and not nearly double (:math:`|z_{hi}-z_{lo}| \ge 10^{-4}`: the eigen-decomposition amplifies
    rounding by :math:`|z_{hi}-z_{lo}|^{-2} \le 10^8`). Elsewhere the companion form (:func:`_psi_companion`) is used.
    Measured against 60-digit references (``tests/test_hardening.py``; SWA, TwoPoint, NPoint, EMA, Kernel,
    beta 0.5..0.999, lr 0.6..1-1e-7 of the bound) the root form is within a few ulps of the inherent
    sensitivity to the rounding of lr everywhere there; the companion form lost up to 4e-2.
    """
    lam = np.asarray(lam)
    eps = lr * np.real(lam).astype(np.float64)
    # Re z_lo < 0 needs z_hi + z_lo = 1 + beta - eps < 0 (real roots: both negative; complex: Re z = that / 2)
    pre = eps > 1.0 + beta
    if np.iscomplexobj(lam):
        pre &= np.imag(lam) == 0
    if not np.any(pre):
        return pre, None
    R = companion_roots(eps, beta)
    mask = pre & (R.z[1].real < 0) & (np.abs(R.gap) >= 1e-4)
    return mask, R


def _root_psi(kernel, R, a: int, sel):
    r""":math:`K(z_a) = 2\Psi(z_a)` of the selected modes' root a (scalars carrying :math:`1\mp z`; real arrays
    when every selected root is real, so that kernels use their closed forms near -1)."""
    z, omz, opz = R.z[a][sel], R.one_minus[a][sel], R.one_plus[a][sel]
    if np.all(R.real[sel]):
        z, omz, opz = z.real, omz.real, opz.real
    return 2.0 * kernel.psi(Transition(z, Ops(z, matrix=False), I_minus_M=omz, I_plus_M=opz))


def _root_cov(Ki, Kj, Ri, Rj, si, sj, lr: float):
    r"""Averaged cross-covariance of two AR(2) modes per unit noise cross-covariance, from their roots.

    With :math:`R_\delta = E[u_{t+\delta}\bar u_t]` written over the companion's eigenbasis (roots :math:`z_a`,
    eigenvectors :math:`(z_a, 1)`), :math:`\mathrm{Cov}(\hat u_i, \hat u_j) = \frac{\lambda^2}{g_i\bar g_j}
    \sum_{a,b\in\{hi,lo\}} s_as_b\frac{z_{ia}\bar z_{jb}\,(K_i(z_{ia}) + \bar K_j(z_{jb}))}{2(1 - z_{ia}\bar z_{jb})}`,
    :math:`s = (+1, -1)`, :math:`g = z_{hi}-z_{lo}`, K the kernel's variance ratio at each root. Near the fast
    edge (roots in the left half-plane) :math:`1 - z_a\bar z_b = (1+z_a) - z_a\overline{(1+z_b)}` (real roots: a
    sum of two positive terms) and the kernel evaluates :math:`K` near -1 without cancellation, so nothing
    cancels where the companion form multiplies a stationary covariance :math:`\propto 1/|1+z_{lo}|` by a
    generating function that is almost 0 along that mode. Ki, Kj: (2, ...) K at (z_hi, z_lo); Ri, Rj: roots;
    si, sj: selections (broadcast).
    """
    tot = 0.0
    sgn = (1.0, -1.0)
    for a in range(2):
        za = Ri.z[a][si]
        opa = Ri.one_plus[a][si]
        for b in range(2):
            zb = np.conj(Rj.z[b][sj])
            opb = np.conj(Rj.one_plus[b][sj])
            one_m = opa - za * opb  # 1 - z_a conj(z_b)
            tot = tot + sgn[a] * sgn[b] * za * zb * (Ki[a] + np.conj(Kj[b])) / (2.0 * one_m)
    return lr * lr * tot / (Ri.gap[si] * np.conj(Rj.gap[sj]))


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
      momentum: 2x2 companion form of the AR(2) per coordinate; at the fast stability edge (both roots
      of the AR(2) negative and well separated, :func:`_fast_edge_modes`) the eigen-root form
      :func:`_root_cov`, which does not cancel where the average removes most of a stationary variance
      :math:`\propto 1/(1+z_{lo})` (accuracy: docs/stationary-theory.md);
    * dense diagonalizable :math:`\Omega = V\Lambda V^{-1}`: one eigendecomposition; in eigen-coordinates
      the noise has covariance :math:`\Sigma' = V^{-1}V^{-H}` and
      :math:`\mathrm{Cov}'_{ij} = \Sigma'_{ij}\,[\Psi_i p_{ij} + \Psi_{i,01} r_{ij}
      + \bar\Psi_j p_{ij} + \bar\Psi_{j,01} q_{ij}]`
      (see :func:`_pair_moments`; the eigen-root form for pairs of fast-edge modes), O(d^2) plus two
      d x d products;
    * defective or badly conditioned :math:`V` (cond >= 1e8), or ``method="lyapunov"``: the stationary
      state covariance from the Stein equation written in :math:`E = I - M` (no cancellation for slow
      directions; Schur form, iterative refinement: :mod:`quadsgd.theory._stein`) and :math:`\Psi(M)` by
      the kernel, O(d^3). Its error is estimated; above ``max(1e-8, 64 eps kappa_lr)`` an
      :class:`~quadsgd.AccuracyWarning` says so (see :func:`_lyapunov_covariance`).

    ``method="paper"``: eq. 19 with the closed forms eq. 20 (TwoPoint) and eq. 21 (NPoint, SWA as
    NPoint with :math:`\Delta=1`) exactly as printed (:func:`quadsgd.theory.paper.paper_covariance`).
    Exact for symmetric :math:`\Omega`; for non-normal :math:`\Omega` it is wrong and not even symmetric
    (returned as is). No momentum.

    Returns: shape (d,) (the variances) for a 1-D omega, (d, d) otherwise. No floating-point warnings: a
    model whose stationary moments overflow float64 raises a ValueError.
    """
    _check_model_kernel(m, kernel)
    check_choice("method", method, _METHODS)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        if method == "paper":
            out = paper.paper_covariance(m, kernel)
        elif method == "lyapunov":
            out = _lyapunov_covariance(m, kernel, reason="method='lyapunov'")
        elif m.diagonal:
            out = _diagonal_covariance(m, kernel)
        else:
            lam, V, Vinv, cond = m._eig
            if Vinv is not None and cond < 1e8:
                out = _eigen_covariance(m, kernel, lam, V, Vinv)
            else:
                out = _lyapunov_covariance(
                    m, kernel, reason=f"method='exact' with a defective or badly conditioned omega (eigenvector "
                                      f"condition number {cond:.3g} >= 1e8)")
    return _finite_result("stationary_covariance", out,
                          " (method='paper': eq. 21's inverses of I - Gamma^Delta are singular once "
                          "lr * omega rounds 1 - lr * omega to 1; use method='exact')" if method == "paper" else "")


def _finite_result(what: str, out, hint: str = ""):
    """``out`` if finite; a ValueError saying that the model's stationary moments overflow float64 otherwise."""
    a = np.asarray(out)
    finite = np.isfinite(a.max()) and np.isfinite(a.min()) if a.dtype.kind == "f" and a.size else \
        bool(np.all(np.isfinite(a)))  # (max and min propagate NaN and inf without a temporary array)
    if not finite:
        raise ValueError(f"{what}: the result is not finite in float64 (the stationary variance ~ lr/omega of this "
                         f"model overflows, or lr / omega / hessian hold extreme values; rescale the model){hint}")
    return out


def _scalar_ratio(kernel, g, one_plus=None):
    """K(g) = 2 Psi(g) on scalar transitions (the internal twin of ``kernel.variance_ratio`` without its
    |g| < 1 check: a rounded g = 1 - lr omega may equal 1.0 for lr omega < 1e-16). ``one_plus``: 1 + g as
    computed elsewhere (kernels then use their closed forms near g = -1, with the same rounding of 1 + g
    as the caller's prefactor, so that the fast-edge factor 1/(1+g) cancels exactly)."""
    g = np.asarray(g, dtype=np.float64 if np.isrealobj(g) else np.complex128)
    T = Transition.scalars(g)
    if one_plus is not None:
        T = Transition(T.M, T.ops, I_minus_M=T.I_minus_M, I_plus_M=one_plus)
    return 2.0 * kernel.psi(T)


def _diagonal_covariance(m, kernel):
    """Diagonal omega: per coordinate, O(d) (SGD: S K(g); momentum: companion form, eigen-root form at the
    fast stability edge)."""
    lr, beta = m.lr, m.momentum
    w = m.omega
    if beta == 0.0:
        g = 1.0 - lr * w
        opg = 2.0 - lr * w  # 1 + g
        S = lr / (w * opg)  # eq. 19's S_lambda: Var of plain SGD per coordinate
        return S * _scalar_ratio(kernel, g, opg)  # (Last: K = 1 exactly)
    p, q, r = _pair_moments(w, w, lr, beta)
    Psi = _psi_companion(kernel, w, lr, beta)
    out = 2.0 * (Psi[:, 0, 0] * p + Psi[:, 0, 1] * r)
    mask, R = _fast_edge_modes(w, lr, beta) if not kernel.is_last else (None, None)
    if mask is not None and np.any(mask):
        K = [_root_psi(kernel, R, a, mask) for a in range(2)]
        out[mask] = _root_cov(K, K, R, R, mask, mask, lr).real
    return out


def _eigen_covariance(m, kernel, lam, V, Vinv):
    """Dense diagonalizable omega: pair moments in eigen-coordinates (eigen-root form for pairs of modes at
    the fast stability edge), then back; (d, d)."""
    lr, beta = m.lr, m.momentum
    Sig = Vinv @ Vinv.conj().T  # noise covariance in eigen-coordinates
    li, lj = lam[:, None], lam[None, :]
    p, q, r = _pair_moments(li, lj, lr, beta)
    if beta == 0.0:
        g = 1.0 - lr * lam
        psi = 0.5 * _scalar_ratio(kernel, g)
        C = p * (psi[:, None] + np.conj(psi)[None, :])
    else:
        Psi = _psi_companion(kernel, lam, lr, beta)
        a, b = Psi[:, 0, 0], Psi[:, 0, 1]
        C = a[:, None] * p + b[:, None] * r + p * np.conj(a)[None, :] + q * np.conj(b)[None, :]
        mask, R = _fast_edge_modes(lam, lr, beta) if not kernel.is_last else (None, None)
        if mask is not None and np.any(mask):
            idx = np.flatnonzero(mask)
            K = [_root_psi(kernel, R, a_, mask) for a_ in range(2)]
            C[np.ix_(idx, idx)] = _root_cov([k[:, None] for k in K], [k[None, :] for k in K], R, R,
                                            (idx[:, None],), (idx[None, :],), lr)
    C = C * Sig
    out = (V @ C @ V.conj().T).real
    return 0.5 * (out + out.T)


def _lyapunov_covariance(m, kernel, reason: str):
    r"""Augmented-state Lyapunov path: the state covariance P by :func:`._stein.solve_stein` (E form, Schur,
    iterative refinement), then :math:`[\Psi(M)P + P\Psi(M)^\top]_{uu}` with :math:`\Psi` from the kernel; O(d^3).

    The estimated relative error of the result (entrywise, on the scale :math:`\sqrt{C_{ii}C_{jj}}`) is the
    kernel transform of the last refinement correction, plus the change of the result when :math:`\Psi` is
    evaluated on :math:`DMD^{-1}` (a fixed diagonal D: equal in exact arithmetic, so the difference measures
    the rounding inside :math:`\Psi`, e.g. SWA at the fast stability edge), plus the rounding floor
    :math:`4\epsilon_{mach}|\Psi||P|` of the product. An :class:`~quadsgd.AccuracyWarning` stating it is emitted when
    it exceeds
    ``max(1e-8, 64 eps kappa_lr)``, :math:`\kappa_{lr} = \lambda^*/(\lambda^*-\lambda)` the sensitivity of the
    stationary covariance to one rounding of lr (inherent to the input: every method has it).
    """
    E, N, M = i_minus_m(m, m.lr, scaled=True)
    sol = solve_stein(E, N @ N.T)
    Psi = kernel.psi(Transition(M, Ops(M, matrix=True), I_minus_M=E))
    d = m.dim

    def average(P, Psi=Psi):
        X = Psi @ P
        out = (X + X.T)[:d, :d]
        return 0.5 * (out + out.T)

    out = average(sol.P)
    # error estimate: (i) the last refinement correction of P, carried through the average; (ii) the
    # rounding of Psi(M) itself -- an average that removes most of a large stationary variance (SWA at
    # the fast stability edge) cancels inside Psi -- estimated by evaluating Psi once more on the
    # similar matrix D M D^-1 (fixed D in [1, 2): the same value in exact arithmetic, other roundings);
    # (iii) the rounding floor of the product Psi P
    Dv = 1.0 + (np.arange(M.shape[0]) * 0.6180339887498949) % 1.0
    Psi2 = kernel.psi(Transition(Dv[:, None] * M / Dv[None, :], Ops(M, matrix=True),
                                 I_minus_M=Dv[:, None] * E / Dv[None, :])) / Dv[:, None] * Dv[None, :]
    AX = np.abs(Psi) @ np.abs(sol.P)
    floor = 4.0 * np.finfo(np.float64).eps * (AX + AX.T)[:d, :d]
    err = scaled_error(np.abs(average(sol.dP)) + np.abs(average(sol.P, Psi2) - out) + floor, out)
    kappa = m.lr_bound / (m.lr_bound - m.lr)
    tol = max(1e-8, 64.0 * np.finfo(np.float64).eps * kappa)
    if not err <= tol:
        warnings.warn(AccuracyWarning(
            f"stationary_covariance ({reason}; Lyapunov solve of the {E.shape[0]}-dimensional state, "
            f"{sol.steps} refinement step(s)): estimated relative error {err:.2g} > {tol:.2g}, the result is "
            f"approximate (slow directions with lr * eigenvalue ~ {np.min(np.abs(m.lr * m.eigenvalues)):.2g} "
            f"near the Schur form's absolute accuracy ~1e-16, or an average that cancels most of a large "
            f"stationary variance)"), stacklevel=4)
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
    with np.errstate(over="ignore", invalid="ignore"):
        if m.diagonal:
            out = float(0.5 * np.dot(H, C))
        elif H.ndim == 1:
            out = float(0.5 * np.dot(H, np.diag(C)))
        else:
            out = float(0.5 * np.sum(H * C.T))
    return _finite_result("stationary_loss", out)


def stationary_loss_per_coordinate(m, kernel: AveragingKernel = Last()) -> np.ndarray:
    r"""Per-coordinate stationary loss :math:`\tfrac12 H_{ii}\mathrm{Var}\,\hat u_i` for diagonal omega; shape (d,).

    (Fig. 11b of the paper: averaging mostly reduces the fast coordinates' contribution.)
    """
    _check_model_kernel(m, kernel)
    if not m.diagonal:
        raise ValueError("stationary_loss_per_coordinate needs a diagonal (1-D) omega")
    C = stationary_covariance(m, kernel)
    with np.errstate(over="ignore", invalid="ignore"):
        out = 0.5 * m.loss_matrix() * C
    return _finite_result("stationary_loss_per_coordinate", out)


# ====================================================================================
# Effective learning rate (eq. 20 generalised) and the stationary radius (Lemma 1, eq. 13)
# ====================================================================================

def _mode_variance_ratio(m, kernel, lam):
    """Var(u_hat)/Var(u) of each (possibly complex) mode of Omega, with isotropic noise; shape (d,)."""
    lr, beta = m.lr, m.momentum
    if beta == 0.0:
        return _scalar_ratio(kernel, 1.0 - lr * lam).real
    p, q, r = _pair_moments(lam, lam, lr, beta)
    Psi = _psi_companion(kernel, lam, lr, beta)
    avg = (2.0 * (Psi[:, 0, 0] * p + Psi[:, 0, 1] * r)).real
    mask, R = _fast_edge_modes(lam, lr, beta) if not kernel.is_last else (None, None)
    if mask is not None and np.any(mask):
        K = [_root_psi(kernel, R, a, mask) for a in range(2)]
        avg[mask] = _root_cov(K, K, R, R, mask, mask, lr).real
    return avg / p.real


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
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        K = _finite_result("effective_lr", _mode_variance_ratio(m, kernel, lam))
    if method == "ratio":
        return m.lr * K
    if np.any(np.abs(lam.imag) > 1e-12 * np.abs(lam)):
        raise ValueError("effective_lr(method='exact') needs real eigenvalues of omega; use method='ratio'")
    kap = lam.real
    lr, beta = m.lr, m.momentum
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        p, _, _ = _pair_moments(kap, kap, lr, beta)
        V = K * p.real  # averaged stationary variance per unit noise
        # invert Var_Last(lr') = lr'(1+beta) / ((1-beta) kappa (2+2beta-lr' kappa)) = V
        out = 2.0 * kap * V * (1.0 - beta * beta) / ((1.0 + beta) + V * (1.0 - beta) * kap * kap)
    return _finite_result("effective_lr", out)


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
    with np.errstate(over="ignore", invalid="ignore"):
        out = float(np.sqrt(np.sum(C))) if m.diagonal else float(np.sqrt(np.trace(m.Q @ C @ m.Q.T)))
    return _finite_result("stationary_radius", out)
