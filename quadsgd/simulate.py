r"""Fast, reproducible simulation of many independent SGD chains of the linear model, with averaging.

Model (paper Appendix A.1, eq. 15, whitened coordinates; heavy-ball momentum in PyTorch's convention):

.. math:: g_t = \Omega u_t - \xi_t,\quad \xi_t\sim\mathcal N(0, I_d),\qquad
          b_{t+1} = \beta b_t + g_t,\quad u_{t+1} = u_t - \lambda_t b_{t+1},\qquad b_0 = 0,\ u_0 = u0.

Averaged iterates (paper A.2): :math:`\hat u_t = \sum_{k\ge0}\mu_k u_{t-k}` with :math:`u_{s} = u0` for
:math:`s < 0` (the chain "sat at u0" before it started); EMA: :math:`e_0 = u0`,
:math:`e_{t+1} = (1-a)e_t + a u_{t+1}`. The recorded loss is :math:`\tfrac12\hat u^\top H\hat u`
(``m.loss_matrix()``), averaged over chains.

Entry point: :func:`simulate` (-> :class:`SimulationResult`). :func:`draw_normals` gives the exact
normals a chain's stream produces, for feeding the pure-numpy twins in :mod:`quadsgd._reference`.

How averages with finite kernels are tracked without a history
---------------------------------------------------------------
A kernel with non-zero weights :math:`w_j` at lags :math:`j s` (j < n; ``point_weights`` and ``stride``)
is only needed at the record times :math:`\tau_r`. Each pending record owns an *accumulator slot*
(one state-sized array per chain): at time :math:`\max(0, \tau_r-(n-1)s)` it is set to
:math:`(\sum_{j:\tau_r-js\le0}w_j)\,u0`, and at each time :math:`t = \tau_r - js \ge 1` it gets
:math:`w_j u_t` added; at :math:`\tau_r` it holds :math:`\hat u_{\tau_r}` exactly (summed in time
order). Slots are reused round-robin, so the memory is ``n_slots`` copies of the state, with
``n_slots`` = the largest number of records inside any window of :math:`(n-1)s+1` steps:
1 or 2 when ``record_every`` >= the kernel's support (a TwoPoint with delta 1e5 or an SWA of window 1e5
over 1e3 chains x 1e3 coordinates then costs one or two extra copies of the state), about
``support / record_every`` otherwise. If the slots of all kernels together would exceed
``memory_limit`` bytes, :func:`simulate` raises a ValueError naming the kernel, ``record_every`` and the
memory needed (no silent fallback). The extra work is one multiply-add per coordinate per event.

method="exact"
--------------
For constant-lr stretches the k-step transition of the augmented state :math:`z = (u, [b], e^{(1..m)}, [S])`
is Gaussian: :math:`z_{t+k} = A_k z_t + \eta`, :math:`A_k = M^k`,
:math:`\mathrm{Cov}\,\eta = Q_k = \sum_{j<k}M^j N N^\top M^{j\top}` (computed by doubling: O(log k)
products), and is sampled as :math:`A_k z + Q_k^{1/2}\zeta` (symmetric square root). Here ``M``/``N``
are the one-step matrices of the recursion above, EMA trackers are state components, and ``S`` is the
sum of :math:`u` over the current interval (reset at every event time), which gives SWA window sums.
The chain jumps from event time to event time: the record times, the point times
:math:`\tau_r - js` of TwoPoint / NPoint / Kernel averages, the window starts :math:`\tau_r - W` of SWA
(and of any uniform stride-1 kernel), and the change points of a piecewise-constant ``lr`` array.
The cost is proportional to the number of event times, not to ``steps``. Diagonal omega: per
coordinate p x p transitions (p <= 3 + number of EMAs), no d x d work; dense omega: (p d) x (p d)
matrices, batched matmuls. A non-constant lr array with more than ``_EXACT_MAX_PIECES`` pieces
raises a ValueError (use method="step").

Reproducibility
---------------
Chain c uses its own xoshiro256++ stream (:mod:`quadsgd._numba`): results for a seed are bit-identical
for any number of threads (``NUMBA_NUM_THREADS``), any segmentation of the run (progress bar), and for
diagonal omega and the small-d dense path, for any number of other chains. The dense BLAS path
(d > ``_DENSE_NUMBA_MAX_D``) is reproducible for a given BLAS library and thread setting.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import _numba as nb
from .kernels import EMA, AveragingKernel, Last
from .model import LinearModel

__all__ = ["simulate", "SimulationResult", "draw_normals", "record_times"]

#: dense omega with d <= this runs the per-chain mat-vec in Numba; larger d uses BLAS over chains
_DENSE_NUMBA_MAX_D = 32
#: most constant-lr pieces accepted by method="exact"
_EXACT_MAX_PIECES = 4096
#: per-segment caps: chain-loss buffer (bytes), number of accumulator events
_SEG_LOSS_BYTES = 1 << 25
_SEG_EVENTS = 1 << 22
#: work per segment when a progress bar is shown (chain-coordinate-steps)
_SEG_WORK_PROGRESS = 1 << 26
#: below this much work per kernel call (chain-coordinate-steps) run on one thread: waking the
#: thread pool costs more (results do not depend on the number of threads)
_PARALLEL_MIN_WORK = 1 << 18
_METHODS = ("step", "exact")


# =============================================================================================
# Result
# =============================================================================================
@dataclass(frozen=True, eq=False)
class SimulationResult:
    r"""Output of :func:`simulate`.

    Attributes
    ----------
    times : (n_records,) int64
        Step indices of the records: record_every, 2*record_every, ..., and ``steps`` (appended when
        ``steps`` is not a multiple of record_every).
    loss : (n_kernels, n_records) float64
        Mean over chains of :math:`\tfrac12\hat u^\top H\hat u` of each kernel's averaged iterate.
    loss_std : (n_kernels, n_records) float64
        Standard deviation over chains (ddof=1; 0 for one chain) of the same per-chain loss.
    final : (n_kernels, chains, d), dtype
        Averaged iterates at t = steps.
    kernels : tuple of the averaging kernels, in the order of the first axis above.
    chain_loss : (n_kernels, chains, n_records) float64, or None
        Per-chain loss (``per_chain_loss=True``).
    states : (n_kernels, n_state_chains, n_records, d), dtype, or None
        Averaged iterates of the chains ``state_chains`` at every record (``record_states=``).
    state_chains : (n_state_chains,) int64 or None
    steps, chains, dim, seed, method, dtype, lr : the run's parameters (lr: float, or (steps,) array).
    """

    times: np.ndarray
    loss: np.ndarray
    loss_std: np.ndarray
    final: np.ndarray
    kernels: tuple
    steps: int
    chains: int
    dim: int
    seed: int
    method: str
    dtype: np.dtype
    lr: object
    chain_loss: np.ndarray | None = None
    states: np.ndarray | None = None
    state_chains: np.ndarray | None = field(default=None)

    @property
    def loss_sem(self) -> np.ndarray:
        """Standard error of ``loss`` (std / sqrt(chains)); shape (n_kernels, n_records)."""
        return self.loss_std / math.sqrt(self.chains)

    def kernel_index(self, kernel: AveragingKernel) -> int:
        """Row of ``kernel`` in ``loss`` / ``final`` (first match by equality)."""
        for i, k in enumerate(self.kernels):
            if k == kernel:
                return i
        raise ValueError(f"{kernel!r} is not among the simulated kernels {self.kernels!r}")


# =============================================================================================
# Small helpers
# =============================================================================================
def _as_int(name, value, low, high=None):
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {rng}, got {value}")
    return value


def _check_seed(seed) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy % (1 << 64))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a non-negative integer < 2**64 or None, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < (1 << 64):
        raise ValueError(f"seed must be a non-negative integer < 2**64, got {seed}")
    return seed


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def record_times(steps: int, record_every: int) -> np.ndarray:
    """Record times: record_every, 2*record_every, ... <= steps, plus steps itself; (n_records,) int64."""
    t = np.arange(record_every, steps + 1, record_every, dtype=np.int64)
    if t.size == 0 or t[-1] != steps:
        t = np.append(t, np.int64(steps))
    return t


def _stream_states(seed: int, chains: int) -> np.ndarray:
    return nb.chain_states(np.uint64(seed), chains)


def draw_normals(seed: int, chains: int, count: int) -> np.ndarray:
    """The first ``count`` standard normals of each chain's stream for ``seed``; shape (chains, count) float64.

    :func:`simulate` with ``method="step"`` consumes, per chain, d normals per step in coordinate
    order: ``draw_normals(seed, C, steps * d).reshape(C, steps, d)[:, t, i]`` is :math:`\\xi_{t,i}`.
    """
    seed = _check_seed(seed)
    chains = _as_int("chains", chains, 1)
    count = _as_int("count", count, 0)
    rng = _stream_states(seed, chains)
    out = np.empty((chains, count))
    with _threads_for(out.size):
        nb.fill_normals(rng, out)
    return out


# =============================================================================================
# Kernel plan: how each averaging kernel is tracked
# =============================================================================================
@dataclass
class _SlotSpec:
    k: int            # index in kernels
    n: int            # number of point weights
    s: int            # stride (steps)
    w: np.ndarray     # (n,) weights at lags 0, s, ..., (n-1)s
    block: bool       # exact method: uniform stride-1 kernel tracked by block sums (SWA)
    base: int = 0     # first slot
    ns: int = 1       # number of slots (round robin)
    wsuf: np.ndarray = None  # (n+1,) suffix sums of w (weight of points at times <= 0)

    @property
    def span(self) -> int:
        """Distance (steps) from a record back to the INIT time of its slot."""
        return self.n if self.block else (self.n - 1) * self.s


@dataclass
class _Plan:
    k_type: np.ndarray      # (K,) 0 Last, 1 EMA, 2 slot
    k_idx: np.ndarray       # (K,) EMA index (step) / state component (exact), or base slot
    k_nslots: np.ndarray    # (K,)
    ema_a: np.ndarray       # (m,)
    specs: list
    n_slots: int


def _plan(kernels, times, method, chains, d, itemsize, memory_limit, record_every, mom) -> _Plan:
    K = len(kernels)
    k_type = np.zeros(K, np.int64)
    k_idx = np.zeros(K, np.int64)
    k_nslots = np.ones(K, np.int64)
    ema_a = []
    specs = []
    for k, ker in enumerate(kernels):
        if isinstance(ker, Last):
            continue
        if isinstance(ker, EMA):
            k_type[k] = 1
            k_idx[k] = len(ema_a)
            ema_a.append(float(ker.decay))
            continue
        w = np.asarray(ker.point_weights, dtype=np.float64)
        s = int(ker.stride)
        if w.size == 1 and w[0] == 1.0:
            continue  # a one-point kernel is the last iterate
        block = method == "exact" and s == 1 and w.size >= 3 and bool(np.all(w == w[0]))
        wsuf = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
        specs.append(_SlotSpec(k=k, n=int(w.size), s=s, w=w, block=block, wsuf=wsuf))
        k_type[k] = 2
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
            f"record_every={record_every} is too small for {ker!r} (support {ker.support} steps): "
            f"{sp.ns} averages are pending at once, {sp.ns} stored states per chain = {nbytes:.3g} bytes "
            f"for {chains} chains x {d} coordinates; all finite-kernel trackers together need "
            f"{total:.3g} bytes > memory_limit={memory_limit:.3g}. Use record_every >= {ker.support} "
            f"(one pending average at a time) or raise memory_limit.")
    if method == "exact":
        # state components: u, [b], e_1..e_m, [S]
        for k in range(K):
            if k_type[k] == 1:
                k_idx[k] = 1 + int(mom) + k_idx[k]
    return _Plan(k_type, k_idx, k_nslots, np.asarray(ema_a, dtype=np.float64), specs, base)


def _init0(plan: _Plan, times):
    """Slot INITs at time 0 (before any step): list of (slot, weight)."""
    out = []
    for sp in plan.specs:
        r = np.flatnonzero(times - sp.span <= 0)
        for ri in r:
            out.append((sp.base + int(ri) % sp.ns, _neg_weight(sp, int(times[ri]))))
    return out


def _neg_weight(sp: _SlotSpec, tau) -> np.ndarray | float:
    """Total weight of the points of the average at tau that lie at times <= 0 (they equal u0)."""
    if sp.block:
        return np.maximum(sp.n - np.asarray(tau), 0) * sp.w[0]
    j0 = np.minimum((np.asarray(tau) + sp.s - 1) // sp.s, sp.n)  # first j with tau - j s <= 0
    return sp.wsuf[j0]


def _point_events(sp: _SlotSpec, times, t0: int, t1: int):
    """INIT / ADD events of a point kernel at times in (t0, t1]: (t, is_add, slot, w) arrays."""
    span = (sp.n - 1) * sp.s
    ra = np.searchsorted(times, t0, side="right")
    rb = np.searchsorted(times, t1 + span, side="right")
    r = np.arange(ra, rb, dtype=np.int64)
    T = times[ra:rb]
    slot = sp.base + r % sp.ns
    ti = np.maximum(T - span, 0)
    mi = (ti > t0) & (ti <= t1)
    it, islot, iw = ti[mi], slot[mi], _neg_weight(sp, T[mi])
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
    aw = sp.w[j]
    aslot = slot[rep]
    keep = aw != 0.0
    t = np.concatenate([it, at[keep]])
    is_add = np.concatenate([np.zeros(it.size, np.int64), np.ones(int(keep.sum()), np.int64)])
    return t, is_add, np.concatenate([islot, aslot[keep]]), np.concatenate([iw, aw[keep]])


def _step_events(plan: _Plan, times, t0: int, t1: int):
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


def _events_per_step(plan: _Plan, n_rec: int, steps: int) -> float:
    return sum((int(np.count_nonzero(sp.w)) + 1) * n_rec for sp in plan.specs) / steps + 1e-9


# =============================================================================================
# Validation
# =============================================================================================
def _validate(m, steps, chains, kernels, lr, u0, record_every, seed, dtype, method, memory_limit):
    if not isinstance(m, LinearModel):
        raise ValueError(f"m must be a qs.LinearModel, got {type(m).__name__}")
    steps = _as_int("steps", steps, 1)
    chains = _as_int("chains", chains, 1)
    if isinstance(method, str) and method in _METHODS:
        pass
    else:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    record_every = _as_int("record_every", record_every, 1, steps)
    dt = _check_dtype(dtype)
    seed = _check_seed(seed)
    if isinstance(kernels, AveragingKernel):
        kernels = (kernels,)
    try:
        kernels = tuple(kernels)
    except TypeError:
        raise ValueError(f"kernels must be a sequence of averaging kernels, got {kernels!r}") from None
    if not kernels:
        raise ValueError("kernels must contain at least one averaging kernel (e.g. (qs.Last(),))")
    for k in kernels:
        if not isinstance(k, AveragingKernel):
            raise ValueError(f"kernels must be averaging kernels (qs.Last(), qs.EMA(...), ...), got {k!r}")
    d = m.dim
    if u0 is None:
        u0 = np.ones(d)
    else:
        try:
            u0 = np.array(u0, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"u0 must be a real array of shape ({d},)") from None
        if u0.shape != (d,):
            raise ValueError(f"u0 must have shape ({d},), got {u0.shape}")
        if not np.all(np.isfinite(u0)):
            raise ValueError("u0 must be finite")
    # learning rate: scalar or (steps,) array, every value stable
    if lr is None:
        lr_arr = np.full(steps, m.lr)
        lr_out = m.lr
    else:
        if isinstance(lr, (bool, np.bool_)):
            raise ValueError(f"lr must be None, a positive number or an array of length steps={steps}")
        try:
            lr_arr = np.array(lr, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"lr must be None, a positive number or an array of length steps={steps}, "
                             f"got {type(lr).__name__}") from None
        if lr_arr.ndim == 0:
            lr_out = float(lr_arr)
            lr_arr = np.full(steps, lr_out)
        elif lr_arr.ndim != 1 or lr_arr.size != steps:
            raise ValueError(f"lr array must have shape (steps,) = ({steps},), got {lr_arr.shape}")
        else:
            lr_out = lr_arr.copy()
            lr_out.setflags(write=False)
        if not np.all(np.isfinite(lr_arr)) or np.any(lr_arr <= 0):
            i = int(np.flatnonzero(~(np.isfinite(lr_arr) & (lr_arr > 0)))[0])
            raise ValueError(f"lr must be finite and > 0; lr[{i}] = {float(lr_arr[i])!r}")
        i = int(np.argmax(lr_arr))
        try:
            m.with_lr(lr_arr[i])  # the stable set is an interval (0, bound): checking the max suffices
        except ValueError:
            where = "lr" if np.all(lr_arr == lr_arr[0]) else f"lr[{i}]"
            raise ValueError(f"{where} = {float(lr_arr[i])!r} is unstable for this model (momentum {m.momentum}): "
                             f"every step needs 0 < lr < {m.lr_bound:.6g}") from None
    try:
        memory_limit = float(memory_limit)
    except (TypeError, ValueError):
        raise ValueError(f"memory_limit must be a number of bytes, got {memory_limit!r}") from None
    if not memory_limit > 0:
        raise ValueError(f"memory_limit must be > 0 bytes, got {memory_limit!r}")
    return steps, chains, kernels, lr_arr, lr_out, u0, record_every, seed, dt, method, memory_limit


def _selection(record_states, chains):
    if record_states is None:
        return np.zeros(0, np.int64)
    if isinstance(record_states, (int, np.integer)) and not isinstance(record_states, (bool, np.bool_)):
        n = int(record_states)
        if not 0 <= n <= chains:
            raise ValueError(f"record_states must be in [0, chains={chains}], got {n}")
        return np.arange(n, dtype=np.int64)
    try:
        idx = np.array(record_states, dtype=np.int64).ravel()
    except (TypeError, ValueError):
        raise ValueError("record_states must be None, a number of chains or a sequence of chain indices") from None
    if idx.size and (idx.min() < 0 or idx.max() >= chains):
        raise ValueError(f"record_states indices must be in [0, {chains}), got {idx.tolist()}")
    if np.unique(idx).size != idx.size:
        raise ValueError("record_states indices must be distinct")
    return idx


# =============================================================================================
# Public entry point
# =============================================================================================
def simulate(m, steps, chains, kernels=(Last(),), lr=None, u0=None, record_every=1, seed=0,
             dtype=np.float64, method="step", *, per_chain_loss=False, record_states=None,
             progress=False, memory_limit=2 ** 30, _segment_steps=None) -> SimulationResult:
    r"""Simulate ``chains`` independent SGD chains of the linear model and track averaged iterates.

    Parameters
    ----------
    m : LinearModel
        Diagonal (omega shape (d,)) or dense (d, d) omega, momentum :math:`\beta`, loss matrix
        ``m.loss_matrix()`` (required: the loss :math:`\tfrac12 \hat u^\top H\hat u` is recorded).
    steps : int >= 1
        Number of SGD steps T.
    chains : int >= 1
        Number of independent chains (each with its own random stream).
    kernels : averaging kernel or sequence of them
        ``Last()``, ``EMA(a)``, ``TwoPoint(delta)``, ``NPoint(n, delta)``, ``SWA(window)``,
        ``Kernel(weights)``; all tracked online for every chain (see the module docstring for memory).
    lr : None, float or (steps,) array
        None: ``m.lr``. An array gives the lr of each step (step t maps :math:`u_t\to u_{t+1}`);
        every value must be stable for ``m`` (0 < lr < ``m.lr_bound``).
    u0 : (d,) array, optional
        Start of every chain (default ones); times t < 0 count as sitting at u0.
    record_every : int in [1, steps]
        Spacing of the records (steps); see :attr:`SimulationResult.times`.
    seed : int in [0, 2**64) or None
        Seed of the per-chain streams (None: fresh entropy; the seed used is in the result).
    dtype : float32 or float64
        Storage of states and trackers (arithmetic inside a step is float64; losses are float64).
    method : "step" or "exact"
        "step": every step simulated. "exact": exact Gaussian transitions between event times
        (module docstring); same law as "step", cost independent of ``steps``.
    per_chain_loss : bool
        Also return ``chain_loss`` (n_kernels, chains, n_records).
    record_states : None, int or sequence of int
        Chains whose averaged iterates are stored at every record (an int n: chains 0..n-1).
    progress : bool
        Show a tqdm progress bar (default off).
    memory_limit : float
        Bytes allowed for the accumulator slots of finite kernels (ValueError beyond).

    Returns
    -------
    SimulationResult with ``times`` (R,), ``loss`` (K, R), ``loss_std`` (K, R), ``final`` (K, chains, d)...

    Raises ValueError naming the offending argument for steps < 1, chains < 1, an lr array of the
    wrong length, an unstable lr, an unknown method, record_every < 1 or > steps, a dtype other than
    float32/float64, or trackers that would not fit in memory_limit.
    """
    (steps, chains, kernels, lr_arr, lr_out, u0, record_every, seed, dt, method,
     memory_limit) = _validate(m, steps, chains, kernels, lr, u0, record_every, seed, dtype, method,
                               memory_limit)
    H = np.array(m.loss_matrix(), dtype=np.float64, order="C")  # writable C copy: one Numba specialization
    sel = _selection(record_states, chains)
    times = record_times(steps, record_every)
    d = m.dim
    mom = m.momentum != 0.0
    plan = _plan(kernels, times, method, chains, d, dt.itemsize, memory_limit, record_every, mom)
    K = len(kernels)
    R = times.size
    out = dict(
        mean=np.zeros((K, R)), std=np.zeros((K, R)),
        final=np.zeros((K, chains, d), dtype=dt),
        chain_loss=np.zeros((K, chains, R)) if per_chain_loss else None,
        states=np.zeros((K, sel.size, R, d), dtype=dt),
        sel=np.full(chains, -1, np.int64),
    )
    out["sel"][sel] = np.arange(sel.size)
    rng = _stream_states(seed, chains)
    ctx = dict(m=m, H=H, u0=u0, lr=lr_arr, times=times, plan=plan, dt=dt, chains=chains, d=d,
               K=K, rng=rng, out=out, progress=progress, steps=steps, seg=_segment_steps)
    if method == "step":
        _run_step(ctx)
    else:
        _run_exact(ctx)
    return SimulationResult(
        times=times, loss=out["mean"], loss_std=out["std"], final=out["final"], kernels=kernels,
        steps=steps, chains=chains, dim=d, seed=seed, method=method, dtype=dt, lr=lr_out,
        chain_loss=out["chain_loss"], states=out["states"] if sel.size else None,
        state_chains=sel if sel.size else None)


# =============================================================================================
# Shared bookkeeping
# =============================================================================================
def _bar(ctx, total, unit):
    if not ctx["progress"]:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=f"simulate[{ctx['m'].dim}d x {ctx['chains']}]")


def _seg_rec_cap(ctx):
    return max(1, _SEG_LOSS_BYTES // (8 * ctx["K"] * ctx["chains"]))


def _reduce(ctx, chain_loss_seg, r0, nr):
    """Mean/std over chains of the segment's records r0..r0+nr-1; optional per-chain copy."""
    out = ctx["out"]
    nb.chain_mean_std(chain_loss_seg, nr, out["mean"], out["std"], r0)
    if out["chain_loss"] is not None:
        out["chain_loss"][:, :, r0:r0 + nr] = np.swapaxes(chain_loss_seg[:, :nr, :], 1, 2)


@contextmanager
def _threads_for(work):
    """One Numba thread for small calls (bit-identical results either way)."""
    if work >= _PARALLEL_MIN_WORK:
        yield
        return
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def _init_slots(ctx, acc):
    plan = ctx["plan"]
    u0 = ctx["u0"]
    for slot, w in _init0(plan, ctx["times"]):
        acc[:, slot, :] = float(w) * u0


def _dense_path(m) -> str:
    if m.diagonal:
        return "diag"
    return "numba" if m.dim <= _DENSE_NUMBA_MAX_D else "blas"


# =============================================================================================
# method="step"
# =============================================================================================
def _run_step(ctx):
    m, plan, dt = ctx["m"], ctx["plan"], ctx["dt"]
    C, d, K, steps, times = ctx["chains"], ctx["d"], ctx["K"], ctx["steps"], ctx["times"]
    R = times.size
    mom = m.momentum != 0.0
    u = np.empty((C, d), dtype=dt)
    u[:] = ctx["u0"]
    b = np.zeros((C, d if mom else 0), dtype=dt)
    m_ema = plan.ema_a.size
    ema = np.empty((C, m_ema, d), dtype=dt)
    ema[:] = ctx["u0"]
    acc = np.zeros((C, plan.n_slots, d), dtype=dt)
    _init_slots(ctx, acc)
    path = _dense_path(m)
    # segment length (steps): bounded loss buffer, bounded event list, progress granularity
    rec_every = int(times[0])
    seg = min(steps, _seg_rec_cap(ctx) * rec_every,
              max(1, int(_SEG_EVENTS / _events_per_step(plan, R, steps))))
    if ctx["progress"]:
        seg = min(seg, max(1, _SEG_WORK_PROGRESS // (C * d)))
    if ctx["seg"] is not None:
        seg = int(ctx["seg"])
    bar = _bar(ctx, steps, "step")
    try:
        t0 = 0
        while t0 < steps:
            t1 = min(steps, t0 + seg)
            _step_segment(ctx, path, t0, t1, u, b, ema, acc)
            if bar is not None:
                bar.update(t1 - t0)
            t0 = t1
    finally:
        if bar is not None:
            bar.close()


def _step_segment(ctx, path, t0, t1, u, b, ema, acc):
    m, plan, out, times = ctx["m"], ctx["plan"], ctx["out"], ctx["times"]
    C, d, K = ctx["chains"], ctx["d"], ctx["K"]
    ra = int(np.searchsorted(times, t0, side="right"))
    rb = int(np.searchsorted(times, t1, side="right"))
    nr = rb - ra
    nsteps = t1 - t0
    rec_local = np.full(nsteps, -1, np.int64)
    rec_global = np.full(nsteps, -1, np.int64)
    rec_local[times[ra:rb] - t0 - 1] = np.arange(nr)
    rec_global[times[ra:rb] - t0 - 1] = np.arange(ra, rb)
    ev_ptr, ev_slot, ev_w, ev_init = _step_events(plan, times, t0, t1)
    chain_loss = np.zeros((K, max(nr, 1), C))
    lr = np.ascontiguousarray(ctx["lr"][t0:t1])
    u0 = ctx["u0"]
    last = times.size - 1
    if path in ("diag", "numba"):
        if path == "diag":
            omega, Om = np.array(m.omega, np.float64, order="C"), np.zeros((1, 1))
            h, H = ctx["H"], np.zeros((1, 1))
        else:
            omega, Om = np.zeros(1), np.array(m.omega, np.float64, order="C")
            h, H = np.zeros(1), ctx["H"]
        with _threads_for(C * (d * d if path == "numba" else d) * nsteps):
            nb.step_chains(ctx["rng"], u, b, ema, acc, omega, Om, path == "numba", h, H, u0, lr,
                           float(m.momentum), plan.ema_a, ev_ptr, ev_slot, ev_w, ev_init,
                           rec_local, rec_global, plan.k_type, plan.k_idx, plan.k_nslots,
                           chain_loss, out["sel"], out["states"], out["final"], last)
    else:
        OmT = np.ascontiguousarray(np.asarray(m.omega, np.float64).T, dtype=u.dtype)
        G = np.empty((C, d), dtype=u.dtype)
        beta = float(m.momentum)
        # This path alternates a multi-threaded BLAS call with O(chains d) work every step; Numba's
        # own thread pool (OpenMP spin-waiting) would fight OpenBLAS's for the cores, so the normals
        # and the update run on this thread (the matmul dominates: BLAS-bound).
        Z = np.empty((C, d))
        for tl in range(nsteps):
            with _threads_for(0):
                nb.fill_normals(ctx["rng"], Z)
            np.matmul(u, OmT, out=G)
            nb.update_dense(u, b, ema, acc, G, Z, 0, u0, float(lr[tl]), beta, plan.ema_a,
                            int(ev_ptr[tl]), int(ev_ptr[tl + 1]), ev_slot, ev_w, ev_init)
            rl = rec_local[tl]
            if rl >= 0:
                rg = int(rec_global[tl])
                _record_dense(ctx, _step_sources(plan, u, ema, acc, rg), int(rl), rg, chain_loss)
    if nr:
        _reduce(ctx, chain_loss, ra, nr)


def _record_dense(ctx, sources, rl, rg, chain_loss):
    """Records of the BLAS dense paths: loss 0.5 x^T H x by one matmul per kernel (rows are chains).

    sources: list of K arrays (chains, d), the averaged iterate of each kernel.
    """
    out, H = ctx["out"], ctx["H"]
    sel = out["sel"]
    picked = np.flatnonzero(sel >= 0)
    for k, src in enumerate(sources):
        x = np.asarray(src, dtype=np.float64)
        chain_loss[k, rl, :] = 0.5 * np.einsum("ij,ij->i", x @ H, x)
        if picked.size:
            out["states"][k, sel[picked], rg, :] = src[picked]
        if rg == ctx["times"].size - 1:
            out["final"][k] = src


def _step_sources(plan, u, ema, acc, rg):
    src = []
    for k in range(plan.k_type.size):
        kt = plan.k_type[k]
        if kt == 0:
            src.append(u)
        elif kt == 1:
            src.append(ema[:, plan.k_idx[k], :])
        else:
            src.append(acc[:, plan.k_idx[k] + rg % plan.k_nslots[k], :])
    return src


# =============================================================================================
# method="exact"
# =============================================================================================
def one_step_matrices(m, lr: float, ema_a, has_S: bool):
    r"""One-step matrices (M, N) of the augmented state :math:`z = (u, [b], e^{(1..m)}, [S])`.

    :math:`z_{t+1} = M z_t + N\xi_t`, with (blocks; :math:`G = I - \lambda\Omega`):
    :math:`u' = Gu - \lambda\beta b + \lambda\xi`, :math:`b' = \Omega u + \beta b - \xi`,
    :math:`e_j' = a_j(Gu - \lambda\beta b + \lambda\xi) + (1-a_j)e_j`,
    :math:`S' = S + Gu - \lambda\beta b + \lambda\xi`.

    Diagonal omega: M (d, p, p), N (d, p) (one small system per coordinate); dense: M (pd, pd),
    N (pd, d) with the blocks in the order above. p = 1 + [momentum] + m + [S].
    """
    beta = float(m.momentum)
    mom = beta != 0.0
    ema_a = np.asarray(ema_a, dtype=np.float64)
    ne = ema_a.size
    p = 1 + int(mom) + ne + int(has_S)
    ib = 1
    ie = 1 + int(mom)
    iS = p - 1
    d = m.dim
    if m.diagonal:
        om = np.asarray(m.omega, np.float64)
        G = 1.0 - lr * om
        M = np.zeros((d, p, p))
        N = np.zeros((d, p))
        rows_u = [0] + list(range(ie, ie + ne)) + ([iS] if has_S else [])
        scale = [1.0] + list(ema_a) + ([1.0] if has_S else [])
        for r, a in zip(rows_u, scale):
            M[:, r, 0] = a * G
            if mom:
                M[:, r, ib] = -a * lr * beta
            N[:, r] = a * lr
        for j, a in enumerate(ema_a):
            M[:, ie + j, ie + j] = 1.0 - a
        if has_S:
            M[:, iS, iS] = 1.0
        if mom:
            M[:, ib, 0] = om
            M[:, ib, ib] = beta
            N[:, ib] = -1.0
        return M, N
    om = np.asarray(m.omega, np.float64)
    I = np.eye(d)
    G = I - lr * om
    M = np.zeros((p * d, p * d))
    N = np.zeros((p * d, d))

    def blk(i, j):
        return slice(i * d, (i + 1) * d), slice(j * d, (j + 1) * d)

    rows_u = [0] + list(range(ie, ie + ne)) + ([iS] if has_S else [])
    scale = [1.0] + list(ema_a) + ([1.0] if has_S else [])
    for r, a in zip(rows_u, scale):
        M[blk(r, 0)] = a * G
        if mom:
            M[blk(r, ib)] = -a * lr * beta * I
        N[r * d:(r + 1) * d] = a * lr * I
    for j, a in enumerate(ema_a):
        M[blk(ie + j, ie + j)] = (1.0 - a) * I
    if has_S:
        M[blk(iS, iS)] = I
    if mom:
        M[blk(ib, 0)] = om
        M[blk(ib, ib)] = beta * I
        N[ib * d:(ib + 1) * d] = -I
    return M, N


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


def exact_schedule(plan: _Plan, times, lr, steps):
    """Event times and events of method="exact".

    Returns dict: E (n_int,) event times (> 0, sorted); gap (n_int,); lr_int (n_int,) the lr of each
    interval (E[i-1], E[i]]; events sorted by (interval, INIT first): ev_int, ev_kind (0 INIT,
    1 ADD w*u, 2 ADD w*S), ev_slot, ev_w.
    """
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
            t = (times[:, None] - sp.s * np.arange(sp.n)[None, :])[:, sp.w != 0.0]
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
        ev.append((np.searchsorted(E, ti[m1]), np.zeros(int(m1.sum()), np.int64), slot[m1],
                   _neg_weight(sp, times[m1])))
        if sp.block:
            # every interval (E[i-1], E[i]] inside (max(tau - W, 0), tau] adds w * S
            lo = np.searchsorted(E, np.maximum(times - sp.n, 0), side="right")
            hi = np.searchsorted(E, times, side="right")
            cnt = hi - lo
            rep = np.repeat(r, cnt)
            ii = lo[rep] + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
            ev.append((ii, np.full(ii.size, 2, np.int64), slot[rep], np.full(ii.size, sp.w[0])))
        else:
            jj = np.flatnonzero(sp.w != 0.0)
            t = times[:, None] - sp.s * jj[None, :]
            mask = t >= 1
            rr = np.broadcast_to(r[:, None], t.shape)[mask]
            ev.append((np.searchsorted(E, t[mask]), np.ones(int(mask.sum()), np.int64), slot[rr],
                       np.broadcast_to(sp.w[jj][None, :], t.shape)[mask]))
    if ev:
        ev_int = np.concatenate([e[0] for e in ev]).astype(np.int64)
        ev_kind = np.concatenate([e[1] for e in ev]).astype(np.int64)
        ev_slot = np.concatenate([e[2] for e in ev]).astype(np.int64)
        ev_w = np.concatenate([np.asarray(e[3], np.float64) for e in ev])
    else:
        ev_int = ev_kind = ev_slot = np.zeros(0, np.int64)
        ev_w = np.zeros(0)
    order = np.lexsort((ev_kind != 0, ev_int))
    return dict(E=E, gap=gap, lr_int=lr_int, ev_int=ev_int[order], ev_kind=ev_kind[order],
                ev_slot=ev_slot[order], ev_w=ev_w[order])


def exact_transitions(m, plan: _Plan, sched):
    """Distinct (gap, lr) transitions: tr_id (n_int,), A and L stacks, p, has_S."""
    has_S = any(sp.block for sp in plan.specs)
    key = np.stack([sched["gap"].astype(np.float64), sched["lr_int"]], axis=1)
    uniq, tr_id = np.unique(key, axis=0, return_inverse=True)
    As, Ls = [], []
    for k, lr in uniq:
        M, N = one_step_matrices(m, float(lr), plan.ema_a, has_S)
        A, Q = k_step_transition(M, N, int(k))
        As.append(A)
        Ls.append(sqrt_psd(Q))
    return np.asarray(tr_id, np.int64).ravel(), np.stack(As), np.stack(Ls), has_S


def _run_exact(ctx):
    m, plan, dt, times = ctx["m"], ctx["plan"], ctx["dt"], ctx["times"]
    C, d, K = ctx["chains"], ctx["d"], ctx["K"]
    sched = exact_schedule(plan, times, ctx["lr"], ctx["steps"])
    tr_id, A, L, has_S = exact_transitions(m, plan, sched)
    p = A.shape[-1] if m.diagonal else A.shape[-1] // d
    n_int = tr_id.size
    acc = np.zeros((C, plan.n_slots, d), dtype=dt)
    _init_slots(ctx, acc)
    u0 = ctx["u0"]
    E = sched["E"]
    rec_int = np.searchsorted(E, times)  # interval index of each record
    # segment the intervals so that the chain-loss buffer stays bounded (boundaries at event times:
    # the draws do not depend on the segmentation)
    cap = _seg_rec_cap(ctx)
    if ctx["seg"] is not None:
        cap = max(1, int(ctx["seg"]))
    bounds = [0]
    for r_end in range(cap, times.size, cap):
        bounds.append(int(rec_int[r_end - 1]) + 1)
    bounds.append(n_int)
    ev_ptr_all = np.searchsorted(sched["ev_int"], np.arange(n_int + 1), side="left").astype(np.int64)
    bar = _bar(ctx, n_int, "event")
    out = ctx["out"]
    if m.diagonal:
        X = np.zeros((C, d, p), dtype=dt)
        X[:, :, 0] = u0
        for j in range(plan.ema_a.size):
            X[:, :, 1 + int(m.momentum != 0.0) + j] = u0
    else:
        X = np.zeros((C, p * d), dtype=dt)
        X[:, :d] = u0
        ie = 1 + int(m.momentum != 0.0)
        for j in range(plan.ema_a.size):
            X[:, (ie + j) * d:(ie + j + 1) * d] = u0
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
            rec_local = np.full(i1 - i0, -1, np.int64)
            rec_global = np.full(i1 - i0, -1, np.int64)
            rec_local[rec_int[ra:rb] - i0] = np.arange(nr)
            rec_global[rec_int[ra:rb] - i0] = np.arange(ra, rb)
            chain_loss = np.zeros((K, max(nr, 1), C))
            e0, e1 = int(ev_ptr_all[i0]), int(ev_ptr_all[i1])
            ev_ptr = ev_ptr_all[i0:i1 + 1] - e0
            ev_kind = np.ascontiguousarray(sched["ev_kind"][e0:e1])
            ev_slot = np.ascontiguousarray(sched["ev_slot"][e0:e1])
            ev_w = np.ascontiguousarray(sched["ev_w"][e0:e1])
            if m.diagonal:
                with _threads_for(C * d * p * p * (i1 - i0)):
                    nb.exact_chains(ctx["rng"], X, acc, A, L, np.ascontiguousarray(tr_id[i0:i1]), has_S,
                                    u0, ctx["H"], ev_ptr, ev_kind, ev_slot, ev_w, rec_local, rec_global,
                                    plan.k_type, plan.k_idx, plan.k_nslots, chain_loss, out["sel"],
                                    out["states"], out["final"], times.size - 1)
            else:
                for it in range(i0, i1):
                    with _threads_for(0):  # alternates with BLAS: see the dense step path
                        nb.fill_normals(ctx["rng"], Z)
                    if has_S:
                        X[:, (p - 1) * d:] = 0.0
                    tr = tr_id[it]
                    X[:] = X @ At[tr] + Z.astype(dt, copy=False) @ Lt[tr]
                    for e in range(ev_ptr_all[it], ev_ptr_all[it + 1]):
                        kind = sched["ev_kind"][e]
                        row = acc[:, sched["ev_slot"][e], :]
                        w = sched["ev_w"][e]
                        if kind == 0:
                            row[:] = w * u0
                        elif kind == 1:
                            row += (w * X[:, :d]).astype(dt, copy=False)
                        else:
                            row += (w * X[:, (p - 1) * d:]).astype(dt, copy=False)
                    rl = rec_local[it - i0]
                    if rl >= 0:
                        rg = int(rec_global[it - i0])
                        src = []
                        for k in range(K):
                            kt = plan.k_type[k]
                            if kt == 2:
                                src.append(acc[:, plan.k_idx[k] + rg % plan.k_nslots[k], :])
                            else:
                                comp = 0 if kt == 0 else int(plan.k_idx[k])
                                src.append(X[:, comp * d:(comp + 1) * d])
                        _record_dense(ctx, src, int(rl), rg, chain_loss)
            if nr:
                _reduce(ctx, chain_loss, ra, nr)
            if bar is not None:
                bar.update(i1 - i0)
    finally:
        if bar is not None:
            bar.close()
