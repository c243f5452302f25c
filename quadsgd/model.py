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

from sgdtraj.arguments import check_array, check_real

from ._heavy_ball import stable_lr_bound

__all__ = ["LinearModel", "stability_bound"]


def _finite_array(name: str, x, ndim=(1, 2)) -> np.ndarray:
    """A finite, non-empty real float64 copy of ``x`` with ``ndim`` in ``ndim`` (square if 2-D)."""
    return check_array(name, x, ndim=ndim)


def _check_hessian(hessian, shape) -> np.ndarray:
    """H of the loss: finite, the shape of omega, symmetric positive semi-definite (read-only copy)."""
    H = _finite_array("hessian", hessian)
    if H.shape != shape:
        raise ValueError(f"hessian must have the shape of omega {shape}, got {H.shape}")
    if H.ndim == 1:
        if np.any(H < 0):
            i = int(np.argmin(H))
            raise ValueError(f"hessian must be positive semi-definite (the loss 0.5 u^T H u >= 0): "
                             f"hessian[{i}] = {H[i]!r} < 0")
    else:
        scale = np.abs(H).max()
        if not np.allclose(H, H.T, rtol=1e-12, atol=1e-14 * scale):
            raise ValueError("hessian must be symmetric")
        H = 0.5 * (H + H.T)
        w = np.linalg.eigvalsh(H)
        tol = 64.0 * H.shape[0] * np.finfo(np.float64).eps * max(np.abs(w).max(), np.finfo(np.float64).tiny)
        if w[0] < -tol:
            raise ValueError(f"hessian must be positive semi-definite (the loss 0.5 u^T H u >= 0): its smallest "
                             f"eigenvalue is {w[0]:.6g}")
    H.setflags(write=False)
    return H


def _check_momentum(momentum) -> float:
    """Heavy-ball beta in [0, 1)."""
    try:
        return check_real("momentum", momentum, 0.0, 1.0, high_open=True)
    except ValueError:
        raise ValueError(f"momentum must be in [0.0, 1.0) (a finite real number), got {momentum!r}") from None


def _eigenvalue_array(eigenvalues) -> np.ndarray:
    """A finite, non-empty 1-D complex array of eigenvalues, all with a positive normal real part."""
    if isinstance(eigenvalues, (str, bytes)):
        raise ValueError(f"eigenvalues must be a real or complex array, got the string {eigenvalues!r}")
    try:
        a = np.asarray(eigenvalues)
    except (TypeError, ValueError):
        raise ValueError(f"eigenvalues must be a real or complex array, got {type(eigenvalues).__name__}") from None
    if a.dtype.kind not in "iufc":
        kind = {"b": "booleans", "U": "strings", "S": "bytes", "O": "objects"}.get(a.dtype.kind, str(a.dtype))
        raise ValueError(f"eigenvalues must be a real or complex array, got an array of {kind}")
    lam = a.astype(np.complex128).ravel()
    if lam.size == 0:
        raise ValueError("eigenvalues must not be empty")
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues contains NaN or inf")
    _check_positive_real_part("eigenvalues", lam)
    return lam


def _check_positive_real_part(name: str, lam: np.ndarray) -> None:
    """ValueError unless every (real part of an) entry is a positive normal float (>= 2.2e-308)."""
    tiny = np.finfo(np.float64).tiny
    cplx = np.iscomplexobj(lam)
    re = lam.real if cplx else lam
    bad = np.flatnonzero(~(re >= tiny))
    if not bad.size:
        return
    i = int(bad[np.argmin(re[bad])])
    v = complex(lam[i]) if cplx and lam.imag[i] != 0 else float(re[i])
    what = "real parts" if cplx else "entries"
    if re[i] > 0:
        raise ValueError(f"{name} must have {what} >= {tiny:.3g} (the smallest normal float64; smaller "
                         f"curvatures are not representable to full precision), got {name}[{i}] = {v!r}")
    if cplx:
        raise ValueError(f"{name} must have positive real parts (no stationary distribution otherwise); "
                         f"found {v!r}")
    raise ValueError(f"{name} must be > 0 in every coordinate (no stationary distribution otherwise); "
                     f"{name}[{i}] = {v!r}")


def _bound_text(lam: np.ndarray, beta: float, bounds: np.ndarray) -> str:
    """Which eigenvalue limits the learning rate, and the formula of its bound."""
    i = int(np.argmin(bounds))
    li = lam[i]
    if li.imag == 0:
        what = f"2(1+beta)/kappa_max with kappa_max = {li.real:.6g}" if beta else \
            f"2/kappa_max with kappa_max = {li.real:.6g}"
    else:
        what = (f"2a(1+beta)(1-beta)^2/(a^2(1-beta)^2 + b^2(1+beta)^2) for the eigenvalue a+ib = {li:.6g}"
                if beta else f"2a/|lambda|^2 for the eigenvalue lambda = a+ib = {li:.6g}")
    return what


def stability_bound(eigenvalues, momentum: float = 0.0) -> float:
    r"""Supremum of the learning rates for which the iteration is stable (spectral radius < 1).

    Closed form per eigenvalue :math:`\lambda = a + ib` of :math:`\Omega` (a > 0; derivation in
    :func:`quadsgd._heavy_ball.stable_lr_bound`), minimised over the eigenvalues:

    .. math:: \lambda^* = \min_i \frac{2a_i(1+\beta)(1-\beta)^2}{a_i^2(1-\beta)^2 + b_i^2(1+\beta)^2}

    (real eigenvalues: :math:`2(1+\beta)/\kappa_{max}`; SGD: :math:`\min 2a/|\lambda|^2`). The iteration is stable
    exactly for :math:`0 < \lambda_{lr} < \lambda^*`, decided without forming a spectral radius (which rounds to
    1.0 once :math:`\lambda_{lr}\kappa < 10^{-16}`).
    eigenvalues: shape (d,) real or complex, finite, every real part >= 2.2e-308 (a normal float).
    momentum: in [0, 1). ValueError naming the argument otherwise.
    """
    beta = _check_momentum(momentum)
    lam = _eigenvalue_array(eigenvalues)
    return float(stable_lr_bound(lam, beta).min())


class LinearModel:
    r"""Linear SGD model :math:`u \leftarrow u - \lambda(\beta b + \Omega u - \xi)` in whitened coordinates.

    Parameters
    ----------
    omega : array, shape (d,) or (d, d)
        1-D: the diagonal of :math:`\Omega` (curvature per whitened coordinate, each >= 2.2e-308, a
        normal float). 2-D: dense :math:`\Omega`; every eigenvalue must have a positive (normal) real part.
    lr : float
        Learning rate :math:`\lambda` (constant); must keep the iteration stable:
        :math:`0 < \lambda <` :func:`stability_bound` (closed form; SGD on a real eigenvalue :math:`\kappa`:
        :math:`0 < \lambda\kappa < 2`, heavy ball :math:`0 < \lambda\kappa < 2(1+\beta)`). Attribute ``lr_bound``.
    momentum : float
        Heavy-ball :math:`\beta \in [0, 1)`, PyTorch convention.
    hessian : array, optional
        :math:`H` of the loss :math:`\tfrac12 u^\top H u`, same shape as ``omega``, symmetric positive
        semi-definite (a loss is >= 0; an indefinite H gave negative "losses"). Default
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
        if self.diagonal:
            _check_positive_real_part("omega", om)
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
            H = _check_hessian(hessian, om.shape)
        self.hessian = H
        lam = self.eigenvalues
        if not self.diagonal:
            lc = np.asarray(lam, dtype=np.complex128)
            if not np.all(lc.real >= np.finfo(np.float64).tiny):
                i = int(np.argmin(lc.real))
                raise ValueError(
                    f"omega must have eigenvalues with positive real part >= {np.finfo(np.float64).tiny:.3g} (no "
                    f"stationary distribution otherwise); found eigenvalue {complex(lc[i])!r}")
        bounds = stable_lr_bound(lam, self.momentum)
        bound = float(bounds.min())
        self.lr_bound = bound
        if not lr < bound:
            raise ValueError(
                f"lr = {lr!r} is unstable: with momentum {self.momentum} the iteration needs "
                f"0 < lr < {bound:.6g} (= {_bound_text(np.asarray(lam, dtype=np.complex128), self.momentum, bounds)})")
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
        """The same model at another learning rate (0 < lr < ``lr_bound``)."""
        lr = check_real("lr", lr, 0.0, low_open=True)
        if not lr < self.lr_bound:
            raise ValueError(f"lr = {lr!r} is unstable: with momentum {self.momentum} the iteration needs "
                             f"0 < lr < {self.lr_bound:.6g}")
        m = LinearModel.__new__(LinearModel)
        m.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("lr",)})
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
