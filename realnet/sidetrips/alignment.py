r"""``alignment`` (Fig. 7): two side-trips from ``S`` over the main batch order for ``steps`` = K updates,
constant ``lr`` and linearly decaying ``lr (K-t)/K``; gradients of one fixed batch along both.

Outputs (:class:`AlignmentResult`):

* ``alignment.csv`` (:class:`AlignmentRecords`, one row per recorded ``t``): ``t``, ``step``, ``lr_constant``,
  ``lr_linear``, ``cos_start_constant``/``cos_start_linear`` (``cos(g_b(theta_t), g_b(theta_S))``),
  ``norm_ratio_constant``/``norm_ratio_linear`` (``||g_b(theta_t)|| / ||g_b(theta_S)||``),
  ``cos_between_schedules``, ``norm_ratio_between_schedules`` (linear / constant),
  ``cos_train_vs_fixed_constant``/``_linear`` (gradient of the training batch of update ``t`` vs the
  fixed batch's, same point), ``fixed_loss_constant``/``_linear``, ``train_loss_constant``/``_linear``,
  ``distance_between_schedules``.
* ``summary.json``: final and extreme values of the above, and ``different_batches`` =
  {``cos_mean``, ``cos_std``, ``cos_abs_max``, ``n_pairs``}: cosines between gradients of different
  training batches at ``S`` (the reference for "nearly orthogonal").

Resumable: the two branches and the records so far are saved in the resume state (``save_every_s``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..config import check_choice, check_int
from ._losses import batch_grad, functional_model, grad_vector
from ._results import SideTripResult, Table, column
from ._runner import Branch, RunContext, SideTrip, SideTripOptions, cos, dist, record_points, run_sidetrip

__all__ = ["AlignmentOptions", "AlignmentResult", "AlignmentRecords", "DifferentBatches", "alignment", "SIDETRIP"]

FIXED_BATCH_SEED = 424_242  # seed of the fixed batch b
REFERENCE_SEED = 515_151  # seed of the different training batches of the reference cosines


@dataclass
class AlignmentOptions(SideTripOptions):
    steps: int = 1000  # K: length of both side-trips
    lr: float | None = None  # constant lr / start of the linear decay (None = the run's lr at the checkpoint)
    record_every: int = 10  # record gradients every N steps (plus a log-spaced set of early steps)
    fixed_batch: str = "train"  # where the fixed batch b comes from: train | heldout
    batch_size: int = 0  # fixed-batch size (0 = the run's)
    batch_pairs: int = 10  # reference: gradients of batch_pairs + 1 different training batches at S

    def validate(self, step: int) -> None:
        check_int("steps", self.steps, 1)
        check_int("record_every", self.record_every, 1)
        check_int("batch_pairs", self.batch_pairs, 1)
        check_int("batch_size", self.batch_size, 0)
        check_choice("fixed_batch", self.fixed_batch, ("train", "heldout"))


@dataclass(frozen=True, eq=False)
class AlignmentRecords(Table):
    """``alignment.csv``: one row per recorded step t of the two side-trips (constant / linear lr)."""

    t: np.ndarray = column("int", "updates since S")
    step: np.ndarray = column("int", "absolute step S + t")
    lr_constant: np.ndarray = column("float", "lr of update t, constant schedule")
    lr_linear: np.ndarray = column("float", "lr of update t, linear decay lr (K-t)/K")
    cos_start_constant: np.ndarray = column("float", "cos(g_b(theta_t), g_b(theta_S)), constant lr")
    cos_start_linear: np.ndarray = column("float", "same, linear decay")
    norm_ratio_constant: np.ndarray = column("float", "||g_b(theta_t)|| / ||g_b(theta_S)||, constant lr")
    norm_ratio_linear: np.ndarray = column("float", "same, linear decay")
    cos_between_schedules: np.ndarray = column("float", "cos of the fixed batch's gradients of the two side-trips")
    norm_ratio_between_schedules: np.ndarray = column("float", "their norm ratio, linear / constant")
    cos_train_vs_fixed_constant: np.ndarray = column("float", "cos(training batch of update t, fixed batch), constant")
    cos_train_vs_fixed_linear: np.ndarray = column("float", "same, linear decay")
    fixed_loss_constant: np.ndarray = column("float", "fixed-batch loss, constant lr")
    fixed_loss_linear: np.ndarray = column("float", "fixed-batch loss, linear decay")
    train_loss_constant: np.ndarray = column("float", "loss of the training batch of update t, constant lr")
    train_loss_linear: np.ndarray = column("float", "same, linear decay")
    distance_between_schedules: np.ndarray = column("float", "||theta_t(constant) - theta_t(linear)||")


@dataclass
class DifferentBatches:
    """Cosines between the gradients of different training batches at S (all pairs)."""

    cos_mean: float
    cos_std: float
    cos_abs_max: float
    n_pairs: int


@dataclass(eq=False)
class AlignmentResult(SideTripResult):
    """Result of :func:`alignment`; ``final`` holds the last record's values from ``cos_start_constant`` on."""

    NAME: ClassVar[str] = "alignment"
    TABLES: ClassVar[dict[str, str]] = {"records": "alignment.csv"}

    lr: float
    steps: int
    batch_size: int
    fixed_batch: str
    fixed_grad_norm_start: float
    final: dict[str, float]
    min_cos_start_constant: float
    min_cos_start_linear: float
    mean_cos_train_vs_fixed: float
    different_batches: DifferentBatches
    records: AlignmentRecords

    @staticmethod
    def headline_of(summary):
        return {"final": {k: summary["final"][k] for k in ("cos_start_constant", "cos_start_linear",
                                                            "cos_between_schedules")},
                "different_batches_cos_mean": summary["different_batches"]["cos_mean"]}


def alignment(run_dir, step: int, out_dir, options: AlignmentOptions | None = None, **overrides) -> AlignmentResult:
    """Gradient alignment of a fixed batch along constant / linearly decaying lr side-trips (Fig. 7)."""
    return run_sidetrip(SIDETRIP, run_dir, step, out_dir, options, overrides)


def _compute(ctx: RunContext, S: int, opts: AlignmentOptions) -> AlignmentResult:
    rt = ctx.rt
    K = int(opts.steps)
    lr = ctx.lr(S, opts.lr)
    B = opts.batch_size or ctx.cfg.batch_size
    base = ctx.branch(S)
    fb = ctx.data.fixed_batches(opts.fixed_batch, 1, B, ctx.seeded(FIXED_BATCH_SEED), rt.device)[0]
    fmodel, _ = functional_model(base.model, "batch")
    plan = ctx.batch_plan(opts)  # the run's per-rank BatchNorm groups and the memory bound

    def fixed_grad(br: Branch, batch=fb):
        loss, g = batch_grad(fmodel, dict(br.model.named_parameters()), *batch, rt, plan=plan)
        return float(loss), grad_vector(g)

    # reference: gradients of different training batches at S
    ref = ctx.data.fixed_batches("train", opts.batch_pairs + 1, B, ctx.seeded(REFERENCE_SEED), rt.device)
    gs = [fixed_grad(base, b)[1] for b in ref]
    pair_cos = [cos(gs[i], gs[j]) for i in range(len(gs)) for j in range(i + 1, len(gs))]

    _, g0 = fixed_grad(base)
    n0 = float(g0.double().norm())
    bc, bl = base.clone(), base.clone()
    rec = set(record_points(K, opts.record_every))
    rows = []
    t0 = 0
    saved = ctx.state.load()  # resume: both branches, the records so far, the next t
    if saved is not None:
        bc.load_state_dict(saved["constant"])
        bl.load_state_dict(saved["linear"])
        rows, t0 = saved["rows"], int(saved["t"])
    bar = ctx.bar(K + 1, f"alignment step {S}", initial=t0)
    it = ctx.batches(S + t0, S + K + 1)
    for t in range(t0, K + 1):
        x, y = next(it)
        lr_c, lr_l = lr, lr * (K - t) / K
        if t in rec:
            fl_c, gc = fixed_grad(bc)
            fl_l, gl = fixed_grad(bl)
            dist_cl = dist(bc.flat(), bl.flat())
        if t < K:
            tl_c = float(bc.sgd_step(x, y, lr_c))
            tg_c = bc.grad_flat() if t in rec else None
            tl_l = float(bl.sgd_step(x, y, lr_l))
            tg_l = bl.grad_flat() if t in rec else None
        elif t in rec:
            l_, g_ = batch_grad(fmodel, dict(bc.model.named_parameters()), x, y, rt, plan=plan)
            tl_c, tg_c = float(l_), grad_vector(g_)
            l_, g_ = batch_grad(fmodel, dict(bl.model.named_parameters()), x, y, rt, plan=plan)
            tl_l, tg_l = float(l_), grad_vector(g_)
        if t in rec:
            rows.append({
                "t": t, "step": S + t, "lr_constant": lr_c, "lr_linear": lr_l,
                "cos_start_constant": cos(gc, g0), "cos_start_linear": cos(gl, g0),
                "norm_ratio_constant": float(gc.double().norm()) / n0,
                "norm_ratio_linear": float(gl.double().norm()) / n0,
                "cos_between_schedules": cos(gc, gl),
                "norm_ratio_between_schedules": float(gl.double().norm()) / max(float(gc.double().norm()), 1e-300),
                "cos_train_vs_fixed_constant": cos(tg_c, gc), "cos_train_vs_fixed_linear": cos(tg_l, gl),
                "fixed_loss_constant": fl_c, "fixed_loss_linear": fl_l,
                "train_loss_constant": tl_c, "train_loss_linear": tl_l,
                "distance_between_schedules": dist_cl,
            })
        bar.update(1)
        if t < K:
            ctx.state.save(lambda: {"t": t + 1, "constant": bc.state_dict(), "linear": bl.state_dict(), "rows": rows})
    bar.close()
    cols = AlignmentRecords.columns()
    last = rows[-1]
    pc = np.asarray(pair_cos)
    return AlignmentResult(
        run=str(ctx.run_dir), step=S, lr=lr, steps=K, batch_size=B, fixed_batch=opts.fixed_batch,
        fixed_grad_norm_start=n0, final={c: last[c] for c in cols[4:]},
        min_cos_start_constant=min(r["cos_start_constant"] for r in rows),
        min_cos_start_linear=min(r["cos_start_linear"] for r in rows),
        mean_cos_train_vs_fixed=float(np.nanmean([r["cos_train_vs_fixed_constant"] for r in rows])),
        different_batches=DifferentBatches(cos_mean=float(pc.mean()), cos_std=float(pc.std()),
                                           cos_abs_max=float(np.abs(pc).max()), n_pairs=int(len(pc))),
        records=AlignmentRecords(**{c: [r[c] for r in rows] for c in cols}))


SIDETRIP = SideTrip(name="alignment", options=AlignmentOptions, compute=_compute, result=AlignmentResult,
                    doc="gradient of a fixed batch along constant and linearly decaying lr side-trips vs "
                        "different batches' gradients (Fig. 7)", function=alignment)
