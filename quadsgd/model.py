r"""The linear SGD model of the paper (Appendix A.1, eq. 14-16), with heavy-ball momentum.

Whitened coordinates :math:`u` (:math:`\theta = Q u`, :math:`QQ^\top = C`):

.. math::
    g_t = \Omega u_t - \xi_t,\quad \xi_t\sim\mathcal N(0, I),\qquad
    b_{t+1} = \beta b_t + g_t,\qquad u_{t+1} = u_t - \lambda_t b_{t+1}

(PyTorch's SGD convention, ``b_0 = 0``). With :math:`\beta = 0` this is eq. 15,
:math:`u_{t+1} = (I-\lambda\Omega)u_t + \lambda\xi_t`. The loss is :math:`\tfrac12 u^\top H u`.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.linalg as sla

from ._checks import check_array, check_real
from ._heavy_ball import spectral_radius

__all__ = ["LinearModel", "stability_bound"]


def _finite_array(name: str, x, ndim=(1, 2)) -> np.ndarray:
    """A finite, non-empty real float64 copy of ``x`` with ``ndim`` in ``ndim`` (square if 2-D)."""
    return check_array(name, x, ndim=ndim)


def _check_momentum(momentum) -> float:
    """Heavy-ball beta in [0, 1)."""
    try:
        return check_real("momentum", momentum, 0.0, 1.0, high_open=True)
    except ValueError:
        raise ValueError(f"momentum must be in [0.0, 1.0) (a finite real number), got {momentum!r}") from None


def stability_bound(eigenvalues, momentum: float = 0.0) -> float:
    r"""Supremum of the learning rates for which the iteration is stable (spectral radius < 1).

    For real eigenvalues :math:`\kappa > 0` of :math:`\Omega` this is :math:`2(1+\beta)/\kappa_{max}`
    (SGD: :math:`0 < \lambda\kappa < 2`). Complex eigenvalues: found by bisection per eigenvalue.
    eigenvalues: shape (d,), all with positive real part.
    """
    lam = np.asarray(eigenvalues, dtype=np.complex128).ravel()
    beta = _check_momentum(momentum)
    real = np.abs(lam.imag) <= 1e-14 * np.abs(lam)
    bounds = np.full(lam.shape, np.inf)
    bounds[real] = 2.0 * (1.0 + beta) / lam.real[real]
    for i in np.flatnonzero(~real):
        if beta == 0.0:
            bounds[i] = 2.0 * lam[i].real / abs(lam[i]) ** 2
            continue
        lo, hi = 0.0, 4.0 * (1.0 + beta) / abs(lam[i])
        while spectral_radius(hi * lam[i], beta) < 1.0:
            hi *= 2.0
        # the stable set is an interval (0, b); shrink [lo, hi] around b
        lo = hi * 1e-12
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if spectral_radius(mid * lam[i], beta) < 1.0:
                lo = mid
            else:
                hi = mid
        bounds[i] = lo
    return float(bounds.min())


class LinearModel:
    r"""Linear SGD model :math:`u \leftarrow u - \lambda(\beta b + \Omega u - \xi)` in whitened coordinates.

    Parameters
    ----------
    omega : array, shape (d,) or (d, d)
        1-D: the diagonal of :math:`\Omega` (curvature per whitened coordinate, each > 0).
        2-D: dense :math:`\Omega`; every eigenvalue must have positive real part.
    lr : float
        Learning rate :math:`\lambda` (constant); must keep the iteration stable
        (spectral radius < 1; SGD on a real eigenvalue :math:`\kappa`: :math:`0 < \lambda\kappa < 2`).
    momentum : float
        Heavy-ball :math:`\beta \in [0, 1)`, PyTorch convention.
    hessian : array, optional
        :math:`H` of the loss :math:`\tfrac12 u^\top H u`, same shape as ``omega``. Default
        :math:`H = \Omega` (then a 2-D omega must be symmetric to define a loss).

    Attributes: ``omega``, ``lr``, ``momentum``, ``hessian`` (or None), ``dim``, ``diagonal``
    (bool), ``Q`` (the whitening map :math:`\theta = Qu`, identity unless built by
    :meth:`from_quadratic`), ``eigenvalues`` (shape (d,), sorted by real part for dense omega,
    as given for diagonal omega).
    """

    def __init__(self, omega, lr, momentum=0.0, *, hessian=None, _Q=None, _A=None):
        om = _finite_array("omega", omega)
        self.momentum = _check_momentum(momentum)
        lr = check_real("lr", lr, 0.0, low_open=True)
        self.diagonal = om.ndim == 1
        self.dim = om.shape[0]
        if self.diagonal and np.any(om <= 0):
            i = int(np.argmin(om))
            raise ValueError(
                f"omega must be > 0 in every coordinate (no stationary distribution otherwise); "
                f"omega[{i}] = {om[i]!r}")
        om.setflags(write=False)
        self.omega = om
        self._Q = _Q
        self._A = _A
        if hessian is None:
            if self.diagonal or np.array_equal(om, om.T):
                H = om
            else:
                H = None
        else:
            H = _finite_array("hessian", hessian)
            if H.shape != om.shape:
                raise ValueError(f"hessian must have the shape of omega {om.shape}, got {H.shape}")
            if H.ndim == 2 and not np.allclose(H, H.T, rtol=1e-12, atol=1e-14 * np.abs(H).max()):
                raise ValueError("hessian must be symmetric")
            if H.ndim == 2:
                H = 0.5 * (H + H.T)
            H.setflags(write=False)
        self.hessian = H
        lam = self.eigenvalues
        if np.any(lam.real <= 0):
            i = int(np.argmin(lam.real))
            raise ValueError(
                f"omega must have eigenvalues with positive real part (no stationary distribution "
                f"otherwise); found eigenvalue {lam[i]!r}")
        bound = stability_bound(lam, self.momentum)
        self.lr_bound = bound
        rad = spectral_radius(lr * lam, self.momentum).max()
        if not (lr < bound) or rad >= 1.0:
            raise ValueError(
                f"lr = {lr!r} is unstable: with momentum {self.momentum} the iteration needs "
                f"0 < lr < {bound:.6g} (spectral radius {rad:.6g} >= 1)")
        self.lr = lr

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_quadratic(cls, hessian, noise_cov, lr, momentum=0.0) -> "LinearModel":
        r"""Model of :math:`\theta \leftarrow \theta - \lambda(A\theta + b)`, :math:`b\sim\mathcal N(0, C)` (eq. 14).

        Whitened by :math:`\theta = Qu` with :math:`Q` the Cholesky factor of :math:`C` (:math:`QQ^\top = C`):
        :math:`\Omega = Q^{-1}AQ` (non-normal unless A and C commute), loss
        :math:`\tfrac12\theta^\top A\theta = \tfrac12 u^\top (Q^\top A Q) u`.

        hessian: A, shape (d, d) symmetric positive definite (or (d,) diagonal).
        noise_cov: C, shape (d, d) symmetric positive definite (or (d,) diagonal).
        """
        A = _finite_array("hessian", hessian)
        C = _finite_array("noise_cov", noise_cov)
        if A.ndim == 1:
            A = np.diag(A)
        if C.ndim == 1:
            if np.any(C <= 0):
                raise ValueError("noise_cov must be positive definite (diagonal entries > 0)")
            C = np.diag(C)
        if A.shape != C.shape:
            raise ValueError(f"hessian {A.shape} and noise_cov {C.shape} must have the same shape")
        if not np.allclose(A, A.T, rtol=1e-12, atol=1e-14 * np.abs(A).max()):
            raise ValueError("hessian must be symmetric")
        if not np.allclose(C, C.T, rtol=1e-12, atol=1e-14 * np.abs(C).max()):
            raise ValueError("noise_cov must be symmetric")
        A = 0.5 * (A + A.T)
        C = 0.5 * (C + C.T)
        try:
            Q = np.linalg.cholesky(C)
        except np.linalg.LinAlgError:
            raise ValueError("noise_cov must be positive definite (Cholesky failed)") from None
        if np.linalg.eigvalsh(A).min() <= 0:
            raise ValueError("hessian must be positive definite (no stationary distribution otherwise)")
        omega = sla.solve_triangular(Q, A @ Q, lower=True)
        H = Q.T @ A @ Q
        return cls(omega, lr, momentum, hessian=H, _Q=Q, _A=A)

    def with_lr(self, lr) -> "LinearModel":
        """The same model at another learning rate."""
        m = LinearModel.__new__(LinearModel)
        m.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("lr",)})
        bound = self.lr_bound
        lr = check_real("lr", lr, 0.0, low_open=True)
        rad = spectral_radius(lr * self.eigenvalues, self.momentum).max()
        if not lr < bound or rad >= 1.0:
            raise ValueError(f"lr = {lr!r} is unstable: the iteration needs 0 < lr < {bound:.6g}")
        m.lr = lr
        return m

    # ------------------------------------------------------------------ properties
    @property
    def Q(self) -> np.ndarray:
        """Whitening map theta = Q u; shape (d, d)."""
        return np.eye(self.dim) if self._Q is None else self._Q

    @property
    def normal(self) -> bool:
        """True when Omega commutes with its transpose (eq. 19 is exact only then, for symmetric Omega)."""
        if self.diagonal:
            return True
        om = self.omega
        return bool(np.allclose(om @ om.T, om.T @ om, rtol=1e-10, atol=1e-12 * np.abs(om).max() ** 2))

    @property
    def symmetric(self) -> bool:
        return self.diagonal or bool(np.array_equal(self.omega, self.omega.T))

    def loss_matrix(self) -> np.ndarray:
        """H, shape (d,) for diagonal or (d, d); raises if the loss is undefined."""
        if self.hessian is None:
            raise ValueError(
                "the loss 0.5 u^T H u needs H: omega is not symmetric, so pass hessian= to "
                "LinearModel or build the model with LinearModel.from_quadratic")
        return self.hessian

    @cached_property
    def _eig(self):
        """(eigenvalues (d,) complex, V (d,d), Vinv (d,d), condition number of V) of Omega = V diag V^-1."""
        om = self.omega
        if self.diagonal:
            return om.astype(np.complex128), None, None, 1.0
        if self._A is not None:
            # Omega = Q^-1 A Q with A symmetric: V = Q^-1 U, V^-1 = U^T Q (cond(V) = cond(Q))
            w, U = np.linalg.eigh(self._A)
            V = sla.solve_triangular(self._Q, U, lower=True)
            Vinv = U.T @ self._Q
            cond = np.linalg.cond(self._Q)
            return w.astype(np.complex128), V.astype(np.complex128), Vinv.astype(np.complex128), cond
        if np.array_equal(om, om.T):
            w, U = np.linalg.eigh(om)
            return w.astype(np.complex128), U.astype(np.complex128), U.T.astype(np.complex128), 1.0
        w, V = sla.eig(om)
        order = np.lexsort((w.imag, w.real))
        w, V = w[order], V[:, order]
        cond = np.linalg.cond(V)
        Vinv = np.linalg.inv(V) if np.isfinite(cond) and cond < 1e14 else None
        return w, V, Vinv, cond

    @property
    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of Omega, shape (d,) (real array when all are real)."""
        w = self._eig[0]
        if np.all(w.imag == 0):
            return w.real.copy()
        return w.copy()

    def __repr__(self) -> str:
        kind = "diagonal" if self.diagonal else "dense"
        return f"LinearModel({kind}, d={self.dim}, lr={self.lr!r}, momentum={self.momentum!r})"
