r"""``method="step"``: every SGD step of every chain is simulated (compiled loops in :mod:`._step`).

Three paths by the shape of omega:

* ``"diag"`` -- diagonal omega: per coordinate, no d x d work (:func:`._step.step_chains`);
* ``"numba"`` -- dense omega with d <= :data:`_DENSE_NUMBA_MAX_D`: a per-chain mat-vec inside the same
  compiled loop;
* ``"blas"`` -- larger dense omega: the gradients of all chains by one BLAS matmul per step, the rest of
  the step in :func:`._step.update_dense`.

The run is cut into segments of at most a few million accumulator events and a bounded chain-loss
buffer; the chain state (:class:`._step.State`) persists across segments, and every chain consumes
exactly d normals of its own stream per step, so the segmentation never changes a result.
"""
from __future__ import annotations

import numpy as np

from . import _rng, _step
from .plan import GEOMETRIC, SLOTS, events_per_step, step_events
from .runtime import Job, threads_for

#: dense omega with d <= this runs the per-chain mat-vec in Numba; larger d uses BLAS over chains
_DENSE_NUMBA_MAX_D = 32
#: per-segment cap on the number of accumulator events
_SEG_EVENTS = 1 << 22
#: work per segment when a progress bar is shown (chain-coordinate-steps)
_SEG_WORK_PROGRESS = 1 << 26


def dense_path(m) -> str:
    """``"diag"``, ``"numba"`` (small dense) or ``"blas"`` (large dense): how a step of ``m`` is computed."""
    if m.diagonal:
        return "diag"
    return "numba" if m.dim <= _DENSE_NUMBA_MAX_D else "blas"


def initial_state(job: Job) -> _step.State:
    """u = u0, b = 0, every EMA tracker = u0, the accumulator slots INIT-ed at time 0."""
    cfg, plan = job.cfg, job.plan
    C, d, dt = cfg.chains, cfg.m.dim, cfg.dtype
    mom = cfg.m.momentum != 0.0
    u = np.empty((C, d), dtype=dt)
    u[:] = cfg.u0
    b = np.zeros((C, d if mom else 0), dtype=dt)
    ema = np.empty((C, plan.ema_a.size, d), dtype=dt)
    ema[:] = cfg.u0
    acc = np.zeros((C, plan.n_slots, d), dtype=dt)
    job.init_slots(acc)
    return _step.State(u, b, ema, acc)


def _model(job: Job, path: str) -> _step.Model:
    om = job.cfg.m.omega
    if path == "diag":
        return _step.Model(np.array(om, np.float64, order="C"), np.zeros((1, 1)), False, job.H, np.zeros((1, 1)))
    return _step.Model(np.zeros(1), np.array(om, np.float64, order="C"), True, np.zeros(1), job.H)


def run_step(job: Job) -> None:
    """Simulate all ``steps`` of every chain, filling ``job.out``."""
    cfg, plan, times = job.cfg, job.plan, job.times
    C, d, steps = cfg.chains, cfg.m.dim, cfg.steps
    R = times.size
    st = initial_state(job)
    path = dense_path(cfg.m)
    model = _model(job, path) if path != "blas" else None
    # segment length (steps): bounded loss buffer, bounded event list, progress granularity
    rec_every = int(times[0])
    seg = min(steps, job.seg_rec_cap() * rec_every,
              max(1, int(_SEG_EVENTS / events_per_step(plan, R, steps))))
    if cfg.progress:
        seg = min(seg, max(1, _SEG_WORK_PROGRESS // (C * d)))
    if cfg.segment_steps is not None:
        seg = int(cfg.segment_steps)
    bar = job.progress_bar(steps, "step")
    try:
        t0 = 0
        while t0 < steps:
            t1 = min(steps, t0 + seg)
            _segment(job, path, model, st, t0, t1)
            if bar is not None:
                bar.update(t1 - t0)
            t0 = t1
    finally:
        if bar is not None:
            bar.close()


def _segment(job: Job, path: str, model, st: _step.State, t0: int, t1: int) -> None:
    """Steps t0+1..t1 of every chain, and the records among them."""
    cfg, plan, times, out = job.cfg, job.plan, job.times, job.out
    C, d, K = cfg.chains, cfg.m.dim, job.K
    ra = int(np.searchsorted(times, t0, side="right"))
    rb = int(np.searchsorted(times, t1, side="right"))
    nr = rb - ra
    nsteps = t1 - t0
    records = job.records(nsteps, times[ra:rb] - t0 - 1, ra, rb)
    ev = _step.Events(*step_events(plan, times, t0, t1))
    chain_loss = np.zeros((K, max(nr, 1), C))
    rc = _step.Recursion(cfg.u0, np.ascontiguousarray(cfg.lr[t0:t1]), float(cfg.m.momentum), plan.ema_a)
    if path != "blas":
        with threads_for(C * (d * d if path == "numba" else d) * nsteps):
            _step.step_chains(job.rng, st, model, rc, ev, records, out.compiled(chain_loss))
    else:
        u = st.u
        OmT = np.ascontiguousarray(np.asarray(cfg.m.omega, np.float64).T, dtype=u.dtype)
        G = np.empty((C, d), dtype=u.dtype)
        # This path alternates a multi-threaded BLAS call with O(chains d) work every step; Numba's
        # own thread pool (OpenMP spin-waiting) would fight OpenBLAS's for the cores, so the normals
        # and the update run on this thread (the matmul dominates: BLAS-bound).
        Z = np.empty((C, d))
        rec_local, rec_global = records.local, records.global_
        for tl in range(nsteps):
            with threads_for(0):
                _rng.fill_normals(job.rng, Z)
            np.matmul(u, OmT, out=G)
            _step.update_dense(st, G, Z, 0, rc, tl, ev)
            rl = rec_local[tl]
            if rl >= 0:
                rg = int(rec_global[tl])
                out.record_dense(job.H, _sources(plan, st, rg), int(rl), rg, chain_loss)
    if nr:
        out.reduce(chain_loss, ra, nr)


def _sources(plan, st: _step.State, rg: int) -> list:
    """The averaged iterate (chains, d) of every kernel at record rg (by the plan's type codes)."""
    src = []
    for k in range(plan.k_type.size):
        kt = plan.k_type[k]
        if kt == GEOMETRIC:
            src.append(st.ema[:, plan.k_idx[k], :])
        elif kt == SLOTS:
            src.append(st.acc[:, plan.k_idx[k] + rg % plan.k_nslots[k], :])
        else:
            src.append(st.u)
    return src
