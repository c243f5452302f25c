"""What both runners share: the run object (:class:`Job`), the output arrays (:class:`RunOutputs`),
segment bookkeeping, thread control and the progress bar.

A run is one :class:`Job` (the validated :class:`~quadsgd.simulation.simconfig.SimConfig`, the loss matrix, the
record times, the kernel :class:`~quadsgd.simulation.plan.Plan`, the chains' stream states and the
:class:`RunOutputs` being filled), handed to :func:`quadsgd.simulation.step.run_step` or
:func:`quadsgd.simulation.exact.run_exact`. Runs are cut into *segments* (bounded buffers, progress
granularity); a segment boundary never changes a result, because every chain owns its stream.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import _jit
from .plan import Plan, init0
from .simconfig import SimConfig

#: per-segment cap of the chain-loss buffer (bytes)
_SEG_LOSS_BYTES = 1 << 25
#: below this much work per kernel call (chain-coordinate-steps) run on one thread: waking the
#: thread pool costs more (results do not depend on the number of threads)
_PARALLEL_MIN_WORK = 1 << 18


@dataclass(frozen=True, eq=False)
class RunOutputs:
    """The arrays a run fills (K kernels, R records)."""

    mean: np.ndarray               # (K, R) float64: mean over chains of each kernel's loss
    std: np.ndarray                # (K, R) float64: std over chains (ddof=1; 0 for one chain)
    final: np.ndarray              # (K, chains, d) state dtype: averaged iterates at the last record
    chain_loss: np.ndarray | None  # (K, chains, R) float64 per-chain loss, or None (not asked)
    states: np.ndarray             # (K, n_sel, R, d) state dtype: averaged iterates of the selected chains
    sel: np.ndarray                # (chains,) int64: row of chain c in ``states``, or -1

    @classmethod
    def allocate(cls, K, R, chains, d, dtype, per_chain_loss, state_chains) -> "RunOutputs":
        sel = np.full(chains, -1, np.int64)
        sel[state_chains] = np.arange(state_chains.size)
        return cls(mean=np.zeros((K, R)), std=np.zeros((K, R)), final=np.zeros((K, chains, d), dtype=dtype),
                   chain_loss=np.zeros((K, chains, R)) if per_chain_loss else None,
                   states=np.zeros((K, state_chains.size, R, d), dtype=dtype), sel=sel)

    def compiled(self, chain_loss_seg: np.ndarray) -> _jit.Outputs:
        """The compiled loops' view: the segment's chain-loss buffer (K, n_rec_seg, chains) and these arrays."""
        return _jit.Outputs(chain_loss_seg, self.sel, self.states, self.final, self.mean.shape[1] - 1)

    def reduce(self, chain_loss_seg: np.ndarray, r0: int, nr: int) -> None:
        """Mean/std over chains of the segment's records r0..r0+nr-1; optional per-chain copy."""
        _jit.chain_mean_std(chain_loss_seg, nr, self.mean, self.std, r0)
        if self.chain_loss is not None:
            self.chain_loss[:, :, r0:r0 + nr] = np.swapaxes(chain_loss_seg[:, :nr, :], 1, 2)

    def record_dense(self, H, sources, rl: int, rg: int, chain_loss_seg) -> None:
        """Records of the BLAS dense paths: loss 0.5 x^T H x by one matmul per kernel (rows are chains).

        sources: list of K arrays (chains, d), the averaged iterate of each kernel; rl / rg: the record's
        row in the segment buffer / global index.
        """
        sel = self.sel
        picked = np.flatnonzero(sel >= 0)
        last = self.mean.shape[1] - 1
        for k, src in enumerate(sources):
            x = np.asarray(src, dtype=np.float64)
            chain_loss_seg[k, rl, :] = 0.5 * np.einsum("ij,ij->i", x @ H, x)
            if picked.size:
                self.states[k, sel[picked], rg, :] = src[picked]
            if rg == last:
                self.final[k] = src


@dataclass(frozen=True, eq=False)
class Job:
    """One simulation run: the configuration and everything derived from it."""

    cfg: SimConfig     # validated arguments of :func:`quadsgd.simulate`
    H: np.ndarray        # (d,) or (d, d) float64 loss matrix (C-contiguous, writable: one Numba specialization)
    times: np.ndarray    # (R,) int64 record times
    plan: Plan           # how each kernel is tracked
    rng: np.ndarray      # (chains, 4) uint64 stream states of the chains (advanced in place)
    out: RunOutputs      # the arrays being filled

    @property
    def K(self) -> int:
        return len(self.cfg.kernels)

    def seg_rec_cap(self) -> int:
        """Most records per segment (bounded chain-loss buffer)."""
        return max(1, _SEG_LOSS_BYTES // (8 * self.K * self.cfg.chains))

    def records(self, n: int, pos: np.ndarray, ra: int, rb: int) -> _jit.Records:
        """Records of a segment of n local steps / intervals: records ra..rb-1 fall at local ``pos``."""
        rec_local = np.full(n, -1, np.int64)
        rec_global = np.full(n, -1, np.int64)
        rec_local[pos] = np.arange(rb - ra)
        rec_global[pos] = np.arange(ra, rb)
        p = self.plan
        return _jit.Records(rec_local, rec_global, p.k_type, p.k_idx, p.k_nslots)

    def init_slots(self, acc: np.ndarray) -> None:
        """Slot INITs at time 0 (acc (chains, n_slots, d))."""
        u0 = self.cfg.u0
        for slot, w in init0(self.plan, self.times):
            acc[:, slot, :] = float(w) * u0

    def progress_bar(self, total: int, unit: str):
        """A tqdm bar when ``progress`` was asked, else None."""
        if not self.cfg.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=f"simulate[{self.cfg.m.dim}d x {self.cfg.chains}]")


@contextmanager
def threads_for(work):
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
