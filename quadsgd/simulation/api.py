r"""The entry point :func:`simulate`: arguments validated into a :class:`SimConfig`, then dispatched.

``simulate(...)`` -> :func:`_validate` (a frozen :class:`SimConfig`, or a ValueError naming the argument
and its allowed range) -> :func:`~quadsgd.simulation.plan.make_plan` (how each kernel is tracked;
ValueError when the trackers exceed ``memory_limit``) -> a :class:`~quadsgd.simulation.runtime.Job` ->
:func:`~quadsgd.simulation.step.run_step` or :func:`~quadsgd.simulation.exact.run_exact` ->
:class:`~quadsgd.simulation.result.SimulationResult`.

Also here: :func:`record_times` (the record grid) and :func:`draw_normals` (the normals a chain's
stream produces, for the numpy twins in :mod:`quadsgd.simulation._reference`).
"""
from __future__ import annotations

import numpy as np

from sgdtraj.arguments import (
    check_array,
    check_bool,
    check_choice,
    check_dtype,
    check_int,
    check_lr_schedule,
    check_real,
    check_seed,
    check_size,
)

from ..kernels import AveragingKernel, Last
from ..model import LinearModel
from . import _rng
from .exact import run_exact
from .plan import make_plan
from .result import SimulationResult
from .runtime import Job, RunOutputs, threads_for
from .simconfig import SimConfig
from .step import run_step

__all__ = ["simulate", "SimConfig", "draw_normals", "record_times"]

_METHODS = ("step", "exact")
_RUNNERS = {"step": run_step, "exact": run_exact}


def record_times(steps: int, record_every: int) -> np.ndarray:
    """Record times: record_every, 2*record_every, ... <= steps, plus steps itself; (n_records,) int64."""
    t = np.arange(record_every, steps + 1, record_every, dtype=np.int64)
    if t.size == 0 or t[-1] != steps:
        t = np.append(t, np.int64(steps))
    return t


def _stream_states(seed: int, chains: int) -> np.ndarray:
    return _rng.chain_states(np.uint64(seed), chains)


def draw_normals(seed: int, chains: int, count: int) -> np.ndarray:
    """The first ``count`` standard normals of each chain's stream for ``seed``; shape (chains, count) float64.

    :func:`simulate` with ``method="step"`` consumes, per chain, d normals per step in coordinate
    order: ``draw_normals(seed, C, steps * d).reshape(C, steps, d)[:, t, i]`` is :math:`\\xi_{t,i}`.
    """
    seed = check_seed(seed)
    chains = check_int("chains", chains, 1)
    count = check_int("count", count, 0)
    rng = _stream_states(seed, chains)
    out = np.empty((chains, count))
    with threads_for(out.size):
        _rng.fill_normals(rng, out)
    return out


# =============================================================================================
# Validation
# =============================================================================================
def _kernels(kernels) -> tuple:
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
    return kernels


def _lr(m, lr, steps):
    """(lr of every step (steps,), lr as reported): every value finite, in [0, m.lr_bound) (the shared rule
    :func:`sgdtraj.arguments.check_lr_schedule`, as in ``expected_loss``)."""
    if lr is None:
        return np.full(steps, m.lr), m.lr
    lr_arr, scalar = check_lr_schedule(lr, steps, m.lr_bound)
    if scalar:
        return lr_arr, float(lr_arr[0])
    lr_out = lr_arr.copy()
    lr_out.setflags(write=False)
    return lr_arr, lr_out


def _selection(record_states, chains) -> np.ndarray:
    if record_states is None:
        return np.zeros(0, np.int64)
    what = "record_states must be None, a number of chains or a sequence of chain indices"
    if isinstance(record_states, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{what}, got {record_states!r}")
    if isinstance(record_states, (int, np.integer)):
        n = int(record_states)
        if not 0 <= n <= chains:
            raise ValueError(f"record_states must be in [0, chains={chains}], got {n}")
        return np.arange(n, dtype=np.int64)
    try:
        raw = np.asarray(record_states)
    except (TypeError, ValueError):
        raise ValueError(f"{what}, got {type(record_states).__name__}") from None
    if raw.size and raw.dtype.kind not in "iu":
        raise ValueError(f"{what} (integers), got an array of dtype {raw.dtype}")
    idx = raw.astype(np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= chains):
        raise ValueError(f"record_states indices must be in [0, {chains}), got {idx.tolist()}")
    if np.unique(idx).size != idx.size:
        raise ValueError("record_states indices must be distinct")
    return idx


def _memory_limit(memory_limit) -> float:
    return check_real("memory_limit", memory_limit, 0.0, low_open=True)


def _validate(m, steps, chains, kernels, lr, u0, record_every, seed, dtype, method, memory_limit, *,
              per_chain_loss=False, record_states=None, progress=False, segment_steps=None) -> SimConfig:
    if not isinstance(m, LinearModel):
        raise ValueError(f"m must be a qs.LinearModel, got {type(m).__name__}")
    steps = check_int("steps", steps, 1)
    check_size("steps", steps, "the per-step learning rates")
    chains = check_int("chains", chains, 1)
    method = check_choice("method", method, _METHODS)
    record_every = check_int("record_every", record_every, 1, steps)
    dt = check_dtype(dtype)
    seed = check_seed(seed)
    kernels = _kernels(kernels)
    d = m.dim
    u0 = np.ones(d) if u0 is None else check_array("u0", u0, shape=(d,))
    lr_arr, lr_out = _lr(m, lr, steps)
    memory_limit = _memory_limit(memory_limit)
    per_chain_loss = check_bool("per_chain_loss", per_chain_loss)
    sel = _selection(record_states, chains)
    n_rec = steps // record_every + 1
    K = len(kernels)
    check_size("steps / record_every", float(n_rec) * K, "the recorded losses (kernels x records)",
               hint="raise record_every")
    if per_chain_loss:
        check_size("per_chain_loss", float(n_rec) * K * chains, "the per-chain losses (kernels x chains x records)",
                   hint="raise record_every or use fewer chains")
    check_size("record_states", float(n_rec) * K * sel.size * d, "the stored averaged iterates "
               "(kernels x selected chains x records x d)", hint="select fewer chains or raise record_every")
    return SimConfig(m=m, steps=steps, chains=chains, kernels=kernels, lr=lr_arr, lr_out=lr_out, u0=u0,
                     record_every=record_every, seed=seed, dtype=dt, method=method, memory_limit=memory_limit,
                     per_chain_loss=per_chain_loss, state_chains=sel, progress=check_bool("progress", progress),
                     segment_steps=segment_steps)


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
        ``Kernel(weights)``, or any kernel whose ``tracking()`` is last / geometric / points; all tracked
        online for every chain (see :mod:`quadsgd.simulation.plan` for memory).
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
        (:mod:`quadsgd.simulation.exact`); same law as "step", cost independent of ``steps``.
    per_chain_loss : bool
        Also return ``chain_loss`` (n_kernels, chains, n_records).
    record_states : None, int or sequence of int
        Chains whose averaged iterates are stored at every record (an int n: chains 0..n-1).
    progress : bool
        Show a tqdm progress bar (default off).
    memory_limit : float > 0
        Bytes allowed for the accumulator slots of finite kernels (ValueError beyond, naming
        ``record_every`` and the kernel).

    Returns
    -------
    SimulationResult with ``times`` (R,), ``loss`` (K, R), ``loss_std`` (K, R), ``final`` (K, chains, d)...

    Raises ValueError naming the offending argument for steps < 1, chains < 1, an lr array of the
    wrong length, an unstable lr, an unknown method, record_every < 1 or > steps, a dtype other than
    float32/float64, strings / booleans / NaN where numbers are expected (the rules of
    :mod:`sgdtraj.arguments`), outputs (records, per-chain losses, stored states) beyond 2 GiB, or
    trackers that would not fit in memory_limit. Kernels of any support cost O(1) per accumulator slot
    (SWA, TwoPoint and NPoint keep no weight arrays beyond 1e6 points; only points at lags < steps are
    ever visited).
    """
    cfg = _validate(m, steps, chains, kernels, lr, u0, record_every, seed, dtype, method, memory_limit,
                    per_chain_loss=per_chain_loss, record_states=record_states, progress=progress,
                    segment_steps=_segment_steps)
    H = np.array(m.loss_matrix(), dtype=np.float64, order="C")  # writable C copy: one Numba specialization
    times = record_times(cfg.steps, cfg.record_every)
    d = m.dim
    plan = make_plan(cfg.kernels, times, cfg.method, cfg.chains, d, cfg.dtype.itemsize, cfg.memory_limit,
                     cfg.record_every, m.momentum != 0.0)
    out = RunOutputs.allocate(len(cfg.kernels), times.size, cfg.chains, d, cfg.dtype, cfg.per_chain_loss,
                              cfg.state_chains)
    job = Job(cfg=cfg, H=H, times=times, plan=plan, rng=_stream_states(cfg.seed, cfg.chains), out=out)
    _RUNNERS[cfg.method](job)
    sel = cfg.state_chains
    return SimulationResult(
        times=times, loss=out.mean, loss_std=out.std, final=out.final, kernels=cfg.kernels,
        steps=cfg.steps, chains=cfg.chains, dim=d, seed=cfg.seed, method=cfg.method, dtype=cfg.dtype,
        lr=cfg.lr_out, chain_loss=out.chain_loss, states=out.states if sel.size else None,
        state_chains=sel if sel.size else None)
