"""Single steps of many sizes from the branch point (the lr-sweep side-trip): fig. 2 and fig. 13.

Thresholds are constants of this module, fixed before measuring.
"""
from __future__ import annotations

import math

import numpy as np

from .. import plots
from ..verdict import Verdict
from .context import RealClaim, RealContext
from .requests import lr_sweep_request

__all__ = ["claim_fig2", "claim_fig13", "FIG2", "FIG13"]

FIG2_RATIO_MAX = 0.5  # best-step training-batch loss / best-step held-out loss
FIG2_R2_MIN = 0.9  # R^2 of a degree-4 polynomial fit of loss(step size) up to twice the best step
FIG13_LOGDROP_GAP_MIN = math.log(2.0)  # log-drop(train batch) - log-drop(held-out) at every batch size


def claim_fig2(ctx: RealContext) -> Verdict:
    cfg, out = ctx.cfg, ctx.out
    S, S2 = ctx.branch.step, ctx.branch.step2
    s = ctx.sidetrip(*lr_sweep_request(cfg, cfg.sweep_batch_size, "lr-sweep"))
    lr, tr, ho = s.curve.lr, s.curve.train_loss, s.curve.heldout_mean
    # relative to where each curve starts, so a generalization gap at the branch point (train batch
    # already below the held-out ones) does not count as the single-step effect
    ratio = (s.train_min_loss / s.train_start_loss) / (s.heldout_min_loss / s.heldout_start_loss)
    r2_train = _r2_poly(lr[lr <= 2 * s.best_lr_train], tr[lr <= 2 * s.best_lr_train])
    r2_held = _r2_poly(lr[lr <= 2 * max(s.best_lr_heldout, s.best_lr_train)],
                       ho[lr <= 2 * max(s.best_lr_heldout, s.best_lr_train)])
    fig = "fig2-single-step.png"
    plots.save(lambda axes: plots.draw_lr_sweep(axes, s), out / fig,
               title=f"Fig. 2: one SGD step of size lr from step {S} (batch {cfg.sweep_batch_size})", ncols=2)
    v = Verdict(
        id="fig2-single-step", source="realnet",
        claim="After its best single step the training batch's loss is far below the loss the held-out "
              "batches reach after their best step; both curves are smooth, low-degree-polynomial-like (Fig. 2)",
        statistic="(training-batch loss after its best step / before it) divided by (mean held-out loss after "
                  f"its best step / before it) ({cfg.sweep_heldout_batches} held-out batches, step {S})",
        value=ratio, comparison="<", threshold=FIG2_RATIO_MAX, figure=fig,
        details=dict(step=S, **{k: getattr(s, k) for k in ("train_start_loss", "train_min_loss", "best_lr_train",
                                                            "heldout_start_loss", "heldout_min_loss",
                                                            "best_lr_heldout")},
                     r2_train=r2_train, r2_heldout=r2_held,
                     absolute_ratio=s.train_min_loss / s.heldout_min_loss))
    v.check("poly_fit_train", r2_train, ">=", FIG2_R2_MIN, "R^2 of a degree-4 polynomial in lr, training batch, lr <= 2 best")
    v.check("poly_fit_heldout", r2_held, ">=", FIG2_R2_MIN, "same for the held-out mean")
    return v


def claim_fig13(ctx: RealContext) -> Verdict:
    cfg, out = ctx.cfg, ctx.out
    S = ctx.branch.step
    rows = []
    for b in cfg.sweep_batch_sizes:
        s = ctx.sidetrip(*lr_sweep_request(cfg, b))
        drop_tr = math.log(s.train_start_loss / s.train_min_loss)
        drop_ho = math.log(s.heldout_start_loss / s.heldout_min_loss)
        rows.append(dict(batch_size=b, train_drop=drop_tr, heldout_drop=drop_ho, gap=drop_tr - drop_ho))
    gaps = [r["gap"] for r in rows]
    fig = "fig13-batch-size.png"
    plots.save(lambda ax: plots.draw_batch_size(ax, rows), out / fig,
               title=f"Fig. 13: best single-step loss drop vs batch size, step {S}")
    v = Verdict(
        id="fig13-batch-size", source="realnet",
        claim="For typical batch sizes the training batch's single-step loss drop exceeds the held-out drop "
              "by orders of magnitude, the difference shrinking as the batch grows (Fig. 13)",
        statistic="smallest over batch sizes of log(train start/min loss) - log(held-out start/min loss)",
        value=min(gaps), comparison=">", threshold=FIG13_LOGDROP_GAP_MIN, figure=fig,
        details=dict(step=S, rows=rows))
    v.check("shrinks_with_batch", gaps[0] - gaps[-1], ">", 0.0,
            f"gap at batch {cfg.sweep_batch_sizes[0]} minus gap at batch {cfg.sweep_batch_sizes[-1]}")
    return v


def _r2_poly(x, y, deg=4) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size <= deg + 1:
        return float("nan")
    xs = x / x.max()
    coef = np.polyfit(xs, y, deg)
    res = y - np.polyval(coef, xs)
    ss = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum(res ** 2) / ss) if ss > 0 else float("nan")


FIG2 = RealClaim("fig2-single-step", claim_fig2,
                 lambda ctx: [lr_sweep_request(ctx.cfg, ctx.cfg.sweep_batch_size, "lr-sweep")])
FIG13 = RealClaim("fig13-batch-size", claim_fig13,
                  lambda ctx: [lr_sweep_request(ctx.cfg, b) for b in ctx.cfg.sweep_batch_sizes])
