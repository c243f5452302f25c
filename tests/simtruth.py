"""Independent ground truths for the simulator tests (share no code with quadsgd.simulate / theory).

The heavy-ball (u, buf) transition comes from :mod:`tests.groundtruth` (``state_system``), the one
transition builder of both oracles.

* pure-Python xoshiro256++ and SplitMix64, and the xoshiro256 jump as the GF(2) matrix power T^(2^128);
* stationary covariance of an averaged iterate by one scipy Lyapunov solve of a shift register of the
  last L (u, buf) states (finite kernels) or of the (u, buf, e) state (EMA);
* exact expected loss curves by linear coefficients: every iterate is G_t u0 + F_t xi_{0..t-1}.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla
from scipy import stats

import quadsgd as qs

from .groundtruth import dense_omega, state_system

MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------- RNG
def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK64


def xoshiro_py(state, n):
    """n outputs of xoshiro256++ (Blackman & Vigna reference code, transcribed)."""
    s = [int(v) for v in state]
    out = []
    for _ in range(n):
        out.append((rotl((s[0] + s[3]) & MASK64, 23) + s[0]) & MASK64)
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
    return out, s


def splitmix_py(seed, n=4):
    x = seed & MASK64
    out = []
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def _state_to_bits(s):
    return np.array([(int(s[w]) >> b) & 1 for w in range(4) for b in range(64)], dtype=np.float64)


def _bits_to_state(v):
    v = np.asarray(v).astype(np.int64) & 1
    return [sum(int(v[w * 64 + b]) << b for b in range(64)) for w in range(4)]


def jump_by_matrix_power(state, log2_steps=128):
    """State advanced by 2**log2_steps xoshiro256 steps: the linear map T over GF(2)^256, squared."""
    T = np.zeros((256, 256))
    for k in range(256):
        e = np.zeros(256)
        e[k] = 1
        _, s = xoshiro_py(_bits_to_state(e), 1)
        T[:, k] = _state_to_bits(s)
    for _ in range(log2_steps):
        T = np.mod(T @ T, 2.0)  # exact: entries of T @ T are integers <= 256
    return _bits_to_state(np.mod(T @ _state_to_bits(state), 2.0))


# ----------------------------------------------------------------------------- stationary moments
# the (u, buf) transition is the theory oracle's (one builder for both oracles, none from quadsgd)
step_system = state_system


def lyapunov_kernel_cov(m, kernel):
    """Stationary Cov of the kernel average, by one Lyapunov solve of an augmented state; (d, d)."""
    M, N = step_system(m)
    d = m.dim
    s = 2 * d
    if isinstance(kernel, qs.EMA):
        a = kernel.decay
        F = np.zeros((3 * d, 3 * d))
        F[:s, :s] = M
        F[s:, :s] = a * M[:d]
        F[s:, s:] = (1 - a) * np.eye(d)
        G = np.vstack([N, a * N[:d]])
        P = sla.solve_discrete_lyapunov(F, G @ G.T)
        C = P[s:, s:]
    else:
        mu = kernel.weights()
        L = mu.size
        n = L * s
        F = np.zeros((n, n))
        G = np.zeros((n, d))
        F[:s, :s] = M
        G[:s] = N
        for k in range(1, L):
            F[k * s:(k + 1) * s, (k - 1) * s:k * s] = np.eye(s)
        P = sla.solve_discrete_lyapunov(F, G @ G.T)
        A = np.zeros((d, n))
        for k in range(L):
            A[:, k * s:k * s + d] = mu[k] * np.eye(d)
        C = A @ P @ A.T
    return 0.5 * (C + C.T)


def mixing_steps(m):
    """1 / (1 - spectral radius) of the (u, buf) transition (steps)."""
    M, _ = step_system(m)
    rho = np.max(np.abs(np.linalg.eigvals(M)))
    return 1.0 / (1.0 - rho)


# --------------------------------------------------------------------------------- transients
def coefficient_expected_loss(m, kernel, steps, lrs=None, u0=None, times=None):
    """E[0.5 uhat^T H uhat] at `times` (default 0..steps) from the linear coefficients of every iterate.

    u_t = G_t u0 + F_t xi (xi: all noises, (steps*d,)), buf likewise; the average is the same linear
    combination of the coefficients (EMA: its recursion on coefficients), so
    E loss = 0.5 (G u0)^T H (G u0) + 0.5 tr(F^T H F). Small d and steps only.
    """
    d = m.dim
    om = dense_omega(m)
    H = np.asarray(m.loss_matrix(), dtype=float)
    H = np.diag(H) if H.ndim == 1 else H
    lrs = np.full(steps, m.lr) if lrs is None else np.asarray(lrs, dtype=float)
    u0 = np.ones(d) if u0 is None else np.asarray(u0, dtype=float)
    beta = m.momentum
    nx = steps * d
    Gu = [np.eye(d)]
    Fu = [np.zeros((d, nx))]
    Gb, Fb = np.zeros((d, d)), np.zeros((d, nx))
    for t in range(steps):
        gG = om @ Gu[-1]
        gF = om @ Fu[-1]
        gF[:, t * d:(t + 1) * d] -= np.eye(d)
        Gb, Fb = beta * Gb + gG, beta * Fb + gF
        Gu.append(Gu[-1] - lrs[t] * Gb)
        Fu.append(Fu[-1] - lrs[t] * Fb)
    times = np.arange(steps + 1) if times is None else np.asarray(times)
    out = []
    if isinstance(kernel, qs.EMA):
        a = kernel.decay
        Ge, Fe = [Gu[0]], [Fu[0]]
        for t in range(1, steps + 1):
            Ge.append((1 - a) * Ge[-1] + a * Gu[t])
            Fe.append((1 - a) * Fe[-1] + a * Fu[t])
        pairs = [(Ge[t], Fe[t]) for t in times]
    else:
        w = np.asarray(kernel.point_weights, dtype=float)
        s = int(kernel.stride)
        pairs = []
        for t in times:
            G = sum(w[j] * Gu[max(t - j * s, 0)] for j in range(w.size))
            F = sum(w[j] * Fu[max(t - j * s, 0)] for j in range(w.size))
            pairs.append((G, F))
    for G, F in pairs:
        mu = G @ u0
        out.append(0.5 * mu @ H @ mu + 0.5 * np.sum(F * (H @ F)))
    return np.array(out)


# ----------------------------------------------------------------------------------- statistics
def gaussian_pvalues(X, Sigma, mean=None):
    """p-values that the rows of X (N, d) are i.i.d. N(mean, Sigma), after whitening by chol(Sigma).

    Whitened Y ~ N(0, I): per coordinate, two-sided z-test of the mean (exact), two-sided chi-square
    test of sum Y_i^2 ~ chi2(N) (exact), and for i < j a two-sided z-test of sum Y_i Y_j / sqrt(N)
    (CLT; the summands have mean 0, variance 1). Returns a flat array of p-values.
    """
    X = np.asarray(X, dtype=np.float64)
    N, d = X.shape
    mean = np.zeros(d) if mean is None else mean
    L = np.linalg.cholesky(np.atleast_2d(Sigma))
    Y = sla.solve_triangular(L, (X - mean).T, lower=True).T
    p = [2 * stats.norm.sf(np.abs(Y.sum(0) / math.sqrt(N)))]
    q = (Y * Y).sum(0)
    p.append(2 * np.minimum(stats.chi2.cdf(q, N), stats.chi2.sf(q, N)))
    if d > 1:
        iu, ju = np.triu_indices(d, 1)
        z = (Y[:, iu] * Y[:, ju]).sum(0) / math.sqrt(N)
        p.append(2 * stats.norm.sf(np.abs(z)))
    return np.concatenate([np.atleast_1d(x) for x in p])


def two_sample_pvalues(X1, X2, Sigma):
    """p-values that X1 (N1, d) and X2 (N2, d), both zero-mean Gaussian, have the same law.

    Whitened by chol(Sigma): per coordinate a two-sample z-test of the means and an F-test of the
    second moments (sum Y^2 / N ~ chi2(N)/N exactly, ratio ~ F(N1, N2)); for i < j a two-sample
    z-test of the mean products (CLT).
    """
    L = np.linalg.cholesky(np.atleast_2d(Sigma))
    Y1 = sla.solve_triangular(L, np.asarray(X1, float).T, lower=True).T
    Y2 = sla.solve_triangular(L, np.asarray(X2, float).T, lower=True).T
    n1, n2 = Y1.shape[0], Y2.shape[0]
    d = Y1.shape[1]
    z = (Y1.mean(0) - Y2.mean(0)) / math.sqrt(1 / n1 + 1 / n2)
    p = [2 * stats.norm.sf(np.abs(z))]
    f = (Y1 ** 2).mean(0) / (Y2 ** 2).mean(0)
    p.append(2 * np.minimum(stats.f.cdf(f, n1, n2), stats.f.sf(f, n1, n2)))
    if d > 1:
        iu, ju = np.triu_indices(d, 1)
        a, b = Y1[:, iu] * Y1[:, ju], Y2[:, iu] * Y2[:, ju]
        z = (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0, ddof=1) / n1 + b.var(0, ddof=1) / n2)
        p.append(2 * stats.norm.sf(np.abs(z)))
    return np.concatenate([np.atleast_1d(x) for x in p])
