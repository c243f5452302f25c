r"""Compiled loop of ``method="exact"`` for diagonal omega: Gaussian k-step transitions between event times.

Per coordinate i the augmented state :math:`x = (u, [b], e^{(1)}..e^{(m)}, [S])` (p components; S: sum of
u over the current interval, reset to 0 at every event time) moves over interval ``it`` by
:math:`x \leftarrow A x + L\zeta` with ``A = A[tr_id[it], i]`` (p, p), ``L`` the symmetric square root of
the k-step noise covariance and :math:`\zeta` p fresh normals (per coordinate, in coordinate order);
then come the accumulator events of that event time and the record. The matrices come from
:mod:`..exact` (binary doubling); dense omega runs with BLAS in Python.

Entry point: :func:`exact_chains` ``(rng, state, trans, u0, h, events, records, out)``; groups
:class:`ExactState` (X, acc), :class:`Transitions` (A, L, tr_id, has_S), :class:`ExactEvents`
(ptr, kind, slot, w), :class:`~._jit.Records`, :class:`~._jit.Outputs`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import float64, prange

from ._jit import jit, jit_parallel
from ._rng import normal

#: event kinds of method="exact"
INIT, ADD_U, ADD_S = 0, 1, 2


class ExactState(NamedTuple):
    """The chain state of ``method="exact"`` with diagonal omega (advanced in place)."""

    X: np.ndarray    # (chains, d, p): per coordinate (u, [b], e^(1..m), [S])
    acc: np.ndarray  # (chains, n_slots, d): accumulator slots of the finite kernels


class Transitions(NamedTuple):
    """The distinct k-step transitions and which one each interval of the segment uses."""

    A: np.ndarray      # (n_tr, d, p, p) float64: M^k per coordinate
    L: np.ndarray      # (n_tr, d, p, p) float64: Q_k^{1/2} per coordinate (symmetric square root)
    tr_id: np.ndarray  # (n_int,) int64: transition of each local interval
    has_S: bool        # True: the last component is the interval sum S (reset at each event time)


class ExactEvents(NamedTuple):
    """Accumulator events of the segment in CSR form: events of local interval it are ptr[it]:ptr[it+1]."""

    ptr: np.ndarray   # (n_int + 1,) int64
    kind: np.ndarray  # (n_events,) int64: INIT slot = w u0, ADD_U slot += w u, ADD_S slot += w S
    slot: np.ndarray  # (n_events,) int64 accumulator slot
    w: np.ndarray     # (n_events,) float64 weight


@jit
def _exact_chain(c, rng, xs, trans, u0, h, ev, records, out):
    """All intervals of one segment for chain c (the body of :func:`exact_chains`)."""
    X = xs.X
    A = trans.A
    L = trans.L
    tr_id = trans.tr_id
    has_S = trans.has_S
    ev_ptr = ev.ptr
    ev_kind = ev.kind
    ev_slot = ev.slot
    ev_w = ev.w
    rec_local = records.local
    rec_global = records.global_
    k_type = records.k_type
    k_idx = records.k_idx
    k_nslots = records.k_nslots
    chain_loss = out.chain_loss
    sel = out.sel
    states = out.states
    final = out.final
    last_record = out.last
    d = X.shape[1]
    p = X.shape[2]
    n_int = tr_id.shape[0]
    K = k_type.shape[0]
    s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
    x = X[c]
    ac = xs.acc[c]
    z = np.empty(p)
    xn = np.empty(p)
    ubuf = np.empty(d)
    for it in range(n_int):
        tr = tr_id[it]
        if has_S:
            for i in range(d):
                x[i, p - 1] = 0.0
        if p == 1:
            for i in range(d):
                z0, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
                x[i, 0] = A[tr, i, 0, 0] * float64(x[i, 0]) + L[tr, i, 0, 0] * z0
        elif p == 2:
            for i in range(d):
                z0, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
                z1, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
                x0 = float64(x[i, 0])
                x1 = float64(x[i, 1])
                x[i, 0] = (A[tr, i, 0, 0] * x0 + A[tr, i, 0, 1] * x1) + (L[tr, i, 0, 0] * z0 + L[tr, i, 0, 1] * z1)
                x[i, 1] = (A[tr, i, 1, 0] * x0 + A[tr, i, 1, 1] * x1) + (L[tr, i, 1, 0] * z0 + L[tr, i, 1, 1] * z1)
        else:
            for i in range(d):
                for q in range(p):
                    zq, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
                    z[q] = zq
                for q in range(p):  # (no array views in this loop: they cost reference counting)
                    v = 0.0
                    for r in range(p):
                        v += A[tr, i, q, r] * float64(x[i, r])
                    w_ = 0.0
                    for r in range(p):
                        w_ += L[tr, i, q, r] * z[r]
                    xn[q] = v + w_
                for q in range(p):
                    x[i, q] = xn[q]
        for e in range(ev_ptr[it], ev_ptr[it + 1]):
            row = ac[ev_slot[e]]
            w = ev_w[e]
            kind = ev_kind[e]
            if kind == 0:
                for i in range(d):
                    row[i] = w * u0[i]
            elif kind == 1:
                for i in range(d):
                    row[i] = float64(row[i]) + w * float64(x[i, 0])
            else:
                for i in range(d):
                    row[i] = float64(row[i]) + w * float64(x[i, p - 1])
        rl = rec_local[it]
        if rl >= 0:
            rg = rec_global[it]
            for k in range(K):
                kt = k_type[k]
                if kt == 2:
                    src = ac[k_idx[k] + rg % k_nslots[k]]
                    for i in range(d):
                        ubuf[i] = src[i]
                else:
                    comp = 0 if kt == 0 else k_idx[k]
                    for i in range(d):
                        ubuf[i] = x[i, comp]
                lk = 0.0
                for i in range(d):
                    lk += h[i] * ubuf[i] * ubuf[i]
                chain_loss[k, rl, c] = 0.5 * lk
                sc = sel[c]
                if sc >= 0:
                    for i in range(d):
                        states[k, sc, rg, i] = ubuf[i]
                if rg == last_record:
                    for i in range(d):
                        final[k, c, i] = ubuf[i]
    rng[c, 0] = s0
    rng[c, 1] = s1
    rng[c, 2] = s2
    rng[c, 3] = s3


@jit_parallel
def exact_chains(rng, xs, trans, u0, h, ev, records, out):
    r"""Exact transitions between event times for diagonal omega, chains in parallel.

    rng (chains, 4) uint64 stream states and ``xs`` (:class:`ExactState`) advanced in place; ``trans``
    (:class:`Transitions`) the matrices of the segment's intervals; u0 (d,) start point; h (d,) diagonal
    of the loss matrix. Interval ``it``: the transition, then the events ``ev.ptr[it]:ev.ptr[it+1]``
    (kind 0 INIT slot = w*u0, 1 ADD slot += w*u, 2 ADD slot += w*S), then the record if
    ``records.local[it] >= 0`` (k_type 0 Last: component 0, 1 EMA: component k_idx, 2 slot).
    """
    for c in prange(xs.X.shape[0]):
        _exact_chain(c, rng, xs, trans, u0, h, ev, records, out)
