r"""Compile options and the argument groups shared by the compiled loops (:mod:`._step`, :mod:`._exact`).

Every compiled function of the simulator is decorated with one of the three decorators below, so that
the cache and floating-point settings are stated once:

* :data:`jit` -- ``cache=True`` (compiled code kept on disk next to the module), ``fastmath=False``
  (IEEE semantics, no reassociation: the arithmetic order of the source is the arithmetic order of the
  machine code, which is what makes results bit-identical across thread counts and segmentations);
* :data:`jit_parallel` -- the same with ``parallel=True`` (``prange`` over chains);
* :data:`jit_inline` -- helpers inlined into their callers at the Numba IR level (``inline="always"``),
  never called from Python.

Related arrays travel together as NamedTuples (Numba passes a NamedTuple of arrays and scalars as one
struct; field access is free), built once per segment by the Python runners:

* :class:`Records` -- where each local step / interval records, and how each kernel is read (the
  plan's type codes);
* :class:`Outputs` -- what a record writes (per-chain losses of the segment, selected states, finals).

The NamedTuples of one method (:class:`~._step.State`, :class:`~._step.Model`, ...) live in its module.
Nothing here validates input; :mod:`quadsgd.simulation` is the Python layer.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit

#: options of every compiled simulator function: on-disk cache, strict IEEE arithmetic (no fastmath)
OPTIONS = dict(cache=True, fastmath=False)

#: ``@jit``: a compiled, cached function
jit = functools.partial(njit, **OPTIONS)
#: ``@jit_parallel``: the same, with ``prange`` loops run on Numba's thread pool
jit_parallel = functools.partial(njit, parallel=True, **OPTIONS)
#: ``@jit_inline``: a helper inlined into its compiled callers (not cached on its own)
jit_inline = functools.partial(njit, inline="always", fastmath=False)


class Records(NamedTuple):
    """Record bookkeeping of one segment (n = its number of steps / intervals) and of the kernel plan."""

    local: np.ndarray     # (n,) int64: row in Outputs.chain_loss recorded at the end of local step/interval, or -1
    global_: np.ndarray   # (n,) int64: global record index at the same place, or -1
    k_type: np.ndarray    # (K,) int64: type code of kernel k (plan.LAST 0, plan.GEOMETRIC 1, plan.SLOTS 2)
    k_idx: np.ndarray     # (K,) int64: EMA index (step) / state component (exact) / first accumulator slot
    k_nslots: np.ndarray  # (K,) int64: number of round-robin slots of kernel k (1 unless SLOTS)


class Outputs(NamedTuple):
    """Where records are written (the run's arrays, except ``chain_loss``: the segment's buffer)."""

    chain_loss: np.ndarray  # (K, n_rec_seg, chains) float64: per-chain loss of the segment's records
    sel: np.ndarray         # (chains,) int64: row of chain c in ``states``, or -1 (not recorded)
    states: np.ndarray      # (K, n_sel, R, d) state dtype: averaged iterates of the selected chains
    final: np.ndarray       # (K, chains, d) state dtype: averaged iterates at the last record
    last: int               # index of the last record (R - 1): the record that fills ``final``


# ---------------------------------------------------------------------------------------------
# Reductions over chains (deterministic: a fixed serial order per output)
# ---------------------------------------------------------------------------------------------
@jit
def chain_mean_std(chain_loss, n_rec, mean_out, std_out, offset):
    """mean and std (ddof=1; 0 for one chain) over chains of chain_loss[k, r, :] for r < n_rec.

    Two passes in chain order; written to mean_out[k, offset + r], std_out[k, offset + r].
    """
    K = chain_loss.shape[0]
    C = chain_loss.shape[2]
    for kr in range(K * n_rec):
        k = kr // n_rec
        r = kr % n_rec
        row = chain_loss[k, r]
        s = 0.0
        for c in range(C):
            s += row[c]
        mu = s / C
        v = 0.0
        for c in range(C):
            dv = row[c] - mu
            v += dv * dv
        mean_out[k, offset + r] = mu
        std_out[k, offset + r] = math.sqrt(v / (C - 1)) if C > 1 else 0.0
