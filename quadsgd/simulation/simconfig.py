"""The validated arguments of one :func:`quadsgd.simulate` call (shared by the API and the runners)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import LinearModel

__all__ = ["SimConfig"]


@dataclass(frozen=True, eq=False)
class SimConfig:
    """The validated arguments of :func:`simulate`."""

    m: LinearModel
    steps: int                  # number of SGD steps T >= 1
    chains: int                 # number of independent chains >= 1
    kernels: tuple              # averaging kernels (AveragingKernel instances), in result order
    lr: np.ndarray              # (steps,) float64: lr of every step (all stable for m)
    lr_out: object              # lr as reported in the result: float, or read-only (steps,) array
    u0: np.ndarray              # (d,) float64 start of every chain
    record_every: int           # record spacing, in [1, steps]
    seed: int                   # stream seed in [0, 2**64)
    dtype: np.dtype             # float32 or float64 storage of states and trackers
    method: str                 # "step" or "exact"
    memory_limit: float         # bytes allowed for the accumulator slots (> 0)
    per_chain_loss: bool        # also return the per-chain losses
    state_chains: np.ndarray    # (n_sel,) int64 distinct chains whose averaged iterates are stored
    progress: bool              # show a tqdm bar
    segment_steps: int | None   # testing hook: fixed segment length (step) / records per segment (exact)
