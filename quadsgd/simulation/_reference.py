r"""Pure-numpy reference twins of the compiled simulator kernels (for tests; small sizes only).

Each twin is fed the same pre-drawn standard normals as the compiled kernel (:func:`quadsgd.simulation.draw_normals`)
and computes the averaged iterates *by their definition*, from a stored full history, so it shares no
bookkeeping (accumulator slots, event lists, the plan) with :mod:`quadsgd.simulation` (:mod:`._step`,
:mod:`._exact`, :mod:`.plan`). A kernel is read through what it declares, ``kernel.tracking()``
(kind ``"last"``, ``"geometric"`` with its decay, or ``"points"`` with ``weight_array()`` and ``stride``):

* :func:`reference_step`: the recursion of ``method="step"`` step by step, vectorized over chains,
  :math:`\hat u_\tau = \sum_j w_j u_{\max(\tau - js, 0)}`, EMA by its own recursion;
* :func:`reference_exact`: ``method="exact"``: the augmented-state transition over each interval
  between event times, with :math:`M^k` by repeated products and
  :math:`Q_k=\sum_{j<k}M^jNN^\top M^{j\top}` by the plain sum (unless ``transitions`` are given),
  averages from the stored states at event times and the interval sums S.

Both agree with the compiled kernels to rounding (float64: ~1e-12 relative; the symmetric square
root of a singular :math:`Q_k` amplifies rounding to ~sqrt(eps) in the exact twin when it recomputes
the transitions itself).
"""
from __future__ import annotations

import numpy as np

from ..kernels import Tracking

__all__ = ["reference_step", "reference_exact", "exact_event_times"]


def _tracks(kernels) -> list[Tracking]:
    return [k.tracking() for k in kernels]


def _is_geometric(tr: Tracking) -> bool:
    return tr.kind == "geometric"


def _cast(x, dtype):
    return np.asarray(x, dtype=np.float64).astype(dtype).astype(np.float64)


def reference_step(omega, hessian, u0, lr, momentum, kernels, times, xi, dtype=np.float64):
    r"""Twin of ``simulate(..., method="step")`` fed the noise ``xi``.

    omega: (d,) or (d, d); hessian: same shape; u0 (d,); lr (steps,); momentum :math:`\beta`;
    kernels: sequence; times (R,) record times; xi (chains, steps, d) standard normals (step t uses
    xi[:, t]). dtype: storage rounding of u, b, e after each step (float32 or float64).

    Returns (chain_loss (K, chains, R), averages (K, R, chains, d)); averages are float64 values of
    the iterates (rounded to ``dtype`` where the simulator stores them).
    """
    omega = np.asarray(omega, dtype=np.float64)
    H = np.asarray(hessian, dtype=np.float64)
    lr = np.asarray(lr, dtype=np.float64)
    C, steps, d = xi.shape
    dense = omega.ndim == 2
    u = np.broadcast_to(_cast(u0, dtype), (C, d)).copy()
    b = np.zeros((C, d))
    hist = np.empty((steps + 1, C, d))
    hist[0] = u
    trs = _tracks(kernels)
    emas = [i for i, tr in enumerate(trs) if _is_geometric(tr)]  # kernel indices of the EMA trackers
    e = {i: u.copy() for i in emas}
    e_at = {i: {} for i in emas}
    tset = set(int(t) for t in times)
    for t in range(steps):
        g = (u @ omega.T if dense else u * omega) - xi[:, t]
        if momentum != 0.0:
            b_full = momentum * b + g
            b = _cast(b_full, dtype)
            u = _cast(u - lr[t] * b_full, dtype)
        else:
            u = _cast(u - lr[t] * g, dtype)
        hist[t + 1] = u
        for i in emas:
            a = trs[i].decay
            e[i] = _cast((1.0 - a) * e[i] + a * u, dtype)
            if t + 1 in tset:
                e_at[i][t + 1] = e[i].copy()
    K, R = len(kernels), len(times)
    avg = np.zeros((K, R, C, d))
    for ki, tr in enumerate(trs):
        for ri, tau in enumerate(times):
            tau = int(tau)
            if tr.kind == "last":
                avg[ki, ri] = hist[tau]
            elif _is_geometric(tr):
                avg[ki, ri] = e_at[ki][tau]
            else:
                w = tr.weight_array()
                s = int(tr.stride)
                tot = np.zeros((C, d))
                for j, wj in enumerate(w):
                    tot += wj * hist[max(tau - j * s, 0)]
                avg[ki, ri] = _cast(tot, dtype) if not (w.size == 1 and w[0] == 1.0) else tot
    loss = _loss(avg, H)
    return np.transpose(loss, (0, 2, 1)), avg


def _loss(avg, H):
    """0.5 x^T H x over the last axis; avg (..., d) -> (...)."""
    if H.ndim == 1:
        return 0.5 * np.einsum("...i,i,...i->...", avg, H, avg)
    return 0.5 * np.einsum("...i,ij,...j->...", avg, H, avg)


def _uniform_stride1(tr: Tracking) -> bool:
    """A uniform average of W >= 3 consecutive iterates (tracked by window sums in method="exact")."""
    if tr.kind != "points":
        return False
    w = tr.weight_array()
    return int(tr.stride) == 1 and w.size >= 3 and bool(np.all(w == w[0]))


def exact_event_times(kernels, times, lr):
    """Event times of method="exact" from their definition: records, points tau - j*stride >= 1,
    window starts tau - W >= 1 of uniform stride-1 kernels, lr change points; sorted unique (n_int,)."""
    ev = set(int(t) for t in times)
    lr = np.asarray(lr)
    ev.update(int(t) for t in range(1, lr.size) if lr[t] != lr[t - 1])
    for tr in _tracks(kernels):
        if tr.kind != "points":
            continue
        w = tr.weight_array()
        if w.size == 1 and w[0] == 1.0:
            continue
        for tau in times:
            tau = int(tau)
            if _uniform_stride1(tr):
                if tau - w.size >= 1:
                    ev.add(tau - w.size)
            else:
                for j in range(w.size):
                    if w[j] != 0.0 and tau - j * int(tr.stride) >= 1:
                        ev.add(tau - j * int(tr.stride))
    return np.array(sorted(ev), dtype=np.int64)


def _one_step(omega, lr, beta, ema_a, has_S):
    """One-step (M, N) of (u, [b], e_1.., [S]) for one coordinate (scalar omega) or dense omega."""
    omega = np.atleast_2d(np.asarray(omega, dtype=np.float64))
    d = omega.shape[0]
    I = np.eye(d)
    names = ["u"] + (["b"] if beta != 0.0 else []) + [f"e{j}" for j in range(len(ema_a))] + (["S"] if has_S else [])
    p = len(names)
    M = np.zeros((p * d, p * d))
    N = np.zeros((p * d, d))
    B = lambda i: slice(i * d, (i + 1) * d)  # noqa: E731
    iu = 0
    ib = names.index("b") if "b" in names else None
    # u' = u - lr (beta b + omega u - xi)
    Mu = np.zeros((d, p * d))
    Mu[:, B(iu)] = I - lr * omega
    if ib is not None:
        Mu[:, B(ib)] = -lr * beta * I
    M[B(iu)] = Mu
    N[B(iu)] = lr * I
    if ib is not None:
        M[B(ib), B(iu)] = omega
        M[B(ib), B(ib)] = beta * I
        N[B(ib)] = -I
    for j, a in enumerate(ema_a):
        ie = names.index(f"e{j}")
        M[B(ie)] = a * Mu
        M[B(ie), B(ie)] += (1.0 - a) * I
        N[B(ie)] = a * lr * I
    if has_S:
        iS = p - 1
        M[B(iS)] = Mu
        M[B(iS), B(iS)] += I
        N[B(iS)] = lr * I
    return M, N, p


def _brute_transition(M, N, k):
    A = np.eye(M.shape[0])
    Q = np.zeros_like(M)
    P = np.eye(M.shape[0])
    for _ in range(k):
        Q += P @ N @ N.T @ P.T
        P = M @ P
    A = P
    return A, 0.5 * (Q + Q.T)


def _sqrt_psd(Q):
    w, V = np.linalg.eigh(Q)
    return (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T


def reference_exact(omega, hessian, u0, lr, momentum, kernels, times, zeta, transitions=None):
    r"""Twin of ``simulate(..., method="exact")`` fed the standard normals ``zeta``.

    omega (d,) or (d, d); lr (steps,) piecewise constant; zeta: diagonal omega (chains, n_int, d, p)
    (p normals per coordinate and interval), dense (chains, n_int, p*d); n_int = number of event
    times (:func:`exact_event_times`). ``transitions``: optional callable (gap, lr) -> (A, L) to use
    instead of the brute-force matrices (diagonal: A, L of shape (d, p, p); dense: (p d, p d)).

    Returns (chain_loss (K, chains, R), averages (K, R, chains, d)); float64.
    """
    omega = np.asarray(omega, dtype=np.float64)
    H = np.asarray(hessian, dtype=np.float64)
    lr = np.asarray(lr, dtype=np.float64)
    u0 = np.asarray(u0, dtype=np.float64)
    dense = omega.ndim == 2
    d = omega.shape[0]
    C = zeta.shape[0]
    trs = _tracks(kernels)
    emas = [i for i, tr in enumerate(trs) if _is_geometric(tr)]  # kernel indices of the EMA trackers
    ema_a = [trs[i].decay for i in emas]
    has_S = any(_uniform_stride1(tr) for tr in trs)
    E = exact_event_times(kernels, times, lr)
    mom = momentum != 0.0
    p = 1 + int(mom) + len(ema_a) + int(has_S)
    # state per chain: (C, d, p) for diagonal, (C, p*d) for dense
    if dense:
        x = np.zeros((C, p * d))
        x[:, :d] = u0
        for j in range(len(ema_a)):
            x[:, (1 + int(mom) + j) * d:(2 + int(mom) + j) * d] = u0
    else:
        x = np.zeros((C, d, p))
        x[:, :, 0] = u0
        for j in range(len(ema_a)):
            x[:, :, 1 + int(mom) + j] = u0
    u_at = {0: np.broadcast_to(u0, (C, d)).copy()}
    S_at = {}
    comp_at = {}
    cache = {}
    prev = 0
    for it, t in enumerate(E):
        t = int(t)
        k = t - prev
        lam = float(lr[prev])
        if (k, lam) not in cache:
            if transitions is not None:
                cache[(k, lam)] = transitions(k, lam)
            elif dense:
                M, N, _ = _one_step(omega, lam, momentum, ema_a, has_S)
                A, Q = _brute_transition(M, N, k)
                cache[(k, lam)] = (A, _sqrt_psd(Q))
            else:
                As, Ls = [], []
                for i in range(d):
                    M, N, _ = _one_step(omega[i], lam, momentum, ema_a, has_S)
                    A, Q = _brute_transition(M, N, k)
                    As.append(A)
                    Ls.append(_sqrt_psd(Q))
                cache[(k, lam)] = (np.stack(As), np.stack(Ls))
        A, L = cache[(k, lam)]
        if dense:
            if has_S:
                x[:, (p - 1) * d:] = 0.0
            x = x @ A.T + zeta[:, it] @ L.T
            u_at[t] = x[:, :d].copy()
            comp_at[t] = x.reshape(C, p, d).copy()
            if has_S:
                S_at[t] = x[:, (p - 1) * d:].copy()
        else:
            if has_S:
                x[:, :, p - 1] = 0.0
            x = np.einsum("iqr,cir->ciq", A, x) + np.einsum("iqr,cir->ciq", L, zeta[:, it])
            u_at[t] = x[:, :, 0].copy()
            comp_at[t] = np.transpose(x, (0, 2, 1)).copy()
            if has_S:
                S_at[t] = x[:, :, p - 1].copy()
        prev = t
    K, R = len(kernels), len(times)
    avg = np.zeros((K, R, C, d))
    for ki, tr in enumerate(trs):
        for ri, tau in enumerate(times):
            tau = int(tau)
            if tr.kind == "last":
                avg[ki, ri] = u_at[tau]
            elif _is_geometric(tr):
                avg[ki, ri] = comp_at[tau][:, 1 + int(mom) + emas.index(ki)]
            elif _uniform_stride1(tr):
                w = tr.weight_array()
                W = w.size
                tot = max(W - tau, 0) * w[0] * np.broadcast_to(u0, (C, d))
                for t in E:
                    t = int(t)
                    if max(tau - W, 0) < t <= tau:
                        tot = tot + w[0] * S_at[t]
                avg[ki, ri] = tot
            else:
                w = tr.weight_array()
                s = int(tr.stride)
                tot = np.zeros((C, d))
                for j, wj in enumerate(w):
                    if wj != 0.0:
                        tot += wj * u_at[max(tau - j * s, 0)]
                avg[ki, ri] = tot
    return np.transpose(_loss(avg, H), (0, 2, 1)), avg
