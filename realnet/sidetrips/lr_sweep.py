r"""``lr-sweep`` (Fig. 2, 12, 13): one step ``theta - lr * d`` from ``S`` for ``lr`` on a log grid, ``d``
the gradient of the training batch at ``S`` (``direction=grad``; ``sgd``: the momentum update with
weight decay that the optimizer would apply), with ``batch_size`` selectable.

Outputs (:class:`LrSweepResult`):

* ``lr_sweep.csv`` (:class:`LrSweepCurve`): ``lr`` (first row ``0`` = start point), ``train_loss`` (the batch
  ``d`` was computed on), ``heldout_mean``, ``heldout_std``, ``heldout_min``, ``heldout_max`` (over the
  held-out batches).
* ``lr_sweep_heldout.csv`` (:class:`LrSweepHeldout`): ``lr``, ``batch``, ``loss`` -- every held-out batch
  separately (``result.heldout_losses``: the (n_lr, n_batches) matrix).
* ``summary.json``: ``train_start_loss``, ``train_min_loss``, ``best_lr_train``, ``heldout_start_loss``,
  ``heldout_min_loss``, ``best_lr_heldout``, ``train_loss_at_best_heldout_lr``,
  ``heldout_loss_at_best_train_lr``, ``heldout_to_train_min_ratio``, ``grad_norm``, ``direction_norm``,
  ``batch_size``, ``n_heldout_batches``, ``n_forward_passes``, ``wall_s``, ``batched``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..config import ConfigError, check_choice, check_int
from ._losses import BATCHED_MODES, nanargmin, row_stats, sweep_line
from ._results import SideTripResult, Table, column
from ._runner import RunContext, SideTrip, SideTripOptions, run_sidetrip

__all__ = ["LrSweepOptions", "LrSweepResult", "LrSweepCurve", "LrSweepHeldout", "lr_sweep", "SIDETRIP"]


@dataclass
class LrSweepOptions(SideTripOptions):
    batch_size: int = 0  # training/held-out batch size (0 = the run's batch size)
    lr_min: float = 1e-4  # smallest step size of the log grid
    lr_max: float = 100.0  # largest step size of the log grid
    num_lrs: int = 49  # points of the log grid (plus lr = 0)
    heldout_batches: int = 10  # fixed held-out batches (>= 10 in the paper)
    direction: str = "grad"  # grad (the batch gradient) | sgd (momentum update incl. weight decay)
    bn_mode: str = "batch"  # batch (each batch's own statistics, as in training) | running (eval mode)
    batched: str = "auto"  # auto | lr (vmap over step sizes) | batches (vmap over held-out batches) | loop
    chunk_size: int = 16  # step sizes per vmapped forward (batched=lr)

    def validate(self, step: int) -> None:
        check_choice("direction", self.direction, ("grad", "sgd"))
        check_choice("bn_mode", self.bn_mode, ("batch", "running"))
        check_int("num_lrs", self.num_lrs, 1)
        check_int("heldout_batches", self.heldout_batches, 1)
        check_int("batch_size", self.batch_size, 0)
        check_choice("batched", self.batched, BATCHED_MODES)
        if not (0 < self.lr_min <= self.lr_max and math.isfinite(self.lr_max)):
            raise ConfigError(f"need 0 < lr_min <= lr_max < inf; got lr_min={self.lr_min}, lr_max={self.lr_max}")


@dataclass(frozen=True, eq=False)
class LrSweepCurve(Table):
    """``lr_sweep.csv``: one row per step size (the first, lr = 0, is the start point)."""

    lr: np.ndarray = column("float", "step size of the single step")
    train_loss: np.ndarray = column("float", "loss of the training batch the direction was computed on")
    heldout_mean: np.ndarray = column("float", "mean loss over the held-out batches")
    heldout_std: np.ndarray = column("float", "their standard deviation")
    heldout_min: np.ndarray = column("float", "smallest held-out batch loss")
    heldout_max: np.ndarray = column("float", "largest held-out batch loss")


@dataclass(frozen=True, eq=False)
class LrSweepHeldout(Table):
    """``lr_sweep_heldout.csv``: every (step size, held-out batch) loss, step sizes outer."""

    lr: np.ndarray = column("float", "step size")
    batch: np.ndarray = column("int", "held-out batch index")
    loss: np.ndarray = column("float", "its loss after the step")


@dataclass(eq=False)
class LrSweepResult(SideTripResult):
    """Result of :func:`lr_sweep`; the summary fields are described in the module docstring."""

    NAME: ClassVar[str] = "lr-sweep"
    TABLES: ClassVar[dict[str, str]] = {"curve": "lr_sweep.csv", "heldout": "lr_sweep_heldout.csv"}

    batch_size: int
    n_heldout_batches: int
    direction: str
    bn_mode: str
    train_start_loss: float
    train_min_loss: float
    best_lr_train: float
    heldout_start_loss: float
    heldout_min_loss: float
    best_lr_heldout: float
    train_loss_at_best_heldout_lr: float
    heldout_loss_at_best_train_lr: float
    heldout_to_train_min_ratio: float | None
    grad_norm: float
    direction_norm: float
    lr_grid: list  # [lr_min, lr_max, num_lrs]
    n_forward_passes: int
    batched: str
    curve: LrSweepCurve
    heldout: LrSweepHeldout

    @property
    def heldout_losses(self) -> np.ndarray:
        """Held-out losses as a (n_lr, n_heldout_batches) matrix (rows: the step sizes of ``curve.lr``)."""
        return self.heldout.loss.reshape(len(self.curve), -1)

    @staticmethod
    def headline_of(summary):
        keys = ["train_start_loss", "train_min_loss", "best_lr_train", "heldout_start_loss", "heldout_min_loss",
                "best_lr_heldout"]
        return {k: summary[k] for k in keys}


def lr_sweep(run_dir, step: int, out_dir, options: LrSweepOptions | None = None, **overrides) -> LrSweepResult:
    """Single SGD step of many sizes from checkpoint ``step`` (Fig. 2, 12, 13); see the module docstring."""
    return run_sidetrip(SIDETRIP, run_dir, step, out_dir, options, overrides)


def _compute(ctx: RunContext, step: int, opts: LrSweepOptions) -> LrSweepResult:
    br = ctx.branch(step)
    B = opts.batch_size or ctx.cfg.batch_size
    train_batch = ctx.batch_at(step, B)
    heldout = ctx.heldout(opts.heldout_batches, B)
    lrs = np.geomspace(opts.lr_min, opts.lr_max, opts.num_lrs)
    losses, gnorm, dnorm, mode = sweep_line(ctx, br, train_batch, heldout, lrs, opts, opts.direction, opts.bn_mode,
                                            desc=f"lr-sweep step {step}")
    grid = np.concatenate([[0.0], lrs])
    tr, ho = losses[:, 0], losses[:, 1:]
    with np.errstate(invalid="ignore"):
        ho_mean = ho.mean(1)
    stats = [row_stats(ho[i]) for i in range(len(grid))]
    curve = LrSweepCurve(lr=grid, train_loss=tr, **{f"heldout_{k}": [s[k] for s in stats]
                                                    for k in ("mean", "std", "min", "max")})
    nb = ho.shape[1]
    held = LrSweepHeldout(lr=np.repeat(grid, nb), batch=np.tile(np.arange(nb), len(grid)), loss=ho.reshape(-1))
    it, ih = nanargmin(tr), nanargmin(ho_mean)
    return LrSweepResult(
        run=str(ctx.run_dir), step=step, batch_size=B, n_heldout_batches=len(heldout), direction=opts.direction,
        bn_mode=opts.bn_mode, train_start_loss=float(tr[0]), train_min_loss=float(tr[it]),
        best_lr_train=float(grid[it]), heldout_start_loss=float(ho_mean[0]), heldout_min_loss=float(ho_mean[ih]),
        best_lr_heldout=float(grid[ih]), train_loss_at_best_heldout_lr=float(tr[ih]),
        heldout_loss_at_best_train_lr=float(ho_mean[it]),
        heldout_to_train_min_ratio=float(ho_mean[ih] / tr[it]) if tr[it] > 0 else None,
        grad_norm=gnorm, direction_norm=dnorm, lr_grid=[opts.lr_min, opts.lr_max, opts.num_lrs],
        n_forward_passes=int(len(grid) * (1 + len(heldout))), batched=mode, curve=curve, heldout=held)


SIDETRIP = SideTrip(name="lr-sweep", options=LrSweepOptions, compute=_compute, result=LrSweepResult,
                    doc="single SGD steps of many sizes from a checkpoint: training vs held-out batch loss "
                        "(Fig. 2, 12, 13)", function=lr_sweep)
