"""Averaging equals a learning-rate schedule (Lemma 2, Table 1) on the real network: fig. 5 (averages against
their equivalent-schedule side-trips, the averaging side-trip) and fig. 6 (the two-point average at lr against
the trajectory at lr/2, the divergence side-trip). Thresholds are constants of this module, fixed before
measuring.
"""
from __future__ import annotations

import math
from dataclasses import asdict

from .. import plots
from ..verdict import Verdict
from . import premises
from .context import RealClaim, RealContext
from .requests import averaging_request, divergence_request

__all__ = ["claim_fig5", "claim_fig6", "FIG5", "FIG6"]

FIG5_GAP_MAX = 0.5  # |loss(average) - loss(side-trip)| / |loss(side-trip) - loss(start)|, worst kernel
FIG6_DIST_RATIO_MAX = 0.5  # |two-point average - lr/2 trajectory| / |trajectory - other-batch-order trajectory|
FIG6_LOSS_GAP_MAX = 0.15  # |loss(two-point at lr) - loss(lr/2)| / loss(lr/2)


def claim_fig5(ctx: RealContext) -> Verdict:
    cfg, out = ctx.cfg, ctx.out
    S = ctx.branch.step
    K = cfg.averaging_steps
    s = ctx.sidetrip(*averaging_request(cfg))
    gaps, gaps_train, per_kernel = {}, {}, {}
    for spec, kres in s.kernels.items():
        results = sorted(kres.results, key=lambda r: r.k)
        first = results[0]  # the side-trip after its first reported step (k = 1): the change's baseline
        r = ([x for x in results if x.k == K] or results[-1:])[0]
        change_val = abs(r.sidetrip.val_loss - first.sidetrip.val_loss)
        change_tr = abs(r.sidetrip.train_loss - first.sidetrip.train_loss)
        gaps[spec] = abs(r.average.val_loss - r.sidetrip.val_loss) / change_val if change_val else math.inf
        gaps_train[spec] = (abs(r.average.train_loss - r.sidetrip.train_loss) / change_tr
                            if change_tr else math.inf)
        per_kernel[spec] = dict(k=r.k, average=asdict(r.average), sidetrip=asdict(r.sidetrip), baseline_k=first.k,
                                relative_l2=r.relative_l2, gap_val=gaps[spec], gap_train=gaps_train[spec])
    traj0 = asdict(s.trajectory[0]) if s.trajectory else None
    worst = max(gaps.values())
    fig = "fig5-averaging-equals-schedule.png"
    plots.save(lambda axes: plots.draw_averaging(axes, s), out / fig,
               title=f"Fig. 5: averages vs equivalent-schedule side-trips from step {S}", ncols=2)
    v = Verdict(
        id="fig5-averaging-equals-schedule", source="realnet",
        claim="Each average (SWA, EMA, two-point) matches a side-trip with its equivalent learning-rate "
              "schedule (Table 1) in loss and accuracy (Fig. 5, 14)",
        statistic=f"worst kernel's |val loss(average) - val loss(side-trip)| after K = {K} steps, divided by the "
                  f"side-trip's own change of val loss from its first reported step (k = 1) to K",
        value=worst, comparison="<", threshold=FIG5_GAP_MAX, figure=fig,
        details=dict(step=S, K=K, kernels=per_kernel, start=traj0))
    v.check("train_loss_gap", max(gaps_train.values()), "<", FIG5_GAP_MAX, "same statistic on the training loss")
    return v


def claim_fig6(ctx: RealContext) -> Verdict:
    cfg, out = ctx.cfg, ctx.out
    S = ctx.branch.step
    s = ctx.sidetrip(*divergence_request(cfg))
    dd, ev = s.distances, s.evaluations
    last_t = int(ev.t.max())
    val = {str(m): float(v) for t, m, v in zip(ev.t, ev.model, ev.val_loss) if t == last_t}  # val loss per model
    gap = abs(val["twopoint"] - val["H"]) / val["H"]
    ratio = float(dd.dist_twopoint_H[-1]) / float(dd.dist_A_B[-1])
    fig = "fig6-two-point-half-lr.png"
    plots.save(lambda axes: plots.draw_divergence(axes, dd, ev), out / fig,
               title=f"Fig. 6: two-point average at lr vs the trajectory at lr/2, from step {S}", ncols=2)
    v = Verdict(
        id="fig6-two-point-half-lr", source="realnet",
        claim="The two-point average of the trajectory at lr tracks the trajectory at lr/2: close in loss, and "
              "much closer in weights than two trajectories with different batch orders (Fig. 6)",
        statistic=f"||(theta_S + theta_t)/2 - theta^(lr/2)_t|| / ||theta_t - theta'_t|| at t = {int(dd.t[-1])}",
        value=ratio, comparison="<", threshold=FIG6_DIST_RATIO_MAX, figure=fig,
        details=dict(step=S, val_loss_twopoint=val["twopoint"], val_loss_half=val["H"], val_loss_A=val["A"],
                     summary_ratio=s.twopoint_to_half_vs_A_B))
    v.check("loss_gap", gap, "<", FIG6_LOSS_GAP_MAX, "|val loss(two-point at lr) - val loss(lr/2)| / val loss(lr/2)")
    return premises.attach(v, [premises.lemma2_premise(
        "lemma2-fig6", v.id, premises.divergence_changes(s),
        f"a fixed held-out batch of {s.fixed_batch_size} (seed {s.fixed_batch_seed}) along the {s.steps}-step "
        f"side-trips A, B, H")])


FIG5 = RealClaim("fig5-averaging-equals-schedule", claim_fig5, lambda ctx: [averaging_request(ctx.cfg)])
FIG6 = RealClaim("fig6-two-point-half-lr", claim_fig6, lambda ctx: [divergence_request(ctx.cfg)])
