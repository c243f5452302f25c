r"""``fixed-batch`` (Fig. 3): from checkpoints ``S`` and ``step2``, ``gd_steps`` steps of gradient descent
on one fixed training batch (the batch at step ``S``) with learning rate ``lr`` (``None``: the best
single-step lr on that batch from ``S``); losses along ``(1-alpha) P1_j + alpha P2_j``.

Outputs (:class:`FixedBatchResult`):

* ``fixed_batch.csv`` (:class:`FixedBatchInterpolation`): ``gd_step`` j, ``alpha``, ``train_loss``,
  ``heldout_mean``, ``heldout_std``, ``heldout_min``, ``heldout_max``.
* ``fixed_batch_endpoints.csv`` (:class:`FixedBatchEndpoints`): ``gd_step``, ``checkpoint`` (S or step2),
  ``train_loss``, ``heldout_mean``, ``distance_between`` (``||P1_j - P2_j||``), ``distance_from_start``.
* ``summary.json``: ``lr``, ``gd_steps``, ``train_loss_first``/``train_loss_second`` (per j),
  ``heldout_loss_first``/``heldout_loss_second``, ``train_barrier``/``heldout_barrier`` (per j:
  max over alpha in [0, 1] minus the larger end point), ``distance_between`` (per j).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..config import ConfigError, check_choice, check_int
from ._losses import (
    BATCHED_MODES,
    batch_grad,
    batch_losses,
    functional_model,
    nanargmin,
    resolve_batched,
    row_stats,
    sweep_line,
)
from ._results import SideTripResult, Table, column
from ._runner import RunContext, SideTrip, SideTripOptions, check_lr, dist, run_sidetrip

__all__ = ["FixedBatchOptions", "FixedBatchResult", "FixedBatchInterpolation", "FixedBatchEndpoints", "fixed_batch",
           "SIDETRIP"]


@dataclass
class FixedBatchOptions(SideTripOptions):
    step2: int = -1  # the second checkpoint (required)
    gd_steps: int = 9  # gradient-descent steps on the fixed batch from each checkpoint (paper: 9)
    lr: float | None = None  # GD learning rate (None = best single-step lr on the batch from the first checkpoint)
    batch_size: int = 0  # fixed/held-out batch size (0 = the run's)
    num_alphas: int = 21  # interpolation points
    alpha_min: float = 0.0  # interpolation range start (0 = first checkpoint's point)
    alpha_max: float = 1.0  # interpolation range end (1 = second checkpoint's point)
    heldout_batches: int = 10  # fixed held-out batches
    batched: str = "auto"  # see LrSweepOptions.batched
    chunk_size: int = 16

    def validate(self, step: int) -> None:
        if self.step2 < 0:
            raise ConfigError("fixed-batch needs step2 (the second checkpoint), e.g. --step2=600")
        if self.step2 == step:
            raise ConfigError(f"step2 must differ from step ({step})")
        check_int("gd_steps", self.gd_steps, 0)
        check_int("num_alphas", self.num_alphas, 2)
        check_int("heldout_batches", self.heldout_batches, 1)
        check_int("batch_size", self.batch_size, 0)
        check_choice("batched", self.batched, BATCHED_MODES)
        check_lr(self.lr)

    def checkpoints(self, step: int) -> tuple[int, ...]:
        return (int(step), int(self.step2))


@dataclass(frozen=True, eq=False)
class FixedBatchInterpolation(Table):
    """``fixed_batch.csv``: losses along ``(1-alpha) P1_j + alpha P2_j`` for every GD step j and alpha."""

    gd_step: np.ndarray = column("int", "gradient-descent step j on the fixed batch")
    alpha: np.ndarray = column("float", "interpolation coefficient (0: from S, 1: from step2)")
    train_loss: np.ndarray = column("float", "loss of the fixed training batch")
    heldout_mean: np.ndarray = column("float", "mean loss of the held-out batches")
    heldout_std: np.ndarray = column("float", "their standard deviation")
    heldout_min: np.ndarray = column("float", "smallest held-out loss")
    heldout_max: np.ndarray = column("float", "largest held-out loss")


@dataclass(frozen=True, eq=False)
class FixedBatchEndpoints(Table):
    """``fixed_batch_endpoints.csv``: the two descents' points P1_j (checkpoint S) and P2_j (step2)."""

    gd_step: np.ndarray = column("int", "GD step j")
    checkpoint: np.ndarray = column("int", "the checkpoint the descent started from")
    train_loss: np.ndarray = column("float", "fixed-batch loss at the point")
    heldout_mean: np.ndarray = column("float", "mean held-out loss at the point")
    distance_between: np.ndarray = column("float", "||P1_j - P2_j||")
    distance_from_start: np.ndarray = column("float", "distance of the point from its descent's start")


@dataclass(eq=False)
class FixedBatchResult(SideTripResult):
    """Result of :func:`fixed_batch`; per-j arrays have gd_steps + 1 entries (j = 0 is the checkpoint)."""

    NAME: ClassVar[str] = "fixed-batch"
    TABLES: ClassVar[dict[str, str]] = {"interpolation": "fixed_batch.csv", "endpoints": "fixed_batch_endpoints.csv"}

    step2: int
    lr: float
    lr_auto: bool
    gd_steps: int
    batch_size: int
    n_heldout_batches: int
    alphas: np.ndarray
    train_loss_first: np.ndarray
    train_loss_second: np.ndarray
    heldout_loss_first: np.ndarray
    heldout_loss_second: np.ndarray
    train_barrier: np.ndarray
    heldout_barrier: np.ndarray
    distance_between: np.ndarray
    batched: str
    interpolation: FixedBatchInterpolation
    endpoints: FixedBatchEndpoints

    @staticmethod
    def headline_of(summary):
        return {"lr": summary["lr"], "train_loss_first": summary["train_loss_first"][-1],
                "train_barrier": summary["train_barrier"][-1], "heldout_barrier": summary["heldout_barrier"][-1]}


def fixed_batch(run_dir, step: int, out_dir, options: FixedBatchOptions | None = None, **overrides) -> FixedBatchResult:
    """Gradient descent on one fixed batch from two checkpoints; losses along the interpolations (Fig. 3)."""
    return run_sidetrip(SIDETRIP, run_dir, step, out_dir, options, overrides)


def _flat(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).float() for v in p.values()])


def _compute(ctx: RunContext, step: int, opts: FixedBatchOptions) -> FixedBatchResult:
    rt = ctx.rt
    br1, br2 = ctx.branch(step), ctx.branch(opts.step2)
    B = opts.batch_size or ctx.cfg.batch_size
    batch = ctx.batch_at(step, B)
    heldout = ctx.heldout(opts.heldout_batches, B)
    mode = resolve_batched(opts.batched, br1.model, rt)
    lr = opts.lr
    if lr is None:
        grid = np.geomspace(1e-3, 1e2, 31)
        losses, *_ = sweep_line(ctx, br1, batch, [], grid, dataclasses.replace(opts, batched=mode))
        lr = float(np.concatenate([[0.0], grid])[nanargmin(losses[:, 0])]) or float(grid[0])
    fmodel, _ = functional_model(br1.model, "batch")
    P = []
    for br in (br1, br2):
        p = {k: v.detach().clone() for k, v in br.model.named_parameters()}
        pts = [p]
        for _ in range(opts.gd_steps):
            _, g = batch_grad(fmodel, pts[-1], *batch, rt, plan=ctx.batch_plan(opts))
            pts.append({k: pts[-1][k] - lr * g[k] for k in p})
        P.append(pts)
    alphas = np.linspace(opts.alpha_min, opts.alpha_max, opts.num_alphas)
    if not np.any(np.isclose(alphas, 0.0)):
        alphas = np.sort(np.concatenate([alphas, [0.0]]))
    if not np.any(np.isclose(alphas, 1.0)):
        alphas = np.sort(np.concatenate([alphas, [1.0]]))
    coeffs = torch.tensor(alphas, dtype=torch.float32)
    rows, ends = [], []
    per_j = {k: [] for k in ("train_loss_first", "train_loss_second", "heldout_loss_first", "heldout_loss_second",
                             "train_barrier", "heldout_barrier", "distance_between")}
    bar = ctx.bar(opts.gd_steps + 1, "fixed-batch")
    start, start2 = _flat(P[0][0]), _flat(P[1][0])
    for j in range(opts.gd_steps + 1):
        p1, p2 = P[0][j], P[1][j]
        d = {k: p1[k] - p2[k] for k in p1}  # theta(alpha) = p1 - alpha * (p1 - p2)
        L = batch_losses(fmodel, {}, p1, d, coeffs, [batch] + list(heldout), rt, mode,
                         opts.chunk_size, plan=ctx.batch_plan(opts)).double().cpu().numpy()
        tr, ho = L[:, 0], L[:, 1:]
        ho_mean = ho.mean(1)
        for i, a in enumerate(alphas):
            s = row_stats(ho[i])
            rows.append([j, a, tr[i], s["mean"], s["std"], s["min"], s["max"]])
        i0, i1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1.0)))
        inside = (alphas >= 0) & (alphas <= 1)
        f1, f2 = _flat(p1), _flat(p2)
        dd = dist(f1, f2)
        per_j["train_loss_first"].append(tr[i0])
        per_j["train_loss_second"].append(tr[i1])
        per_j["heldout_loss_first"].append(ho_mean[i0])
        per_j["heldout_loss_second"].append(ho_mean[i1])
        per_j["train_barrier"].append(float(np.max(tr[inside]) - max(tr[i0], tr[i1])))
        per_j["heldout_barrier"].append(float(np.max(ho_mean[inside]) - max(ho_mean[i0], ho_mean[i1])))
        per_j["distance_between"].append(dd)
        ends.append([j, step, tr[i0], ho_mean[i0], dd, dist(f1, start)])
        ends.append([j, opts.step2, tr[i1], ho_mean[i1], dd, dist(f2, start2)])
        bar.update(1)
    bar.close()
    return FixedBatchResult(
        run=str(ctx.run_dir), step=step, step2=opts.step2, lr=lr, lr_auto=opts.lr is None, gd_steps=opts.gd_steps,
        batch_size=B, n_heldout_batches=len(heldout), alphas=alphas,
        **{k: np.array(v, dtype=np.float64) for k, v in per_j.items()}, batched=mode,
        interpolation=FixedBatchInterpolation(*zip(*rows)),
        endpoints=FixedBatchEndpoints(*zip(*ends)))


SIDETRIP = SideTrip(name="fixed-batch", options=FixedBatchOptions, compute=_compute, result=FixedBatchResult,
                    doc="gradient descent on one fixed batch from two checkpoints; losses along their "
                        "interpolations (Fig. 3)", function=fixed_batch)
