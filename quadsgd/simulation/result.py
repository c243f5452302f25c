"""The result of :func:`quadsgd.simulate` (a frozen dataclass of arrays; computing and saving stay apart)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..kernels import AveragingKernel

__all__ = ["SimulationResult"]


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
