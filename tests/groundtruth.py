"""Independent ground truths for the theory tests (brute force; share no code with quadsgd.theory).

``state_system`` -- the heavy-ball (u, buf) transition written out from its definition -- is the one
transition builder of the test oracles (tests/simtruth.py uses it too).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla

import quadsgd as qs


def dense_omega(m) -> np.ndarray:
    """Omega as a (d, d) array (a diagonal model's omega on the diagonal)."""
    return np.diag(m.omega) if m.diagonal else np.asarray(m.omega)


def state_system(m, lr=None):
    r"""(u, buf) transition and noise factor of PyTorch heavy ball: z' = M z + N xi; M (2d, 2d), N (2d, d).

    :math:`b' = \beta b + \Omega u - \xi`, :math:`u' = u - \lambda b'`, written out from the definition
    (the one transition builder of the test oracles: tests/simtruth.py imports it).
    """
    om = dense_omega(m)
    d = m.dim
    lr = m.lr if lr is None else lr
    b = m.momentum
    M = np.block([[np.eye(d) - lr * om, -lr * b * np.eye(d)], [om, b * np.eye(d)]])
    N = np.vstack([lr * np.eye(d), -np.eye(d)])
    return M, N


def kernel_weights(kernel, ema_tol=1e-17) -> np.ndarray:
    if isinstance(kernel, qs.EMA):
        a = kernel.decay
        L = 1 if a == 1.0 else int(np.ceil(np.log(ema_tol) / np.log1p(-a))) + 1
        return a * (1.0 - a) ** np.arange(L)
    return kernel.weights()


def brute_stationary_cov(m, kernel) -> np.ndarray:
    """scipy Lyapunov solve of the (u, buf) state, then sum_{j,k} mu_j mu_k E[u_{t-j} u_{t-k}^T] term by term."""
    M, N = state_system(m)
    d = m.dim
    P = sla.solve_discrete_lyapunov(M, N @ N.T)
    mu = kernel_weights(kernel)
    nz = np.flatnonzero(mu)
    L = nz[-1] + 1
    R = np.empty((L, d, d))
    X = P.copy()
    for k in range(L):
        R[k] = X[:d, :d]
        X = M @ X
    C = np.zeros((d, d))
    for j in nz:
        for k in nz:
            C += mu[j] * mu[k] * (R[k - j] if k >= j else R[j - k].T)
    C = 0.5 * (C + C.T)
    return np.diag(C).copy() if m.diagonal else C


def brute_expected_loss(m, kernel, steps, lrs=None, u0=None) -> np.ndarray:
    """Full joint Gaussian of a shift register of the last L (u, buf) states (plus the EMA state)."""
    H = m.loss_matrix()
    H = np.diag(H) if H.ndim == 1 else H
    d = m.dim
    lrs = np.full(steps, m.lr) if lrs is None else np.asarray(lrs, dtype=float)
    u0 = np.ones(d) if u0 is None else np.asarray(u0, dtype=float)
    ema = isinstance(kernel, qs.EMA)
    mu = np.ones(1) if ema else kernel.weights()
    L = len(mu)
    s = 2 * d
    n = L * s + (d if ema else 0)
    mean = np.zeros(n)
    cov = np.zeros((n, n))
    for k in range(L):
        mean[k * s:k * s + d] = u0
    if ema:
        mean[L * s:] = u0
    A = np.zeros((d, n))
    if ema:
        A[:, L * s:] = np.eye(d)
    else:
        for k in range(L):
            A[:, k * s:k * s + d] += mu[k] * np.eye(d)

    def loss():
        mm = A @ mean
        return 0.5 * (mm @ H @ mm + np.trace(H @ A @ cov @ A.T))

    out = [loss()]
    for t in range(steps):
        M, N = state_system(m, lrs[t])
        F = np.zeros((n, n))
        G = np.zeros((n, d))
        F[:s, :s] = M
        G[:s] = N
        for k in range(1, L):
            F[k * s:(k + 1) * s, (k - 1) * s:k * s] = np.eye(s)
        if ema:
            a = kernel.decay
            F[L * s:, L * s:] = (1 - a) * np.eye(d)
            F[L * s:, :s] = a * M[:d]
            G[L * s:] = a * N[:d]
        mean = F @ mean
        cov = F @ cov @ F.T + G @ G.T
        out.append(loss())
    return np.array(out)
