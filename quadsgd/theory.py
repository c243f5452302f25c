r"""Exact stationary and transient theory of averaged SGD iterates in the linear model.

See the paper's Appendix A (eq. 14-21, Table 1) and Lemma 1 (eq. 13).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .kernels import EMA, SWA, AveragingKernel, Last, NPoint, TwoPoint

__all__ = [
    "stationary_covariance", "stationary_loss", "stationary_loss_per_coordinate", "effective_lr",
    "equivalent_schedule", "expected_loss", "kernel_variance_ratio", "stationary_radius",
]


def equivalent_schedule(kernel: AveragingKernel, lr, steps: int | None = None) -> np.ndarray:
    r"""Learning-rate schedule whose last iterate equals the kernel average (Table 1, generalised; Lemma 2).

    With a constant gradient per batch (Lemma 2), the average :math:`\sum_m \mu_m\theta_{t-m}`
    equals the end point of a side-trip from :math:`\theta_{t-k}` whose step taken ``r`` steps
    before the averaging time has learning rate

    .. math:: \lambda'_{-r} = \lambda_{-r}\sum_{m<r}\mu_m,\qquad r = 1..k .

    (SWA window W: :math:`\lambda\min(r,W)/W`; two-point: :math:`\lambda/2` for :math:`r\le\Delta`;
    EMA: :math:`\lambda(1-(1-a)^r)` -- the paper's Table 1 EMA row is off by one step against its
    own proof, eq. 29.)

    kernel: any averaging kernel. lr: array of shape (k,), the base lr of the last k steps
    (``lr[-1]`` is the last step), or a scalar together with ``steps=k``.
    Returns: array of shape (k,), ``out[-r]`` the equivalent lr of the step r steps before the end.
    """
    if not isinstance(kernel, AveragingKernel):
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...), got {kernel!r}")
    lr_arr = np.asarray(lr, dtype=np.float64)
    if lr_arr.ndim == 0:
        if steps is None:
            if isinstance(kernel, EMA):
                raise ValueError("steps must be given for a scalar lr with an EMA kernel (infinite support)")
            steps = int(kernel.support)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        lr_arr = np.full(int(steps), float(lr_arr))
    elif lr_arr.ndim != 1 or lr_arr.size == 0:
        raise ValueError(f"lr must be a scalar or a non-empty 1-D array, got shape {lr_arr.shape}")
    elif steps is not None and int(steps) != lr_arr.size:
        raise ValueError(f"steps = {steps} does not match len(lr) = {lr_arr.size}")
    if not np.all(np.isfinite(lr_arr)) or np.any(lr_arr < 0):
        raise ValueError("lr must be finite and non-negative")
    k = lr_arr.size
    r = np.arange(k, 0, -1)  # position i (0-based) is r = k - i steps before the averaging time
    return lr_arr * kernel.cumulative(r)


# ====================================================================================
# Kernel generating function  Psi(M) = C_0/2 I + sum_{m>=1} C_m M^m   (Appendix A.2)
# ====================================================================================
# For a real AR(1) coordinate with g = 1 - lr*kappa the variance ratio of the average is
# K(g) = Var(u_hat)/Var(u) = C_0 + 2 sum_m C_m g^m = 2 Psi(g) (eq. 19's bracket).  Psi is
# evaluated on scalars (arrays, real or complex) or on stacks of small matrices (..., s, s), by
# closed forms and O(log n) doubling recurrences -- never by summing a long kernel, except for
# an arbitrary `Kernel`, where the Horner sum over its support is the only general way.


class _Ops:
    """Arithmetic on either elementwise scalars or stacks of square matrices."""

    def __init__(self, like: np.ndarray, matrix: bool):
        self.matrix = matrix
        if matrix:
            s = like.shape[-1]
            self.I = np.broadcast_to(np.eye(s, dtype=like.dtype), like.shape)
        else:
            self.I = np.ones_like(like)

    def mul(self, a, b):
        if not self.matrix:
            return a * b
        if a.shape[-1] == 2 and a.ndim > 2:
            # stacks of 2x2 matrices: explicit products are ~10x faster than np.matmul's per-matrix loop
            out = np.empty(np.broadcast_shapes(a.shape, b.shape), dtype=np.result_type(a, b))
            a00, a01, a10, a11 = a[..., 0, 0], a[..., 0, 1], a[..., 1, 0], a[..., 1, 1]
            b00, b01, b10, b11 = b[..., 0, 0], b[..., 0, 1], b[..., 1, 0], b[..., 1, 1]
            out[..., 0, 0] = a00 * b00 + a01 * b10
            out[..., 0, 1] = a00 * b01 + a01 * b11
            out[..., 1, 0] = a10 * b00 + a11 * b10
            out[..., 1, 1] = a10 * b01 + a11 * b11
            return out
        return a @ b

    def inv_solve(self, a, b):
        """a^-1 b."""
        return np.linalg.solve(a, b) if self.matrix else b / a

    def power(self, x, n: int):
        """x**n by binary exponentiation (n >= 0)."""
        result = self.I.copy()
        base = x
        while n > 0:
            if n & 1:
                result = self.mul(result, base)
            n >>= 1
            if n:
                base = self.mul(base, base)
        return result


def _triangular_geometric(h, N: int, ops: _Ops):
    r""":math:`T_N(h) = \sum_{k=0}^{N-1}(N-k)h^k` by doubling (all terms added: no cancellation near h = 1).

    Recurrences (all terms are polynomials in h, so they commute):
    :math:`T_{2N} = T_N + N G_N + h^N T_N`, :math:`G_{2N} = (I + h^N) G_N`,
    :math:`G_{N+1} = I + hG_N`, :math:`T_{N+1} = T_N + G_{N+1}`, with :math:`G_N = \sum_{k<N} h^k`.
    Cost: O(log N) products.
    """
    T = np.zeros_like(ops.I)
    G = np.zeros_like(ops.I)
    P = ops.I.copy()
    n = 0
    for bit in (bin(N)[2:] if N > 0 else ""):
        if n:
            T = T + float(n) * G + ops.mul(P, T)
            G = G + ops.mul(P, G)
            P = ops.mul(P, P)
            n *= 2
        if bit == "1":
            G = ops.I + ops.mul(h, G)
            T = T + G
            P = ops.mul(h, P)
            n += 1
    return T


def _psi(kernel: AveragingKernel, M, ops: _Ops, I_minus_M=None, ema_inverse=None):
    r"""Kernel generating function :math:`\Psi(M) = \tfrac{C_0}{2}I + \sum_{m\ge1} C_m M^m`.

    M: scalars (any shape) or a stack of matrices (..., s, s). ``I_minus_M`` (same shape) is
    :math:`I - M` computed without cancellation (e.g. :math:`\lambda\Omega` for SGD); it is
    used by EMA, whose closed form needs :math:`(I - (1-a)M)^{-1}`. ``ema_inverse`` optionally
    gives :math:`(I-(1-a)M)^{-1}` directly (for matrices where a cancellation-free inverse is known).

    Closed forms: Last :math:`\tfrac12`; TwoPoint :math:`\tfrac14(I + M^\Delta)` (eq. 20);
    NPoint/SWA :math:`\tfrac1{2n}I + n^{-2} H T_{n-1}(H)`, :math:`H = M^\Delta` (eq. 21 without
    the inverses of :math:`I - M^\Delta`, which lose all digits for slow directions);
    EMA :math:`\frac{a}{2(2-a)}(I + (1-a)M)(I - (1-a)M)^{-1}`.
    """
    if isinstance(kernel, Last):
        return 0.5 * ops.I
    if isinstance(kernel, EMA):
        a = kernel.decay
        c = a / (2.0 * (2.0 - a))
        num = ops.I + (1.0 - a) * M
        if ema_inverse is not None:
            return c * ops.mul(num, ema_inverse)
        if I_minus_M is None:
            I_minus_M = ops.I - M
        den = I_minus_M + a * M  # = I - (1-a) M
        return c * ops.inv_solve(den, num)
    if isinstance(kernel, TwoPoint):
        return 0.25 * (ops.I + ops.power(M, kernel.delta))
    if isinstance(kernel, (NPoint, SWA)):
        n = kernel.n if isinstance(kernel, NPoint) else kernel.window
        D = kernel.delta if isinstance(kernel, NPoint) else 1
        if n == 1:
            return 0.5 * ops.I
        H = ops.power(M, D) if D > 1 else M
        return ops.I / (2.0 * n) + ops.mul(H, _triangular_geometric(H, n - 1, ops)) / float(n * n)
    # arbitrary finite kernel: Horner over its autocorrelation, using the stride compression
    pw = kernel.point_weights
    D = kernel.stride
    c = np.correlate(pw, pw, mode="full")[len(pw) - 1:]  # autocorrelation at lags 0, D, 2D, ...
    H = ops.power(M, D) if D > 1 else M
    acc = c[-1] * ops.I
    for cm in c[-2:0:-1]:
        acc = cm * ops.I + ops.mul(H, acc)
    if len(c) == 1:
        return 0.5 * c[0] * ops.I
    return 0.5 * c[0] * ops.I + ops.mul(H, acc)


def kernel_variance_ratio(kernel: AveragingKernel, g) -> np.ndarray:
    r"""Variance ratio of the average for a scalar AR(1) :math:`u' = g u + \text{noise}` (paper eq. 19's bracket).

    .. math:: K(g) = \frac{\mathrm{Var}\,\hat u}{\mathrm{Var}\,u} = C_0 + 2\sum_{\delta\ge1} C_\delta g^\delta
       = \sum_{j,k}\mu_j\mu_k g^{|j-k|}.

    TwoPoint: :math:`(1+g^\Delta)/2` (eq. 20); EMA with weight a: :math:`\frac{a}{2-a}\frac{1+(1-a)g}{1-(1-a)g}`.
    g: array of any shape (|g| < 1). Returns an array of the same shape.
    """
    g = np.asarray(g, dtype=np.float64 if np.isrealobj(g) else np.complex128)
    ops = _Ops(g, matrix=False)
    return 2.0 * _psi(kernel, g, ops, I_minus_M=1.0 - g)


# ====================================================================================
# Building blocks per eigen-direction
# ====================================================================================

def _companion(lam, lr: float, beta: float):
    r"""Heavy-ball companion matrices per eigenvalue: :math:`x_t = (u_t, u_{t-1})`,
    :math:`\Phi = \begin{pmatrix}1+\beta-\lambda\kappa & -\beta\\ 1 & 0\end{pmatrix}`; shape (d, 2, 2)."""
    lam = np.asarray(lam)
    Phi = np.zeros(lam.shape + (2, 2), dtype=np.result_type(lam, np.float64))
    Phi[..., 0, 0] = 1.0 + beta - lr * lam
    Phi[..., 0, 1] = -beta
    Phi[..., 1, 0] = 1.0
    return Phi


def _psi_companion(kernel, lam, lr: float, beta: float):
    """Psi of the heavy-ball companion matrix per eigenvalue; shape (d, 2, 2)."""
    Phi = _companion(lam, lr, beta)
    ops = _Ops(Phi, matrix=True)
    eps = lr * np.asarray(lam)
    if isinstance(kernel, EMA):
        # (I - (1-a) Phi)^{-1} via its adjugate; det = eps(1-a) + a(1 - beta(1-a)) has no cancellation
        a = kernel.decay
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
        return _psi(kernel, Phi, ops, ema_inverse=inv)
    return _psi(kernel, Phi, ops)


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

_METHODS = ("exact", "paper", "lyapunov")


def _check_model_kernel(m, kernel):
    from .model import LinearModel

    if not isinstance(m, LinearModel):
        raise ValueError(f"m must be a qs.LinearModel, got {type(m).__name__}")
    if not isinstance(kernel, AveragingKernel):
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...), got {kernel!r}")


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
      Lyapunov solve of the augmented state (scipy) and :math:`\Psi(M)` by doubling recurrences.

    ``method="paper"``: eq. 19 with the closed forms eq. 20 (TwoPoint) and eq. 21 (NPoint, SWA as
    NPoint with :math:`\Delta=1`) exactly as printed, :math:`F = \lambda(2\Omega-\lambda\Omega^2)^{-1}
    (C_0 + 2\sum_\delta C_\delta\Gamma^\delta)`, :math:`\Gamma = I-\lambda\Omega`. Exact for symmetric
    :math:`\Omega`; for non-normal :math:`\Omega` it is wrong and not even symmetric (returned as is).
    No momentum.

    Returns: shape (d,) (the variances) for a 1-D omega, (d, d) otherwise.
    """
    _check_model_kernel(m, kernel)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "paper":
        return _paper_covariance(m, kernel)
    lr, beta = m.lr, m.momentum
    if m.diagonal and method == "exact":
        w = m.omega
        if beta == 0.0:
            g = 1.0 - lr * w
            S = lr / (w * (2.0 - lr * w))  # eq. 19's S_lambda: Var of plain SGD per coordinate
            return S * kernel_variance_ratio(kernel, g) if not isinstance(kernel, Last) else S
        p, q, r = _pair_moments(w, w, lr, beta)
        Psi = _psi_companion(kernel, w, lr, beta)
        return 2.0 * (Psi[:, 0, 0] * p + Psi[:, 0, 1] * r)
    if method == "exact":
        lam, V, Vinv, cond = m._eig
        if Vinv is not None and cond < 1e8:
            return _eigen_covariance(m, kernel, lam, V, Vinv)
    return _lyapunov_covariance(m, kernel)


def _eigen_covariance(m, kernel, lam, V, Vinv):
    lr, beta = m.lr, m.momentum
    Sig = Vinv @ Vinv.conj().T  # noise covariance in eigen-coordinates
    li, lj = lam[:, None], lam[None, :]
    p, q, r = _pair_moments(li, lj, lr, beta)
    if beta == 0.0:
        g = 1.0 - lr * lam
        psi = 0.5 * kernel_variance_ratio(kernel, g)
        C = p * (psi[:, None] + np.conj(psi)[None, :])
    else:
        Psi = _psi_companion(kernel, lam, lr, beta)
        a, b = Psi[:, 0, 0], Psi[:, 0, 1]
        C = a[:, None] * p + b[:, None] * r + p * np.conj(a)[None, :] + q * np.conj(b)[None, :]
    C = C * Sig
    out = (V @ C @ V.conj().T).real
    return 0.5 * (out + out.T)


def _augmented_system(m):
    """Companion-form transition (2d x 2d) and noise factor (2d x d); for beta = 0, (d x d) and lr*I."""
    om = m.omega if not m.diagonal else np.diag(m.omega)
    d = m.dim
    lr, beta = m.lr, m.momentum
    if beta == 0.0:
        return np.eye(d) - lr * om, lr * np.eye(d), lr * om
    Phi = np.zeros((2 * d, 2 * d))
    Phi[:d, :d] = (1.0 + beta) * np.eye(d) - lr * om
    Phi[:d, d:] = -beta * np.eye(d)
    Phi[d:, :d] = np.eye(d)
    N = np.zeros((2 * d, d))
    N[:d] = lr * np.eye(d)
    IminusPhi = np.eye(2 * d) - Phi
    IminusPhi[:d, :d] = lr * om - beta * np.eye(d)
    return Phi, N, IminusPhi


def _lyapunov_covariance(m, kernel):
    """Fallback: augmented-state Lyapunov solve + Psi(Phi) by doubling; O(d^3 log n)."""
    Phi, N, IminusPhi = _augmented_system(m)
    P = sla.solve_discrete_lyapunov(Phi, N @ N.T)
    P = 0.5 * (P + P.T)
    Psi = _psi(kernel, Phi, _Ops(Phi, matrix=True), I_minus_M=IminusPhi)
    X = Psi @ P
    d = m.dim
    out = (X + X.T)[:d, :d]
    out = 0.5 * (out + out.T)
    return np.diag(out).copy() if m.diagonal else out


def _paper_kernel_factor(kernel, Gam, ops: _Ops):
    r"""eq. 19's bracket :math:`C_0 + 2\sum_\delta C_\delta\Gamma^\delta` as printed (eq. 20, 21)."""
    I = ops.I
    if isinstance(kernel, Last):
        return I.copy()
    if isinstance(kernel, TwoPoint):
        return 0.5 * (I + ops.power(Gam, kernel.delta))  # eq. 20: C_0 = 1/2, C_Delta = 1/4
    if isinstance(kernel, (NPoint, SWA)):
        n = kernel.n if isinstance(kernel, NPoint) else kernel.window
        D = kernel.delta if isinstance(kernel, NPoint) else 1
        if n == 1:
            return I.copy()
        GD = ops.power(Gam, D)
        inv1 = ops.inv_solve(I - GD, I)  # (I - Gamma^Delta)^{-1}
        G1 = ops.mul(ops.mul(inv1, GD), I - ops.power(GD, n - 1))
        G2 = ops.mul(ops.mul(ops.mul(inv1, inv1), GD),
                     I - n * ops.power(GD, n - 1) + (n - 1) * ops.power(GD, n))
        return I / n + (2.0 / n) * (G1 - G2 / n)  # eq. 21
    if isinstance(kernel, EMA):
        a = kernel.decay
        # C_delta = a (1-a)^delta / (2-a): geometric sum in closed form
        x = (1.0 - a) * Gam
        return (a / (2.0 - a)) * (I + 2.0 * ops.inv_solve(I - x, x))
    c = kernel.autocorrelation()
    acc = np.zeros_like(I)
    for cm in c[:0:-1]:
        acc = ops.mul(Gam, cm * I + acc)
    return c[0] * I + 2.0 * acc


def _paper_covariance(m, kernel):
    if m.momentum != 0.0:
        raise ValueError("method='paper' (eq. 19) has no momentum: momentum must be 0 "
                         f"(got {m.momentum}); use method='exact'")
    lr = m.lr
    if m.diagonal:
        w = m.omega
        Gam = 1.0 - lr * w
        S = lr / (2.0 * w - lr * w * w)
        return S * _paper_kernel_factor(kernel, Gam, _Ops(Gam, matrix=False))
    om = m.omega
    d = m.dim
    Gam = np.eye(d) - lr * om
    S = lr * np.linalg.inv(2.0 * om - lr * om @ om)  # S_lambda = lambda (2 Omega - lambda Omega^2)^{-1}
    return S @ _paper_kernel_factor(kernel, Gam, _Ops(Gam, matrix=True))


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
        return kernel_variance_ratio(kernel, 1.0 - lr * lam).real
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
    if method not in ("ratio", "exact"):
        raise ValueError(f"method must be 'ratio' or 'exact', got {method!r}")
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

    ``method="paper"``: eq. 13, :math:`\|\theta\| = \sqrt{E\|\xi\|^2}\sqrt{\lambda/2}` with
    :math:`E\|\xi\|^2 = \mathrm{tr}\,C` (:math:`C = QQ^\top`), derived under Lemma 1's assumption
    :math:`E[A_x^\top A_x] = I` and to first order in :math:`\lambda`; Last kernel only, no momentum.
    For :math:`\Omega = I` the exact value is :math:`\sqrt{\mathrm{tr}C\,\lambda/(2-\lambda)}`.
    """
    _check_model_kernel(m, kernel)
    if method == "paper":
        if not isinstance(kernel, Last) or m.momentum != 0.0:
            raise ValueError("method='paper' (eq. 13) applies to the raw trajectory: kernel must be "
                             "Last() and momentum 0")
        Q = m.Q
        return float(np.sqrt(m.lr * np.sum(Q * Q) / 2.0))
    if method != "exact":
        raise ValueError(f"method must be 'exact' or 'paper', got {method!r}")
    C = stationary_covariance(m, kernel)
    if m.diagonal:
        return float(np.sqrt(np.sum(C)))
    Q = m.Q
    return float(np.sqrt(np.trace(Q @ C @ Q.T)))


# ====================================================================================
# Exact transient expected loss
# ====================================================================================

def _check_lr_schedule(m, steps, lr):
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    if lr is None:
        return steps, np.full(steps, m.lr)
    lrs = np.asarray(lr, dtype=np.float64)
    if lrs.ndim == 0:
        lrs = np.full(steps, float(lrs))
    if lrs.ndim != 1 or lrs.shape[0] != steps:
        raise ValueError(f"lr must be None, a scalar or an array of length steps = {steps}, got shape {lrs.shape}")
    if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
        raise ValueError("lr must be finite and >= 0 at every step")
    bound = m.lr_bound
    bad = np.flatnonzero(lrs >= bound)
    if bad.size:
        raise ValueError(f"lr[{bad[0]}] = {lrs[bad[0]]!r} is unstable: every step needs 0 <= lr < {bound:.6g}")
    return steps, lrs


def _kernel_points(kernel):
    if isinstance(kernel, EMA):
        return 1, np.ones(1), kernel.decay if kernel.decay < 1.0 else 0.0
    return kernel.stride, np.ascontiguousarray(kernel.point_weights, dtype=np.float64), 0.0


def expected_loss(m, kernel: AveragingKernel = Last(), steps: int | None = None, lr=None, u0=None) -> np.ndarray:
    r"""Exact expected loss :math:`E[\tfrac12\hat u_t^\top H\hat u_t]` of the averaged iterate for t = 0..steps.

    Starts from a deterministic :math:`u_0` (default ones) with the momentum buffer at 0; for
    :math:`t < 0` the chain sits at :math:`u_0` (an EMA starts at :math:`e_0 = u_0`, window
    averages pad with :math:`u_0`). First and second moments are propagated exactly (no sampling):

    .. math:: E\,\ell_t = \tfrac12\,\bar u_t^\top H\bar u_t + \tfrac12\mathrm{tr}(H\,\mathrm{Cov}\,\hat u_t).

    lr: None (constant ``m.lr``), or an array of shape (steps,) (lr of step t -> t+1).
    Cost for diagonal omega: O(d T) for Last, EMA, TwoPoint and (SGD) SWA of any window -- the SWA
    window sums use block suffix/prefix sums, so nothing is subtracted -- and O(d T n) for NPoint
    (n points), for an arbitrary ``Kernel`` (its support) and for SWA with momentum (its window).
    Dense diagonalizable omega: the same per pair of eigen-directions, O(d^2 T n).
    Returns: shape (steps + 1,).
    """
    from . import _moments

    _check_model_kernel(m, kernel)
    if steps is None:
        raise ValueError("steps must be given (an integer >= 1)")
    steps, lrs = _check_lr_schedule(m, steps, lr)
    d = m.dim
    if u0 is None:
        u0 = np.ones(d)
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.shape != (d,) or not np.all(np.isfinite(u0)):
        raise ValueError(f"u0 must be a finite array of shape ({d},), got shape {u0.shape}")
    H = m.loss_matrix()
    D, w, a = _kernel_points(kernel)
    beta = m.momentum
    if m.diagonal:
        lam = np.ascontiguousarray(m.omega)
        pairs = np.stack([np.arange(d), np.arange(d)], axis=1).astype(np.int64)
        sig = np.ones(d)
        hw = np.asarray(H, dtype=np.float64)
        swa = isinstance(kernel, SWA) and kernel.window >= 2
        if beta == 0.0 and swa:
            cov = _moments.sgd_diag_cov_loss_swa(lam, hw, lrs, kernel.window, 64)  # O(d T)
        elif beta == 0.0:
            cov = _moments.sgd_diag_cov_loss(lam, hw, lrs, D, w, a, 64)
        else:
            cov = _moments.cov_loss_curves(lam, pairs, sig, hw, lrs, beta, D, w, a, 64)
        if swa:
            mean = _moments.mean_loss_diag_swa(lam, hw, u0, lrs, beta, kernel.window)
        else:
            mean = _moments.mean_loss_diag(lam, hw, u0, lrs, beta, D, w, a)
        return mean + cov
    lam, V, Vinv, cond = m._eig
    if Vinv is None or cond >= 1e8:
        raise ValueError(f"expected_loss needs a diagonalizable omega; its eigenvector matrix has "
                         f"condition number {cond:.3g}")
    Sig = Vinv @ Vinv.conj().T
    Hm = H if H.ndim == 2 else np.diag(H)
    Hp = V.conj().T @ Hm @ V  # loss matrix in eigen-coordinates
    iu, ju = np.triu_indices(d)
    pairs = np.stack([iu, ju], axis=1).astype(np.int64)
    sig = np.ascontiguousarray(Sig[iu, ju])
    hw = np.ascontiguousarray(np.where(iu == ju, 1.0, 2.0) * Hp[ju, iu])
    cov = _moments.cov_loss_curves(np.ascontiguousarray(lam), pairs, sig, hw, lrs, beta, D, w, a, 64)
    mhat = _moments.mean_curves(np.ascontiguousarray(lam), (Vinv @ u0).astype(np.complex128), lrs, beta, D, w, a)
    mean = 0.5 * np.einsum("ti,ti->t", mhat.conj(), mhat @ Hp.T).real
    return mean + cov
