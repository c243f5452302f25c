r"""``method="exact"``: exact Gaussian transitions from event time to event time.

For constant-lr stretches the k-step transition of the augmented state :math:`z = (u, [b], e^{(1..m)}, [S])`
is Gaussian: :math:`z_{t+k} = A_k z_t + \eta`, :math:`A_k = M^k`,
:math:`\mathrm{Cov}\,\eta = Q_k = \sum_{j<k}M^j N N^\top M^{j\top}` (:func:`k_step_transition`, by
doubling: O(log k) products), and is sampled as :math:`A_k z + Q_k^{1/2}\zeta` (:func:`sqrt_psd`, the
symmetric square root). Here ``M``/``N`` are the one-step matrices of the heavy-ball recursion
(:func:`quadsgd._heavy_ball.one_step_matrices`), EMA trackers are state components, and ``S`` is the
sum of :math:`u` over the current interval (reset at every event time), which gives SWA window sums.

The chain jumps from event time to event time (:func:`exact_schedule`): the record times, the point
times :math:`\tau_r - js` of TwoPoint / NPoint / Kernel averages, the window starts :math:`\tau_r - W` of
uniform stride-1 windows (SWA, ``tracking().uniform_window >= 3``), and the change points of a
piecewise-constant ``lr`` array. The cost is proportional to the number of event times, not to
``steps``. Diagonal omega: per coordinate p x p transitions (p <= 3 + number of EMAs), no d x d work
(:func:`._exact.exact_chains`); dense omega: (p d) x (p d) matrices, BLAS matmuls over chains (this
module). A non-constant lr array with more than :data:`_EXACT_MAX_PIECES` pieces raises a ValueError
(use method="step").
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._heavy_ball import one_step_matrices
from . import _exact, _rng
from ._exact import ADD_S, ADD_U, INIT
from .plan import LAST, SLOTS, Plan
from .runtime import Job, threads_for

__all__ = ["one_step_matrices", "k_step_transition", "sqrt_psd", "exact_schedule", "exact_transitions",
           "Schedule", "run_exact"]

#: most constant-lr pieces accepted by method="exact"
_EXACT_MAX_PIECES = 4096


def k_step_transition(M, N, k: int):
    r"""(A_k, Q_k) = (M^k, sum_{j<k} M^j N N^T M^jT) by binary doubling; works on stacks (..., p, p)."""
    NNT = N[..., :, None] * N[..., None, :] if N.ndim == M.ndim - 1 else N @ np.swapaxes(N, -1, -2)
    I = np.broadcast_to(np.eye(M.shape[-1]), M.shape).copy()
    A = I
    Q = np.zeros_like(M)
    bA, bQ = M.copy(), NNT
    T = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731
    while k:
        if k & 1:
            A, Q = bA @ A, bA @ Q @ T(bA) + bQ
        k >>= 1
        if k:
            bA, bQ = bA @ bA, bA @ bQ @ T(bA) + bQ
    return A, 0.5 * (Q + T(Q))


def sqrt_psd(Q):
    """Symmetric square root of symmetric PSD matrices (stack (..., p, p)); negative rounding clipped."""
    w, V = np.linalg.eigh(Q)
    return (V * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.swapaxes(V, -1, -2)


class Schedule(NamedTuple):
    """Event times and events of method="exact" (n_int intervals (E[i-1], E[i]], E[-1] = 0)."""

    E: np.ndarray        # (n_int,) int64 event times (> 0, sorted)
    gap: np.ndarray      # (n_int,) int64 interval lengths E[i] - E[i-1]
    lr_int: np.ndarray   # (n_int,) float64 lr of each interval
    ev_int: np.ndarray   # (n_events,) int64 interval of each event (sorted by interval, INIT first)
    ev_kind: np.ndarray  # (n_events,) int64 INIT 0 (slot = w u0), ADD_U 1 (slot += w u), ADD_S 2 (slot += w S)
    ev_slot: np.ndarray  # (n_events,) int64 accumulator slot
    ev_w: np.ndarray     # (n_events,) float64 weight


def exact_schedule(plan: Plan, times, lr, steps) -> Schedule:
    """Event times and events of method="exact" (:class:`Schedule`) for the record ``times`` and ``lr`` (steps,)."""
    pts = [times]
    change = np.flatnonzero(lr[1:] != lr[:-1]) + 1  # steps whose lr differs from the previous one
    if change.size + 1 > _EXACT_MAX_PIECES:
        raise ValueError(
            f"method='exact' needs piecewise-constant lr: this lr array has {change.size + 1} constant "
            f"pieces (> {_EXACT_MAX_PIECES}); use method='step'")
    pts.append(change)
    for sp in plan.specs:
        if sp.block:
            st = times - sp.n
            pts.append(st[st >= 1])
        else:
            t = times[:, None] - sp.s * sp.nonzero_lags((int(times[-1]) - 1) // sp.s)[None, :]
            pts.append(t[t >= 1].ravel())
            ti = times - (sp.n - 1) * sp.s
            pts.append(ti[ti >= 1])
    E = np.unique(np.concatenate(pts).astype(np.int64))
    prev = np.concatenate([[0], E[:-1]])
    gap = E - prev
    lr_int = lr[prev]
    ev = []  # (interval, kind, slot, w)
    for sp in plan.specs:
        R = times.size
        r = np.arange(R)
        slot = sp.base + r % sp.ns
        ti = np.maximum(times - sp.span, 0)
        m1 = ti >= 1
        ev.append((np.searchsorted(E, ti[m1]), np.full(int(m1.sum()), INIT, np.int64), slot[m1],
                   sp.neg_weight(times[m1])))
        if sp.block:
            # every interval (E[i-1], E[i]] inside (max(tau - W, 0), tau] adds w * S
            lo = np.searchsorted(E, np.maximum(times - sp.n, 0), side="right")
            hi = np.searchsorted(E, times, side="right")
            cnt = hi - lo
            rep = np.repeat(r, cnt)
            ii = lo[rep] + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
            ev.append((ii, np.full(ii.size, ADD_S, np.int64), slot[rep], np.full(ii.size, sp.w0)))
        else:
            jj = sp.nonzero_lags((int(times[-1]) - 1) // sp.s)  # points at times >= 1 only
            t = times[:, None] - sp.s * jj[None, :]
            mask = t >= 1
            rr = np.broadcast_to(r[:, None], t.shape)[mask]
            ev.append((np.searchsorted(E, t[mask]), np.full(int(mask.sum()), ADD_U, np.int64), slot[rr],
                       np.broadcast_to(sp.weights_at(jj)[None, :], t.shape)[mask]))
    if ev:
        ev_int = np.concatenate([e[0] for e in ev]).astype(np.int64)
        ev_kind = np.concatenate([e[1] for e in ev]).astype(np.int64)
        ev_slot = np.concatenate([e[2] for e in ev]).astype(np.int64)
        ev_w = np.concatenate([np.asarray(e[3], np.float64) for e in ev])
    else:
        ev_int = ev_kind = ev_slot = np.zeros(0, np.int64)
        ev_w = np.zeros(0)
    order = np.lexsort((ev_kind != INIT, ev_int))
    return Schedule(E=E, gap=gap, lr_int=lr_int, ev_int=ev_int[order], ev_kind=ev_kind[order],
                    ev_slot=ev_slot[order], ev_w=ev_w[order])


def exact_transitions(m, plan: Plan, sched: Schedule):
    """Distinct (gap, lr) transitions: tr_id (n_int,), A and L stacks, has_S."""
    has_S = plan.has_S
    key = np.stack([sched.gap.astype(np.float64), sched.lr_int], axis=1)
    uniq, tr_id = np.unique(key, axis=0, return_inverse=True)
    As, Ls = [], []
    for k, lr in uniq:
        M, N = one_step_matrices(m, float(lr), plan.ema_a, has_S)
        A, Q = k_step_transition(M, N, int(k))
        As.append(A)
        Ls.append(sqrt_psd(Q))
    return np.asarray(tr_id, np.int64).ravel(), np.stack(As), np.stack(Ls), has_S


def _initial_X(job: Job, p: int) -> np.ndarray:
    """Augmented states at t = 0: u = u0, b = 0, every EMA tracker = u0, S = 0.

    Diagonal omega: (chains, d, p) (components last); dense: (chains, p d) (blocks of d)."""
    cfg = job.cfg
    C, d, dt, u0 = cfg.chains, cfg.m.dim, cfg.dtype, cfg.u0
    ie = 1 + int(cfg.m.momentum != 0.0)
    if cfg.m.diagonal:
        X = np.zeros((C, d, p), dtype=dt)
        X[:, :, 0] = u0
        for j in range(job.plan.ema_a.size):
            X[:, :, ie + j] = u0
    else:
        X = np.zeros((C, p * d), dtype=dt)
        X[:, :d] = u0
        for j in range(job.plan.ema_a.size):
            X[:, (ie + j) * d:(ie + j + 1) * d] = u0
    return X


def run_exact(job: Job) -> None:
    """Jump every chain through the event times, filling ``job.out``."""
    cfg, plan, times, out = job.cfg, job.plan, job.times, job.out
    m, C, d, K, dt = cfg.m, cfg.chains, cfg.m.dim, job.K, cfg.dtype
    sched = exact_schedule(plan, times, cfg.lr, cfg.steps)
    tr_id, A, L, has_S = exact_transitions(m, plan, sched)
    p = A.shape[-1] if m.diagonal else A.shape[-1] // d
    n_int = tr_id.size
    acc = np.zeros((C, plan.n_slots, d), dtype=dt)
    job.init_slots(acc)
    u0 = cfg.u0
    rec_int = np.searchsorted(sched.E, times)  # interval index of each record
    # segment the intervals so that the chain-loss buffer stays bounded (boundaries at event times:
    # the draws do not depend on the segmentation)
    cap = job.seg_rec_cap()
    if cfg.segment_steps is not None:
        cap = max(1, int(cfg.segment_steps))
    bounds = [0]
    for r_end in range(cap, times.size, cap):
        bounds.append(int(rec_int[r_end - 1]) + 1)
    bounds.append(n_int)
    ev_ptr_all = np.searchsorted(sched.ev_int, np.arange(n_int + 1), side="left").astype(np.int64)
    bar = job.progress_bar(n_int, "event")
    X = _initial_X(job, p)
    if m.diagonal:
        xs = _exact.ExactState(X, acc)
    else:
        At = [np.ascontiguousarray(a.T, dtype=dt) for a in A]
        Lt = [np.ascontiguousarray(a.T, dtype=dt) for a in L]
        Z = np.empty((C, p * d))
    try:
        for i0, i1 in zip(bounds[:-1], bounds[1:]):
            if i1 <= i0:
                continue
            ra = int(np.searchsorted(rec_int, i0, side="left"))
            rb = int(np.searchsorted(rec_int, i1, side="left"))
            nr = rb - ra
            records = job.records(i1 - i0, rec_int[ra:rb] - i0, ra, rb)
            chain_loss = np.zeros((K, max(nr, 1), C))
            if m.diagonal:
                e0, e1 = int(ev_ptr_all[i0]), int(ev_ptr_all[i1])
                ev = _exact.ExactEvents(ev_ptr_all[i0:i1 + 1] - e0, np.ascontiguousarray(sched.ev_kind[e0:e1]),
                                        np.ascontiguousarray(sched.ev_slot[e0:e1]),
                                        np.ascontiguousarray(sched.ev_w[e0:e1]))
                trans = _exact.Transitions(A, L, np.ascontiguousarray(tr_id[i0:i1]), has_S)
                with threads_for(C * d * p * p * (i1 - i0)):
                    _exact.exact_chains(job.rng, xs, trans, u0, job.H, ev, records, out.compiled(chain_loss))
            else:
                for it in range(i0, i1):
                    with threads_for(0):  # alternates with BLAS: see the dense step path
                        _rng.fill_normals(job.rng, Z)
                    if has_S:
                        X[:, (p - 1) * d:] = 0.0
                    tr = tr_id[it]
                    X[:] = X @ At[tr] + Z.astype(dt, copy=False) @ Lt[tr]
                    for e in range(ev_ptr_all[it], ev_ptr_all[it + 1]):
                        kind = sched.ev_kind[e]
                        row = acc[:, sched.ev_slot[e], :]
                        w = sched.ev_w[e]
                        if kind == INIT:
                            row[:] = w * u0
                        elif kind == ADD_U:
                            row += (w * X[:, :d]).astype(dt, copy=False)
                        else:
                            row += (w * X[:, (p - 1) * d:]).astype(dt, copy=False)
                    rl = records.local[it - i0]
                    if rl >= 0:
                        rg = int(records.global_[it - i0])
                        out.record_dense(job.H, _dense_sources(plan, X, acc, d, rg), int(rl), rg, chain_loss)
            if nr:
                out.reduce(chain_loss, ra, nr)
            if bar is not None:
                bar.update(i1 - i0)
    finally:
        if bar is not None:
            bar.close()


def _dense_sources(plan: Plan, X, acc, d: int, rg: int) -> list:
    """The averaged iterate (chains, d) of every kernel at record rg: a slot, or a block of X (chains, p d)."""
    src = []
    for k in range(plan.k_type.size):
        kt = plan.k_type[k]
        if kt == SLOTS:
            src.append(acc[:, plan.k_idx[k] + rg % plan.k_nslots[k], :])
        else:
            comp = 0 if kt == LAST else int(plan.k_idx[k])
            src.append(X[:, comp * d:(comp + 1) * d])
    return src
