r"""Compiled loops of ``method="step"``: every SGD step of every chain, averages tracked online.

Recursion (whitened linear model, paper Appendix A.1, eq. 15, with PyTorch heavy-ball momentum), per
chain and step :math:`t` (step index :math:`t=0,1,\dots`, iterate :math:`u_t` after t steps):

.. math:: g = \Omega u_t - \xi_t,\quad b \leftarrow \beta b + g,\quad u_{t+1} = u_t - \lambda_t b,\qquad
          e^{(j)} \leftarrow (1-a_j)e^{(j)} + a_j u_{t+1}

with :math:`\xi_t\sim\mathcal N(0, I_d)` drawn coordinate by coordinate (``d`` consecutive normals of the
chain's stream per step, :mod:`._rng`). Averages with finite kernels (TwoPoint, NPoint, SWA, Kernel)
are built in *accumulator slots* driven by an event list computed in Python (:mod:`..plan`;
``INIT``: slot = w * u0; ``ADD``: slot += w * u_t), so no history of states is kept.

Entry points (argument groups, all NamedTuples built once per segment by :mod:`..step`):

* :func:`step_chains` ``(rng, state, model, rc, events, records, out)`` -- all steps of a segment,
  chains in parallel (diagonal omega, and small dense omega with a per-chain mat-vec);
* :func:`update_dense` ``(state, G, Z, off, rc, tl, events)`` -- one step of every chain given the
  gradient ``G = U Omega^T`` of a BLAS matmul (large dense omega).

Groups: :class:`State` (u, b, ema, acc), :class:`Model` (omega / Om, h / H), :class:`Recursion`
(u0, lr, beta, ema_a), :class:`Events` (ptr, slot, w, init), and :class:`~._jit.Records`,
:class:`~._jit.Outputs`. State arrays are float32 or float64 (arithmetic inside a step is float64,
stored in the state dtype; losses are float64).

Why the groups are unpacked once per chain and segment: ``docs/simulator.md``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import float64, prange

from ._jit import jit, jit_inline, jit_parallel
from ._rng import normal


class State(NamedTuple):
    """The chain state of ``method="step"`` (advanced in place)."""

    u: np.ndarray    # (chains, d): iterates u_t
    b: np.ndarray    # (chains, d) momentum buffers, or (chains, 0) without momentum
    ema: np.ndarray  # (chains, m, d): EMA trackers e^(1..m), in the plan's EMA order
    acc: np.ndarray  # (chains, n_slots, d): accumulator slots of the finite kernels


class Model(NamedTuple):
    """The quadratic: diagonal (``omega``, ``h_diag``) or small dense (``Om``, ``H``); the other pair unused."""

    omega: np.ndarray   # (d,) float64 diagonal of Omega (diagonal path); (1,) placeholder otherwise
    Om: np.ndarray      # (d, d) float64 Omega (dense path); (1, 1) placeholder otherwise
    dense: bool         # True: per-chain mat-vec with Om and H
    h_diag: np.ndarray  # (d,) float64 diagonal of the loss matrix H (diagonal path); (1,) placeholder
    H: np.ndarray       # (d, d) float64 loss matrix (dense path); (1, 1) placeholder


class Recursion(NamedTuple):
    """Constants of the recursion and the segment's learning rates."""

    u0: np.ndarray     # (d,) float64 start point (the value of u at times <= 0; INIT events)
    lr: np.ndarray     # (nsteps,) float64: lr of each local step of the segment
    beta: float        # momentum (0: plain SGD, no buffer)
    ema_a: np.ndarray  # (m,) float64 EMA decays a_j


class Events(NamedTuple):
    """Accumulator events of the segment in CSR form: events of local step tl are ptr[tl]:ptr[tl+1]."""

    ptr: np.ndarray   # (nsteps + 1,) int64
    slot: np.ndarray  # (n_events,) int64 accumulator slot
    w: np.ndarray     # (n_events,) float64 weight
    init: np.ndarray  # (n_events,) bool: INIT (slot = w u0) or ADD (slot += w u_t)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the step kernels
# ---------------------------------------------------------------------------------------------
@jit_inline
def _quad(x, h_diag, H, dense):
    """0.5 x^T H x (float64) for a 1-D x; H diagonal (h_diag) or dense (H)."""
    d = x.shape[0]
    acc = 0.0
    if dense:
        for i in range(d):
            row = 0.0
            for j in range(d):
                row += H[i, j] * float64(x[j])
            acc += float64(x[i]) * row
    else:
        for i in range(d):
            xi = float64(x[i])
            acc += h_diag[i] * xi * xi
    return 0.5 * acc


@jit_inline
def _apply_events(e0, e1, ev_slot, ev_w, ev_init, ac, uc, u0):
    """Accumulator events e0:e1 of one step for one chain: INIT slot = w*u0, ADD slot += w*u."""
    d = uc.shape[0]
    for e in range(e0, e1):
        row = ac[ev_slot[e]]
        w = ev_w[e]
        if ev_init[e]:
            for i in range(d):
                row[i] = w * u0[i]
        else:
            for i in range(d):
                row[i] = float64(row[i]) + w * float64(uc[i])


# ---------------------------------------------------------------------------------------------
# Diagonal omega (and small dense omega, per-chain mat-vec), all steps of a segment in one call
# ---------------------------------------------------------------------------------------------
# One sweep = one step of one chain over its d coordinates. The common cases (no EMA / one EMA,
# with / without momentum) have their own loops, inlined into the prange body; each returns the
# half-loss sums 0.5 sum_i h_i x_i^2 (float64) of u (and of the EMA tracker) when ``rec`` (a
# loop-invariant branch that LLVM unswitches), and the stream state.
@jit_inline
def _sweep_0(s0, s1, s2, s3, uc, omega, h, lt, rec):
    lu = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        uc[i] = ui - lt * (omega[i] * ui - z)
        if rec:
            ui = float64(uc[i])
            lu += h[i] * ui * ui
    return 0.5 * lu, s0, s1, s2, s3


@jit_inline
def _sweep_0m(s0, s1, s2, s3, uc, bc, omega, h, lt, beta, rec):
    lu = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        bi = beta * float64(bc[i]) + (omega[i] * ui - z)
        bc[i] = bi
        uc[i] = ui - lt * bi
        if rec:
            ui = float64(uc[i])
            lu += h[i] * ui * ui
    return 0.5 * lu, s0, s1, s2, s3


@jit_inline
def _sweep_1(s0, s1, s2, s3, uc, ec, omega, h, lt, a, rec):
    lu = 0.0
    le = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        uc[i] = ui - lt * (omega[i] * ui - z)
        ui = float64(uc[i])
        ec[0, i] = (1.0 - a) * float64(ec[0, i]) + a * ui
        if rec:
            hi = h[i]
            lu += hi * ui * ui
            ej = float64(ec[0, i])
            le += hi * ej * ej
    return 0.5 * lu, 0.5 * le, s0, s1, s2, s3


@jit_inline
def _sweep_1m(s0, s1, s2, s3, uc, bc, ec, omega, h, lt, beta, a, rec):
    lu = 0.0
    le = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        bi = beta * float64(bc[i]) + (omega[i] * ui - z)
        bc[i] = bi
        uc[i] = ui - lt * bi
        ui = float64(uc[i])
        ec[0, i] = (1.0 - a) * float64(ec[0, i]) + a * ui
        if rec:
            hi = h[i]
            lu += hi * ui * ui
            ej = float64(ec[0, i])
            le += hi * ej * ej
    return 0.5 * lu, 0.5 * le, s0, s1, s2, s3


@jit_inline
def _sweep_gen(s0, s1, s2, s3, uc, bc, ec, omega, h, lt, beta, ema_a, rec, lsum_e):
    """Any number of EMA trackers; fills lsum_e (m,) when rec; returns the half-loss of u."""
    mom = beta != 0.0
    m = ema_a.shape[0]
    lu = 0.0
    for j in range(m):
        lsum_e[j] = 0.0
    for i in range(uc.shape[0]):
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        ui = float64(uc[i])
        if mom:
            bi = beta * float64(bc[i]) + (omega[i] * ui - z)
            bc[i] = bi
            uc[i] = ui - lt * bi
        else:
            uc[i] = ui - lt * (omega[i] * ui - z)
        ui = float64(uc[i])
        hi = h[i]
        if rec:
            lu += hi * ui * ui
        for j in range(m):
            a = ema_a[j]
            ec[j, i] = (1.0 - a) * float64(ec[j, i]) + a * ui
            if rec:
                ej = float64(ec[j, i])
                lsum_e[j] += hi * ej * ej
    for j in range(m):
        lsum_e[j] *= 0.5
    return 0.5 * lu, s0, s1, s2, s3


@jit_inline
def _sweep_dense(s0, s1, s2, s3, uc, bc, ec, g, Om, lt, beta, ema_a):
    """Small dense omega: g = Omega u - xi by a per-chain mat-vec (noise in coordinate order).

    Returns the stream state; the losses are computed by the caller (:func:`_dense_losses`)."""
    mom = beta != 0.0
    d = uc.shape[0]
    m = ema_a.shape[0]
    for i in range(d):
        acc_i = 0.0
        for j in range(d):
            acc_i += Om[i, j] * float64(uc[j])
        z, s0, s1, s2, s3 = normal(s0, s1, s2, s3)
        g[i] = acc_i - z
    for i in range(d):
        if mom:
            bi = beta * float64(bc[i]) + g[i]
            bc[i] = bi
            uc[i] = float64(uc[i]) - lt * bi
        else:
            uc[i] = float64(uc[i]) - lt * g[i]
        ui = float64(uc[i])
        for j in range(m):
            a = ema_a[j]
            ec[j, i] = (1.0 - a) * float64(ec[j, i]) + a * ui
    return s0, s1, s2, s3


@jit_inline
def _dense_losses(uc, ec, H, lsum_e):
    """Half-losses 0.5 x^T H x of u (returned) and of every EMA tracker (into lsum_e) after a dense step."""
    lu = _quad(uc, H[0], H, True)
    for j in range(ec.shape[0]):
        lsum_e[j] = _quad(ec[j], H[0], H, True)
    return lu


@jit
def _chain_steps(c, rng, st, model, rc, ev, records, out):
    """All steps of one segment for chain c (the body of :func:`step_chains`)."""
    omega = model.omega
    Om = model.Om
    dense = model.dense
    h_diag = model.h_diag
    H = model.H
    u0 = rc.u0
    lr = rc.lr
    beta = rc.beta
    ema_a = rc.ema_a
    ev_ptr = ev.ptr
    ev_slot = ev.slot
    ev_w = ev.w
    ev_init = ev.init
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
    K = k_type.shape[0]
    d = st.u.shape[1]
    nsteps = lr.shape[0]
    m = ema_a.shape[0]
    mom = beta != 0.0
    s0, s1, s2, s3 = rng[c, 0], rng[c, 1], rng[c, 2], rng[c, 3]
    uc = st.u[c]
    bc = st.b[c]
    ec = st.ema[c]
    ac = st.acc[c]
    lsum_e = np.zeros(max(m, 1))
    g = np.zeros(d if dense else 1)
    for tl in range(nsteps):
        lt = lr[tl]
        rl = rec_local[tl]
        rec = rl >= 0
        if dense:
            s0, s1, s2, s3 = _sweep_dense(s0, s1, s2, s3, uc, bc, ec, g, Om, lt, beta, ema_a)
            lsum_u = _dense_losses(uc, ec, H, lsum_e) if rec else 0.0
        elif m == 0:
            if mom:
                lsum_u, s0, s1, s2, s3 = _sweep_0m(s0, s1, s2, s3, uc, bc, omega, h_diag, lt, beta, rec)
            else:
                lsum_u, s0, s1, s2, s3 = _sweep_0(s0, s1, s2, s3, uc, omega, h_diag, lt, rec)
        elif m == 1:
            if mom:
                lsum_u, le, s0, s1, s2, s3 = _sweep_1m(s0, s1, s2, s3, uc, bc, ec, omega, h_diag,
                                                       lt, beta, ema_a[0], rec)
            else:
                lsum_u, le, s0, s1, s2, s3 = _sweep_1(s0, s1, s2, s3, uc, ec, omega, h_diag, lt,
                                                      ema_a[0], rec)
            lsum_e[0] = le
        else:
            lsum_u, s0, s1, s2, s3 = _sweep_gen(s0, s1, s2, s3, uc, bc, ec, omega, h_diag, lt, beta, ema_a,
                                                rec, lsum_e)
        _apply_events(ev_ptr[tl], ev_ptr[tl + 1], ev_slot, ev_w, ev_init, ac, uc, u0)
        if rec:
            # every kernel's record (k_type 0 Last, 1 EMA, 2 slot): loss, and the state when asked
            rg = rec_global[tl]
            for k in range(K):
                kt = k_type[k]
                if kt == 0:
                    src = uc
                    loss = lsum_u
                elif kt == 1:
                    j = k_idx[k]
                    src = ec[j]
                    loss = lsum_e[j]
                else:
                    src = ac[k_idx[k] + rg % k_nslots[k]]
                    loss = _quad(src, h_diag, H, dense)
                chain_loss[k, rl, c] = loss
                sc = sel[c]
                if sc >= 0:
                    states[k, sc, rg, :] = src
                if rg == last_record:
                    final[k, c, :] = src
    rng[c, 0] = s0
    rng[c, 1] = s1
    rng[c, 2] = s2
    rng[c, 3] = s3


@jit_parallel
def step_chains(rng, st, model, rc, ev, records, out):
    r"""Advance every chain by ``rc.lr.shape[0]`` steps (one segment), chains in parallel.

    Diagonal (``model.dense`` False): ``omega`` (d,) and ``h_diag`` (d,); no d x d work, all per
    coordinate: :math:`u_i \leftarrow u_i - \lambda_t(\beta b_i + \omega_i u_i - \xi_i)`.
    Dense (``model.dense`` True, small d): ``Om`` (d, d), ``H`` (d, d); per-chain mat-vec :math:`\Omega u`.
    rng (chains, 4) uint64 stream states, st (:class:`State`) advanced in place; ``rc.lr`` (nsteps,):
    the learning rate of each step of the segment; events of local step tl are
    ``ev.ptr[tl]:ev.ptr[tl+1]``; ``records.local`` / ``records.global_`` (nsteps,): record index (in the
    segment's ``out.chain_loss`` (K, n_rec_seg, chains) / global) at the end of the step, or -1.
    """
    for c in prange(st.u.shape[0]):
        _chain_steps(c, rng, st, model, rc, ev, records, out)


# ---------------------------------------------------------------------------------------------
# Dense omega with BLAS: the gradient G = U Omega^T comes from a batched matmul
# ---------------------------------------------------------------------------------------------
@jit
def update_dense(st, G, Z, off, rc, tl, ev):
    r"""Local step ``tl`` of every chain given ``G = U @ Omega^T`` (chains, d) and the step's normals
    ``Z[:, off:off+d]`` (from :func:`~._rng.fill_normals`):
    :math:`b \leftarrow \beta b + G - \xi`, :math:`u \leftarrow u - \lambda b`, EMA trackers, then the
    accumulator events of this step (``ev.ptr[tl]:ev.ptr[tl+1]``); the lr is ``rc.lr[tl]``.

    Serial on purpose: it alternates with a multi-threaded BLAS call every step, and two thread pools
    (OpenMP spin-waiting and OpenBLAS) handing the cores back and forth cost more than they gain.
    """
    u = st.u
    b = st.b
    ema = st.ema
    acc = st.acc
    u0 = rc.u0
    lt = rc.lr[tl]
    beta = rc.beta
    ema_a = rc.ema_a
    e0 = ev.ptr[tl]
    e1 = ev.ptr[tl + 1]
    ev_slot = ev.slot
    ev_w = ev.w
    ev_init = ev.init
    C = u.shape[0]
    d = u.shape[1]
    m = ema_a.shape[0]
    mom = beta != 0.0
    for c in range(C):
        uc = u[c]
        bc = b[c]
        ec = ema[c]
        gc = G[c]
        zc = Z[c]
        for i in range(d):
            z = zc[off + i]
            if mom:
                bi = beta * float64(bc[i]) + (float64(gc[i]) - z)
                bc[i] = bi
                uc[i] = float64(uc[i]) - lt * bi
            else:
                uc[i] = float64(uc[i]) - lt * (float64(gc[i]) - z)
            ui = float64(uc[i])
            for j in range(m):
                a = ema_a[j]
                ec[j, i] = (1.0 - a) * float64(ec[j, i]) + a * ui
        _apply_events(e0, e1, ev_slot, ev_w, ev_init, acc[c], uc, u0)
