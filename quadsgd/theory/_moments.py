r"""Numba kernels for the exact transient moments of averaged iterates (no I/O, no validation).

Private to :mod:`quadsgd.theory.transient` (:func:`~quadsgd.theory.expected_loss` validates the
arguments and picks the kernel from the average's ``tracking()``).

Everything runs in the eigen-coordinates of :math:`\Omega` (identity for a diagonal omega), where
each mode i evolves independently with state :math:`z^i = (u_i)` (SGD) or :math:`(u_i, b_i)`
(heavy-ball, PyTorch convention) and transition, at step t with learning rate :math:`\lambda_t`,

.. math:: M^i_t = \begin{pmatrix}1-\lambda_t\kappa_i & -\lambda_t\beta\\ \kappa_i & \beta\end{pmatrix},\qquad
          N_t = (\lambda_t, -1)^\top,\qquad z_{t+1} = M_t z_t + N_t\xi'_t .

Second moments are propagated per *pair* of modes (i, j):
:math:`\Sigma^{ij}_{t+1} = M^i_t\Sigma^{ij}_t (M^j_t)^H + \sigma'_{ij}N_tN_t^\top`, with
:math:`\sigma' = V^{-1}V^{-H}` the noise covariance in eigen-coordinates.

A finite kernel with non-zero weights :math:`w_k` at lags :math:`kD` gives, at time t,

.. math:: \mathrm{Cov}(\hat u_i,\hat u_j) = \sum_k w_k\big[\rho^i_k\Sigma^{ij}_{t-kD}e
          + e^\top\Sigma^{ij}_{t-kD}(\rho^j_k)^H - w_k e^\top\Sigma^{ij}_{t-kD}e\big],\quad
          \rho^i_k = \rho^i_{k-1}A^i_{t-(k-1)D,\,t-kD} + w_k e^\top,

where :math:`A^i_{a,b} = M^i_{a-1}\cdots M^i_b` (window products over D steps, computed in O(1)
amortised per step by splitting time into blocks of length D: suffix products of one block times
prefix products of the next). EMA is Markov: the state is augmented by
:math:`e_{t+1} = (1-a)e_t + a u_{t+1}`.

The reduction over pairs uses a fixed partition into chunks (independent of the thread count), so
results are bit-identical for any NUMBA_NUM_THREADS.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_TINY = 1e-150  # magnitudes below this are flushed to 0 in products whose squares feed a loss


@njit(cache=True)
def _sum_rows(partial):
    """Sum of the rows of (n_chunks, T+1) partial results, in a fixed order (thread-count independent)."""
    out = np.zeros(partial.shape[1])
    for ch in range(partial.shape[0]):
        for t in range(partial.shape[1]):
            out[t] += partial[ch, t]
    return out


@njit(cache=True)
def _fill_transition(lam, lr, beta, s, ema, M, Nv):
    """Transition M (ss x ss) and noise vector Nv (ss,) of one mode at learning rate lr.

    s = 1 (SGD) or 2 (heavy ball); ema > 0 appends the EMA coordinate (ss = s + 1).
    The compiled twin of :func:`quadsgd._heavy_ball.one_step_matrices` for one diagonal coordinate
    (state (u, [b], [e]), ``ema_a = (ema,)`` or ``()``), written inline so that it stays in nopython
    code; ``tests/test_theory.py`` checks that the two agree entry for entry.
    """
    for a in range(M.shape[0]):
        for b in range(M.shape[1]):
            M[a, b] = 0.0
    M[0, 0] = 1.0 - lr * lam
    Nv[0] = lr
    if s == 2:
        M[0, 1] = -lr * beta
        M[1, 0] = lam
        M[1, 1] = beta
        Nv[1] = -1.0
    if ema > 0.0:
        k = s
        for b in range(s):
            M[k, b] = ema * M[0, b]
        M[k, k] = 1.0 - ema
        Nv[k] = ema * Nv[0]


@njit(cache=True)
def _matmul_small(A, B, out):
    n = A.shape[0]
    for a in range(n):
        for b in range(n):
            acc = A[a, 0] * B[0, b]
            for c in range(1, n):
                acc += A[a, c] * B[c, b]
            out[a, b] = acc


@njit(cache=True)
def _window_products(lam, lrs, beta, s, D, W, Suf, Pre, M, Nv, tmp):
    """W[tau] = A_{tau+D, tau} = M_{tau+D-1} ... M_tau for tau = 0..T-D; shape (T-D+1, s, s)."""
    T = lrs.shape[0]
    # suffix products within each block [jD, (j+1)D): Suf[tau] = M_{end-1} ... M_tau
    for start in range(0, T, D):
        end = min(start + D, T)
        for tau in range(end - 1, start - 1, -1):
            _fill_transition(lam, lrs[tau], beta, s, 0.0, M, Nv)
            if tau == end - 1:
                for a in range(s):
                    for b in range(s):
                        Suf[tau, a, b] = M[a, b]
            else:
                _matmul_small(Suf[tau + 1], M, Suf[tau])
    # prefix products from each block start: Pre[x] = M_{x-1} ... M_{start}, Pre[start] = I
    for start in range(0, T + 1, D):
        for a in range(s):
            for b in range(s):
                Pre[start, a, b] = 1.0 if a == b else 0.0
        for x in range(start + 1, min(start + D, T + 1)):
            _fill_transition(lam, lrs[x - 1], beta, s, 0.0, M, Nv)
            _matmul_small(M, Pre[x - 1], Pre[x])
    for tau in range(0, T - D + 1):
        start = (tau // D) * D
        # the window [tau, tau+D) spans the end of this block and the start of the next one
        if tau == start:
            for a in range(s):
                for b in range(s):
                    W[tau, a, b] = Suf[tau, a, b]
        else:
            _matmul_small(Pre[tau + D], Suf[tau], tmp)
            for a in range(s):
                for b in range(s):
                    W[tau, a, b] = tmp[a, b]


@njit(cache=True)
def _pair_cov_curve(li, lj, sig, lrs, beta, s, D, w, Wi, Wj, Sig, Mi, Mj, Nv, tmp, out, scale):
    """Adds scale * Cov(u_hat_i, u_hat_j)_t for t = 0..T to out (finite kernel); uses Sig scratch."""
    T = lrs.shape[0]
    n = w.shape[0]
    for a in range(s):
        for b in range(s):
            Sig[0, a, b] = 0.0
    for t in range(T):
        _fill_transition(li, lrs[t], beta, s, 0.0, Mi, Nv)
        _fill_transition(lj, lrs[t], beta, s, 0.0, Mj, Nv)
        # tmp = Mi Sig_t
        _matmul_small(Mi, Sig[t], tmp)
        for a in range(s):
            for b in range(s):
                acc = tmp[a, 0] * np.conj(Mj[b, 0])
                for c in range(1, s):
                    acc += tmp[a, c] * np.conj(Mj[b, c])
                Sig[t + 1, a, b] = acc + sig * Nv[a] * Nv[b]
    rho_i = np.zeros(s, dtype=Sig.dtype)
    rho_j = np.zeros(s, dtype=Sig.dtype)
    new_i = np.zeros(s, dtype=Sig.dtype)
    new_j = np.zeros(s, dtype=Sig.dtype)
    for t in range(1, T + 1):
        acc = 0.0 * Sig[0, 0, 0]
        for k in range(n):
            tau = t - k * D
            if tau <= 0:
                break  # Sigma_tau = 0 for tau <= 0 (the chain sits at u0)
            if k == 0:
                for a in range(s):
                    rho_i[a] = 0.0
                    rho_j[a] = 0.0
                rho_i[0] = w[0]
                rho_j[0] = w[0]
            else:
                A_i = Wi[tau]
                A_j = Wj[tau]
                for b in range(s):
                    vi = rho_i[0] * A_i[0, b]
                    vj = rho_j[0] * A_j[0, b]
                    for c in range(1, s):
                        vi += rho_i[c] * A_i[c, b]
                        vj += rho_j[c] * A_j[c, b]
                    new_i[b] = vi
                    new_j[b] = vj
                for b in range(s):
                    rho_i[b] = new_i[b]
                    rho_j[b] = new_j[b]
                rho_i[0] += w[k]
                rho_j[0] += w[k]
            S = Sig[tau]
            term = -w[k] * S[0, 0]
            for c in range(s):
                term += rho_i[c] * S[c, 0] + S[0, c] * np.conj(rho_j[c])
            acc += w[k] * term
        out[t] += (scale * acc).real


@njit(cache=True)
def _pair_cov_curve_ema(li, lj, sig, lrs, beta, s, a_ema, Mi, Mj, Nv, Sig, Sig2, tmp, out, scale):
    """Adds scale * Cov(e_i, e_j)_t for t = 0..T to out (EMA, Markov augmentation)."""
    T = lrs.shape[0]
    ss = s + 1
    for a in range(ss):
        for b in range(ss):
            Sig[a, b] = 0.0
    for t in range(T):
        _fill_transition(li, lrs[t], beta, s, a_ema, Mi, Nv)
        _fill_transition(lj, lrs[t], beta, s, a_ema, Mj, Nv)
        _matmul_small(Mi, Sig, tmp)
        for a in range(ss):
            for b in range(ss):
                acc = tmp[a, 0] * np.conj(Mj[b, 0])
                for c in range(1, ss):
                    acc += tmp[a, c] * np.conj(Mj[b, c])
                Sig2[a, b] = acc + sig * Nv[a] * Nv[b]
        for a in range(ss):
            for b in range(ss):
                Sig[a, b] = Sig2[a, b]
        out[t + 1] += (scale * Sig[s, s]).real


@njit(parallel=True, cache=True)
def cov_loss_curves(lam, pairs, sig, hw, lrs, beta, D, w, a_ema, n_chunks):
    r"""Covariance part of the expected loss, :math:`\tfrac12\sum_{ij}\mathrm{Re}(h_{ij}\mathrm{Cov}_{ij,t})`.

    lam: (d,) eigenvalues; pairs: (P, 2) int64 with i <= j; sig: (P,) noise covariance
    :math:`\sigma'_{ij}`; hw: (P,) loss weights (already doubled for i < j); lrs: (T,) per-step lr;
    beta: momentum; D, w: stride and point weights of a finite kernel (ignored when a_ema > 0);
    a_ema: EMA decay (0 for a finite kernel); n_chunks: fixed partition of the pairs.
    Returns (T+1,) float64.
    """
    T = lrs.shape[0]
    P = pairs.shape[0]
    s = 2 if beta != 0.0 else 1
    n_chunks = max(1, min(n_chunks, P))
    partial = np.zeros((n_chunks, T + 1))
    dt = lam.dtype
    for ch in prange(n_chunks):
        lo = (P * ch) // n_chunks
        hi = (P * (ch + 1)) // n_chunks
        ss = s + 1
        Mi = np.zeros((ss, ss), dtype=dt)
        Mj = np.zeros((ss, ss), dtype=dt)
        Nv = np.zeros(ss, dtype=dt)
        tmp = np.zeros((ss, ss), dtype=dt)
        if a_ema > 0.0:
            Sig = np.zeros((ss, ss), dtype=dt)
            Sig2 = np.zeros((ss, ss), dtype=dt)
            for p in range(lo, hi):
                i = pairs[p, 0]
                j = pairs[p, 1]
                _pair_cov_curve_ema(lam[i], lam[j], sig[p], lrs, beta, s, a_ema, Mi, Mj, Nv, Sig, Sig2,
                                    tmp, partial[ch], 0.5 * hw[p])
        else:
            nW = max(T - D + 1, 1)
            Wi = np.zeros((nW, s, s), dtype=dt)
            Wj = np.zeros((nW, s, s), dtype=dt)
            Suf = np.zeros((T + 1, s, s), dtype=dt)
            Pre = np.zeros((T + 1, s, s), dtype=dt)
            SigT = np.zeros((T + 1, s, s), dtype=dt)
            Ms = np.zeros((s, s), dtype=dt)
            Ns = np.zeros(s, dtype=dt)
            tmps = np.zeros((s, s), dtype=dt)
            Mis = np.zeros((s, s), dtype=dt)
            Mjs = np.zeros((s, s), dtype=dt)
            last_i = -1
            for p in range(lo, hi):
                i = pairs[p, 0]
                j = pairs[p, 1]
                if w.shape[0] > 1 and T >= D:
                    if i != last_i:
                        _window_products(lam[i], lrs, beta, s, D, Wi, Suf, Pre, Ms, Ns, tmps)
                        last_i = i
                    if j == i:
                        Wj[:] = Wi
                    else:
                        _window_products(lam[j], lrs, beta, s, D, Wj, Suf, Pre, Ms, Ns, tmps)
                _pair_cov_curve(lam[i], lam[j], sig[p], lrs, beta, s, D, w, Wi, Wj, SigT, Mis, Mjs, Ns,
                                tmps, partial[ch], 0.5 * hw[p])
    return _sum_rows(partial)


@njit(cache=True)
def mean_curves(lam, u0, lrs, beta, D, w, a_ema):
    r"""Mean of the averaged iterate per mode, :math:`E\hat u'_{i,t}` for t = 0..T; shape (T+1, d).

    u0: (d,) start in eigen-coordinates; t < 0 sits at u0; buffer starts at 0.
    """
    T = lrs.shape[0]
    d = lam.shape[0]
    out = np.zeros((T + 1, d), dtype=lam.dtype)
    m = np.zeros(T + 1, dtype=lam.dtype)
    for i in range(d):
        u = u0[i]
        b = 0.0 * u0[i]
        m[0] = u
        e = u
        if a_ema > 0.0:
            out[0, i] = e
        for t in range(T):
            lr = lrs[t]
            b_new = beta * b + lam[i] * u
            u = u - lr * b_new
            b = b_new
            m[t + 1] = u
            if a_ema > 0.0:
                e = (1.0 - a_ema) * e + a_ema * u
                out[t + 1, i] = e
        if a_ema == 0.0:
            for t in range(T + 1):
                acc = 0.0 * u0[i]
                for k in range(w.shape[0]):
                    tau = t - k * D
                    acc += w[k] * (m[tau] if tau >= 0 else u0[i])
                out[t, i] = acc
    return out


@njit(cache=True)
def _hb_step(u, b, lm, beta, lr, nb):
    """One deterministic heavy-ball step of the means of nb coordinates (vectorizable loop)."""
    for c in range(nb):
        bc = beta * b[c] + lm[c] * u[c]
        uc = u[c] - lr * bc
        # flush means below 1e-150 to zero: their squares (< 1e-300) cannot change any loss, and
        # subnormal arithmetic is far slower (benchmarks/results/2026-12-07-numbers-from-docstrings.md)
        if abs(uc) < _TINY and abs(bc) < _TINY:
            uc = 0.0
            bc = 0.0
        b[c] = bc
        u[c] = uc


@njit(cache=True)
def _mean_curve_finite(lam, u0, beta, lrs, D, w, m):
    """In place: m[t] = mean of the averaged iterate of one coordinate, t = 0..T (uses m as history)."""
    T = lrs.shape[0]
    n = w.shape[0]
    u = u0
    b = 0.0
    m[0] = u
    for t in range(T):
        b = beta * b + lam * u
        u = u - lrs[t] * b
        if abs(u) < _TINY and abs(b) < _TINY:  # see _hb_step
            u = 0.0
            b = 0.0
        m[t + 1] = u
    if n > 1:
        # overwrite from the end: m_hat[t] needs m[t - kD] <= t only
        for t in range(T, -1, -1):
            acc = 0.0
            for k in range(n):
                tau = t - k * D
                acc += w[k] * (m[tau] if tau >= 0 else u0)
            m[t] = acc
    else:
        for t in range(T + 1):
            m[t] = w[0] * m[t]


@njit(cache=True)
def _axpy(y, a, x, nb):
    for c in range(nb):
        y[c] += a * x[c]


@njit(cache=True)
def _weighted_square_sum(h, x, nb):
    acc = 0.0
    for c in range(nb):
        acc += h[c] * x[c] * x[c]
    return acc


@njit(cache=True)
def _ema_step_loss(e, u, hh, a, nb):
    for c in range(nb):
        e[c] = (1.0 - a) * e[c] + a * u[c]
    acc = 0.0
    for c in range(nb):
        acc += hh[c] * e[c] * e[c]
    return acc


@njit(parallel=True, cache=True)
def mean_loss_diag(lam, h, u0, lrs, beta, D, w, a_ema):
    """0.5 * sum_i h_i * (E u_hat_i)^2 for t = 0..T without storing (T+1, d); diagonal real case.

    Coordinates are processed in fixed chunks of 64 (time outer, coordinates inner, so the inner
    loop vectorizes); the chunk sums are added in a fixed order (thread-count independent).
    """
    T = lrs.shape[0]
    d = lam.shape[0]
    B = 64
    n_chunks = (d + B - 1) // B
    partial = np.zeros((n_chunks, T + 1))
    for ch in prange(n_chunks):
        lo = ch * B
        hi = min(d, lo + B)
        nb = hi - lo
        u = np.empty(nb)
        b = np.zeros(nb)
        e = np.empty(nb)
        lm = np.empty(nb)
        hh = np.empty(nb)
        for c in range(nb):
            u[c] = u0[lo + c]
            e[c] = u0[lo + c]
            lm[c] = lam[lo + c]
            hh[c] = 0.5 * h[lo + c]
        out = partial[ch]
        if a_ema > 0.0:
            out[0] = _weighted_square_sum(hh, e, nb)
            for t in range(T):
                _hb_step(u, b, lm, beta, lrs[t], nb)
                out[t + 1] = _ema_step_loss(e, u, hh, a_ema, nb)
        else:
            m = np.empty(T + 1)
            for c in range(nb):
                _mean_curve_finite(lm[c], u0[lo + c], beta, lrs, D, w, m)
                for t in range(T + 1):
                    out[t] += hh[c] * m[t] * m[t]
    return _sum_rows(partial)


@njit(cache=True)
def _sgd_var_curve_finite(lam, lrs, D, w, v, g, Wn, Suf, Pre, out, scale):
    """Real SGD fast path of _pair_cov_curve (one diagonal coordinate, beta = 0)."""
    T = lrs.shape[0]
    n = w.shape[0]
    v[0] = 0.0
    for t in range(T):
        g[t] = 1.0 - lrs[t] * lam
        v[t + 1] = g[t] * g[t] * v[t] + lrs[t] * lrs[t]
    if n > 1 and T >= D:
        # window products Wn[tau] = g_tau ... g_{tau+D-1} by blocks (suffix x prefix)
        for start in range(0, T, D):
            end = min(start + D, T)
            acc = 1.0
            for tau in range(end - 1, start - 1, -1):
                acc *= g[tau]
                if abs(acc) < _TINY:  # products below 1e-150 weigh nothing next to w_k v_tau
                    acc = 0.0
                Suf[tau] = acc
        for start in range(0, T + 1, D):
            acc = 1.0
            Pre[start] = 1.0
            for x in range(start + 1, min(start + D, T + 1)):
                acc *= g[x - 1]
                if abs(acc) < _TINY:
                    acc = 0.0
                Pre[x] = acc
        for tau in range(0, T - D + 1):
            Wn[tau] = Suf[tau] * Pre[tau + D]
    for t in range(1, T + 1):
        acc = 0.0
        rho = 0.0
        for k in range(n):
            tau = t - k * D
            if tau <= 0:
                break
            rho = w[0] if k == 0 else rho * Wn[tau] + w[k]
            acc += w[k] * v[tau] * (2.0 * rho - w[k])
        out[t] += scale * acc


@njit(cache=True)
def _sgd_var_curve_ema(lam, lrs, a, out, scale):
    """Real SGD fast path of the EMA curve: state (u, e), second moments (v, c, q)."""
    T = lrs.shape[0]
    v = 0.0
    c = 0.0
    q = 0.0
    b = 1.0 - a
    for t in range(T):
        g = 1.0 - lrs[t] * lam
        l2 = lrs[t] * lrs[t]
        q = b * b * q + 2.0 * b * a * g * c + a * a * (g * g * v + l2)
        c = g * b * c + a * (g * g * v + l2)
        v = g * g * v + l2
        out[t + 1] += scale * q


@njit(parallel=True, cache=True)
def sgd_diag_cov_loss(lam, hw, lrs, D, w, a_ema, n_chunks):
    """0.5 sum_i hw_i Var(u_hat_i)_t for t = 0..T: diagonal omega, beta = 0 (real fast path)."""
    T = lrs.shape[0]
    d = lam.shape[0]
    n_chunks = max(1, min(n_chunks, d))
    partial = np.zeros((n_chunks, T + 1))
    for ch in prange(n_chunks):
        lo = (d * ch) // n_chunks
        hi = (d * (ch + 1)) // n_chunks
        v = np.empty(T + 1)
        g = np.empty(T)
        Wn = np.empty(max(T - D + 1, 1))
        Suf = np.empty(T + 1)
        Pre = np.empty(T + 1)
        for i in range(lo, hi):
            if a_ema > 0.0:
                _sgd_var_curve_ema(lam[i], lrs, a_ema, partial[ch], 0.5 * hw[i])
            else:
                _sgd_var_curve_finite(lam[i], lrs, D, w, v, g, Wn, Suf, Pre, partial[ch], 0.5 * hw[i])
    return _sum_rows(partial)


@njit(cache=True)
def _sgd_var_curve_swa(lam, lrs, W, v, g, Suf, SufSum, SX, Q1, Pre, PreSum, PX, PPX, SufV, PreV, out, scale):
    r"""SWA window W for one diagonal SGD coordinate in O(T) (instead of O(T W)).

    With :math:`A_{a,b} = g_{a-1}\cdots g_b`, :math:`v_b = \mathrm{Var}\,u_b` and the window
    :math:`[s, t]`, :math:`s = t-W+1`:

    .. math:: W^2\,\mathrm{Var}\,\hat u_t = \sum_{b=s}^t v_b\,(2R(b,t)-1),\qquad R(b,t) = \sum_{a=b}^t A_{a,b}.

    Time is cut into blocks of length B = W-1; every full window spans the end of one block (from s to
    its end c) and the start of the next (from c to t), so each sliding quantity is a suffix sum of one
    block plus a prefix sum of the next -- no running sum is ever subtracted from (no cancellation):
    :math:`\sum_b v_b R(b,t) = Q_1[s] + PPX[t] + PreSum[t]\,SX[s]`,
    :math:`\sum_b v_b = SufV[s] + PreV[t]`.
    """
    T = lrs.shape[0]
    B = W - 1
    v[0] = 0.0
    for t in range(T):
        g[t] = 1.0 - lrs[t] * lam
        v[t + 1] = g[t] * g[t] * v[t] + lrs[t] * lrs[t]
    w = 1.0 / W
    # windows that still reach back to t <= 0 (v = 0 there): forward sums from time 0
    X = 0.0
    Y = 0.0
    Z = 0.0
    for t in range(1, min(W, T + 1)):
        X = v[t] + g[t - 1] * X
        Y += X
        Z += v[t]
        out[t] += scale * w * w * (2.0 * Y - Z)
    if T < W:
        return
    # suffix quantities within each block [start, end): index s, reference point c = end
    for start in range(0, T + 1, B):
        end = min(start + B, T + 1)
        prod = 1.0
        sufsum = 0.0
        sx = 0.0
        q1 = 0.0
        sv = 0.0
        for s in range(end - 1, start - 1, -1):
            # A_{c,s} = g_{c-1} ... g_s, SufSum[s] = sum_{a=s}^{c-1} A_{a,s} = 1 + g_s SufSum[s+1]
            sufsum = 1.0 + g[s] * sufsum if s < T else 1.0
            prod = prod * g[s] if s < T else prod
            if abs(prod) < _TINY:
                prod = 0.0
            Suf[s] = prod
            SufSum[s] = sufsum
            sx += prod * v[s]
            SX[s] = sx
            q1 += v[s] * sufsum
            Q1[s] = q1
            sv += v[s]
            SufV[s] = sv
    # prefix quantities from each block start c: index t >= c
    for c in range(0, T + 1, B):
        pre = 1.0
        presum = 0.0
        px = 0.0
        ppx = 0.0
        pv = 0.0
        for t in range(c, min(c + B, T + 1)):
            if t > c:
                pre *= g[t - 1]
                if abs(pre) < _TINY:
                    pre = 0.0
                px = v[t] + g[t - 1] * px
            else:
                px = v[t]
            Pre[t] = pre
            presum += pre
            PreSum[t] = presum
            ppx += px
            PPX[t] = ppx
            pv += v[t]
            PreV[t] = pv
    for t in range(W, T + 1):
        s = t - W + 1
        Y = Q1[s] + PPX[t] + PreSum[t] * SX[s]
        Z = SufV[s] + PreV[t]
        out[t] += scale * w * w * (2.0 * Y - Z)


@njit(parallel=True, cache=True)
def sgd_diag_cov_loss_swa(lam, hw, lrs, W, n_chunks):
    """0.5 sum_i hw_i Var(SWA_i)_t for t = 0..T in O(d T): diagonal omega, beta = 0, window W >= 2."""
    T = lrs.shape[0]
    d = lam.shape[0]
    n_chunks = max(1, min(n_chunks, d))
    partial = np.zeros((n_chunks, T + 1))
    for ch in prange(n_chunks):
        lo = (d * ch) // n_chunks
        hi = (d * (ch + 1)) // n_chunks
        bufs = np.empty((14, T + 1))
        for i in range(lo, hi):
            _sgd_var_curve_swa(lam[i], lrs, W, bufs[0], bufs[1], bufs[2], bufs[3], bufs[4], bufs[5], bufs[6],
                               bufs[7], bufs[8], bufs[9], bufs[10], bufs[11], partial[ch], 0.5 * hw[i])
    return _sum_rows(partial)


@njit(cache=True)
def _window_sums(x, W, Suf, Pre, out):
    """out[j] = x[j] + ... + x[j+W-1] for j = 0..len(x)-W, by block suffix + prefix sums (no subtraction)."""
    n = x.shape[0]
    for start in range(0, n, W):
        end = min(start + W, n)
        acc = 0.0
        for j in range(end - 1, start - 1, -1):
            acc += x[j]
            Suf[j] = acc
        acc = 0.0
        for j in range(start, end):
            acc += x[j]
            Pre[j] = acc
    for j in range(0, n - W + 1):
        if j % W == 0:
            out[j] = Suf[j]
        else:
            out[j] = Suf[j] + Pre[j + W - 1]


@njit(cache=True)
def _mean_loss_long_window(lam, h, u0, lrs, beta, W, out):
    """Adds 0.5 h_i (E SWA_i)^2 to out for a window W > T: every window still holds W - t copies of u0,
    so its sum is (W - t) u0 + (u_1 + ... + u_t) (a running sum: O(T) memory whatever W)."""
    T = lrs.shape[0]
    d = lam.shape[0]
    for i in range(d):
        u = u0[i]
        b = 0.0
        acc = 0.0
        hh = 0.5 * h[i] / (float(W) * float(W))
        s = float(W) * u0[i]
        out[0] += hh * s * s
        for t in range(T):
            b = beta * b + lam[i] * u
            u = u - lrs[t] * b
            if abs(u) < _TINY and abs(b) < _TINY:
                u = 0.0
                b = 0.0
            acc += u
            s = float(W - (t + 1)) * u0[i] + acc
            out[t + 1] += hh * s * s


@njit(parallel=True, cache=True)
def mean_loss_diag_swa(lam, h, u0, lrs, beta, W):
    """0.5 * sum_i h_i * (E SWA_i)^2 for t = 0..T in O(d T); diagonal real case (any momentum).

    Memory O(T + W) per chunk for W <= T; a window longer than the run (W > T) takes
    :func:`_mean_loss_long_window` (O(T), any W)."""
    T = lrs.shape[0]
    d = lam.shape[0]
    if W > T:
        out = np.zeros(T + 1)
        _mean_loss_long_window(lam, h, u0, lrs, beta, W, out)
        return out
    n_chunks = min(d, 64)
    partial = np.zeros((n_chunks, T + 1))
    for ch in prange(n_chunks):
        lo = (d * ch) // n_chunks
        hi = (d * (ch + 1)) // n_chunks
        n = T + W  # padded sequence: times -(W-1) .. T
        x = np.empty(n)
        Suf = np.empty(n)
        Pre = np.empty(n)
        sums = np.empty(n)
        for i in range(lo, hi):
            u = u0[i]
            b = 0.0
            for j in range(W):
                x[j] = u  # times -(W-1)..0 sit at u0
            for t in range(T):
                b = beta * b + lam[i] * u
                u = u - lrs[t] * b
                if abs(u) < _TINY and abs(b) < _TINY:
                    u = 0.0
                    b = 0.0
                x[W + t] = u
            _window_sums(x, W, Suf, Pre, sums)
            hh = 0.5 * h[i] / (W * W)
            for t in range(T + 1):
                partial[ch, t] += hh * sums[t] * sums[t]
    return _sum_rows(partial)
