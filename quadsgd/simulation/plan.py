r"""The kernel plan: how each averaging kernel is tracked by the compiled loops, and its event lists.

:func:`make_plan` -> :class:`Plan` (with a :class:`SlotSpec` per kernel) is built from what each kernel declares,
:meth:`~quadsgd.kernels.AveragingKernel.tracking` (:class:`~quadsgd.kernels.Tracking`), never from its class.
The Numba loops read a kernel through an integer type code (the one place where kinds become numbers):
``"last"`` -> :data:`LAST` = 0 (the iterate u), ``"geometric"`` -> :data:`GEOMETRIC` = 1 (an EMA tracker
:math:`e\leftarrow(1-a)e+au`), ``"points"`` -> :data:`SLOTS` = 2 (an accumulator slot, reused round robin).

Finite kernels are tracked without a history: each pending record owns an accumulator slot that is
initialised (INIT) and receives weighted iterates (ADD) at event times, and holds :math:`\hat u_{\tau_r}` exactly
at the record time; memory is ``n_slots`` copies of the state, ``n_slots`` = the largest number of records inside
one kernel window. For ``method="exact"`` uniform stride-1 windows W >= 3 use block sums instead. The plan itself
is O(number of records) whatever the kernels' supports.

Errors: ValueError naming the kernel, ``record_every`` and the memory needed when the slots of all kernels would
exceed ``memory_limit`` bytes (no silent fallback).
Derivation of the slots, the block sums and the plan's memory: ``docs/simulator.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LAST", "GEOMETRIC", "SLOTS", "SlotSpec", "Plan", "make_plan", "init0", "step_events",
           "events_per_step"]

#: Numba type codes of the kernels (see the table above)
LAST, GEOMETRIC, SLOTS = 0, 1, 2
_TYPE_CODE = {"last": LAST, "geometric": GEOMETRIC, "points": SLOTS}

#: uniform-weight kernels with more points than this use closed-form weights and suffix sums
_UNIFORM_DENSE_MAX = 10**6


@dataclass
class SlotSpec:
    """A finite kernel tracked in accumulator slots."""

    k: int                         # index in kernels
    n: int                         # number of point weights
    s: int                         # stride (steps)
    block: bool                    # exact method: uniform stride-1 kernel tracked by block sums (SWA)
    w: np.ndarray | None = None    # (n,) weights at lags 0, s, ..., (n-1)s; None: uniform 1/n, not stored
    wsuf: np.ndarray | None = None  # (n+1,) suffix sums of w (weight of points at times <= 0); None with w
    base: int = 0                  # first slot
    ns: int = 1                    # number of slots (round robin)

    @property
    def span(self) -> int:
        """Distance (steps) from a record back to the INIT time of its slot."""
        return self.n if self.block else (self.n - 1) * self.s

    @property
    def support(self) -> int:
        """Number of lags 0..support-1 that the kernel covers."""
        return (self.n - 1) * self.s + 1

    @property
    def w0(self) -> float:
        """The weight of lag 0 (for a uniform kernel: every weight)."""
        return float(self.w[0]) if self.w is not None else 1.0 / self.n

    def weights_at(self, j) -> np.ndarray:
        """Weights of the points j (int array); shape of j."""
        if self.w is not None:
            return self.w[j]
        return np.full(np.shape(j), 1.0 / self.n)

    def nonzero_lags(self, jmax: int | None = None) -> np.ndarray:
        """Indices j <= jmax (default n - 1) of the non-zero weights, increasing; int64. Points beyond the
        run (j s >= the last record time) are never needed: callers pass jmax, so that a kernel of 1e9
        points costs O(steps / s) here."""
        n = self.n if jmax is None else max(0, min(self.n, int(jmax) + 1))
        if self.w is not None:
            return np.flatnonzero(self.w[:n] != 0.0)
        return np.arange(n, dtype=np.int64)

    @property
    def n_nonzero(self) -> int:
        return int(np.count_nonzero(self.w)) if self.w is not None else self.n

    def neg_weight(self, tau) -> np.ndarray | float:
        """Total weight of the points of the average at tau that lie at times <= 0 (they equal u0)."""
        if self.block:
            return np.maximum(self.n - np.asarray(tau), 0) * self.w0
        j0 = np.minimum((np.asarray(tau) + self.s - 1) // self.s, self.n)  # first j with tau - j s <= 0
        if self.wsuf is not None:
            return self.wsuf[j0]
        return (self.n - j0) / self.n


@dataclass
class Plan:
    """How every kernel is tracked: the type codes read by the compiled loops and the slot layout."""

    k_type: np.ndarray      # (K,) int64 type code: LAST 0, GEOMETRIC 1, SLOTS 2
    k_idx: np.ndarray       # (K,) int64 EMA index (step) / state component (exact), or base slot
    k_nslots: np.ndarray    # (K,) int64 number of slots (1 unless SLOTS)
    ema_a: np.ndarray       # (m,) float64 decays of the GEOMETRIC kernels, in kernel order
    specs: list             # SlotSpec of each SLOTS kernel
    n_slots: int            # accumulator slots in all

    @property
    def has_S(self) -> bool:
        """exact method: some kernel is tracked by block sums (the state carries the interval sum S)."""
        return any(sp.block for sp in self.specs)


def _slot_spec(k: int, tr, method: str) -> SlotSpec:
    n, s = int(tr.n), int(tr.stride)
    block = method == "exact" and tr.uniform_window >= 3
    if tr.weights is None and n > _UNIFORM_DENSE_MAX:
        return SlotSpec(k=k, n=n, s=s, block=block)
    w = tr.weight_array()
    wsuf = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
    return SlotSpec(k=k, n=n, s=s, block=block, w=w, wsuf=wsuf)


def make_plan(kernels, times, method, chains, d, itemsize, memory_limit, record_every, mom) -> Plan:
    """The plan of ``kernels`` for the record ``times`` (R,) of a run of ``chains`` x ``d`` states of
    ``itemsize`` bytes; ValueError when the accumulator slots would exceed ``memory_limit`` bytes.
    ``mom``: the model has momentum (exact method: EMA components follow u and b)."""
    K = len(kernels)
    k_type = np.zeros(K, np.int64)
    k_idx = np.zeros(K, np.int64)
    k_nslots = np.ones(K, np.int64)
    ema_a = []
    specs = []
    for k, ker in enumerate(kernels):
        tr = ker.tracking()
        if tr.kind not in _TYPE_CODE:
            raise ValueError(f"{ker!r}.tracking() has kind {tr.kind!r}; the simulator tracks "
                             f"{tuple(_TYPE_CODE)}")
        code = _TYPE_CODE[tr.kind]
        if code == GEOMETRIC:
            k_type[k] = GEOMETRIC
            k_idx[k] = len(ema_a)
            ema_a.append(float(tr.decay))
        elif code == SLOTS:
            if int(tr.n) == 1 and tr.weight_array()[0] == 1.0:
                continue  # a one-point kernel is the last iterate
            specs.append(_slot_spec(k, tr, method))
            k_type[k] = SLOTS
    base = 0
    R = times.size
    need = []
    for sp in specs:
        # records inside any window [tau_r, tau_r + span]: the most pending averages at once
        cnt = np.searchsorted(times, times + sp.span, side="right") - np.arange(R)
        sp.ns = int(cnt.max())
        sp.base = base
        base += sp.ns
        k_idx[sp.k] = sp.base
        k_nslots[sp.k] = sp.ns
        need.append((sp, sp.ns * chains * d * itemsize))
    total = sum(b for _, b in need)
    if total > memory_limit:
        sp, nbytes = max(need, key=lambda x: x[1])
        ker = kernels[sp.k]
        raise ValueError(
            f"record_every={record_every} is too small for {ker!r} (support {sp.support} steps): "
            f"{sp.ns} averages are pending at once, {sp.ns} stored states per chain = {nbytes:.3g} bytes "
            f"for {chains} chains x {d} coordinates; all finite-kernel trackers together need "
            f"{total:.3g} bytes > memory_limit={memory_limit:.3g}. Use record_every >= {sp.support} "
            f"(one pending average at a time) or raise memory_limit.")
    if method == "exact":
        # state components: u, [b], e_1..e_m, [S]
        for k in range(K):
            if k_type[k] == GEOMETRIC:
                k_idx[k] = 1 + int(mom) + k_idx[k]
    return Plan(k_type, k_idx, k_nslots, np.asarray(ema_a, dtype=np.float64), specs, base)


def init0(plan: Plan, times):
    """Slot INITs at time 0 (before any step): list of (slot, weight)."""
    out = []
    for sp in plan.specs:
        r = np.flatnonzero(times - sp.span <= 0)
        for ri in r:
            out.append((sp.base + int(ri) % sp.ns, sp.neg_weight(int(times[ri]))))
    return out


# =============================================================================================
# method="step": event lists of a segment
# =============================================================================================
def _point_events(sp: SlotSpec, times, t0: int, t1: int):
    """INIT / ADD events of a point kernel at times in (t0, t1]: (t, is_add, slot, w) arrays."""
    span = (sp.n - 1) * sp.s
    ra = np.searchsorted(times, t0, side="right")
    rb = np.searchsorted(times, t1 + span, side="right")
    r = np.arange(ra, rb, dtype=np.int64)
    T = times[ra:rb]
    slot = sp.base + r % sp.ns
    ti = np.maximum(T - span, 0)
    mi = (ti > t0) & (ti <= t1)
    it, islot, iw = ti[mi], slot[mi], sp.neg_weight(T[mi])
    # ADD: j with t0 < T - j s <= t1, j in [0, n-1] (T - j s >= t0 + 1 >= 1)
    s = sp.s
    jlo = np.maximum(0, -((t1 - T) // s))  # ceil((T - t1)/s)
    jhi = np.minimum(sp.n - 1, (T - t0 - 1) // s)
    cnt = np.maximum(jhi - jlo + 1, 0)
    tot = int(cnt.sum())
    rep = np.repeat(np.arange(T.size), cnt)
    off = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    j = jlo[rep] + off
    at = T[rep] - j * s
    aw = sp.weights_at(j)
    aslot = slot[rep]
    keep = aw != 0.0
    t = np.concatenate([it, at[keep]])
    is_add = np.concatenate([np.zeros(it.size, np.int64), np.ones(int(keep.sum()), np.int64)])
    return t, is_add, np.concatenate([islot, aslot[keep]]), np.concatenate([iw, aw[keep]])


def step_events(plan: Plan, times, t0: int, t1: int):
    """CSR event list for steps t0+1..t1: (ev_ptr (t1-t0+1,), ev_slot, ev_w, ev_init (bool))."""
    parts = [_point_events(sp, times, t0, t1) for sp in plan.specs]
    if parts:
        t = np.concatenate([p[0] for p in parts])
        is_add = np.concatenate([p[1] for p in parts])
        slot = np.concatenate([p[2] for p in parts])
        w = np.concatenate([p[3] for p in parts])
    else:
        t = np.zeros(0, np.int64)
        is_add = slot = t
        w = np.zeros(0)
    order = np.lexsort((is_add, t))  # by time, INIT before ADD
    t = t[order]
    ev_ptr = np.searchsorted(t, np.arange(t0 + 1, t1 + 2), side="left").astype(np.int64)
    return (ev_ptr, np.ascontiguousarray(slot[order], dtype=np.int64),
            np.ascontiguousarray(w[order], dtype=np.float64), np.ascontiguousarray(is_add[order] == 0))


def events_per_step(plan: Plan, n_rec: int, steps: int) -> float:
    """Bound on the mean number of accumulator events per step (sizes the step method's segments):
    a record gets one INIT and at most min(non-zero weights, steps) ADDs."""
    return sum((min(sp.n_nonzero, steps) + 1) * n_rec for sp in plan.specs) / steps + 1e-9
