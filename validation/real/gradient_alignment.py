"""A fixed batch's gradient stays aligned with its start along the trajectory, different batches' gradients are
nearly orthogonal (the alignment side-trip): fig. 7. Thresholds are constants of this module, fixed before
measuring.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .. import plots
from ..verdict import Verdict
from . import premises
from .context import RealClaim, RealContext
from .requests import alignment_request

__all__ = ["claim_fig7", "FIG7"]

FIG7_QUOTE = ("the gradient norm changed less than 5%, while cos stayed generally above 0.5. For high dimensional "
              "space "
              "this means that the gradient on a fixed batch stays within a very narrow cone throughout the "
              "trajectory (sec. 5, Fig. 7)")
FIG7_MARGIN_MIN = 0.0  # min_t cos(fixed batch, start) - (mean + 2 std of different-batch cosines)


def claim_fig7(ctx: RealContext) -> Verdict:
    """Fig. 7, the measurement of Lemma 2's premise itself. The paper (sec. 5): "the gradient norm changed less
    than 5%, while cos stayed generally above 0.5 [...] the gradient on a fixed batch stays within a very narrow
    cone throughout the trajectory", while different batches' gradients are "all nearly orthogonal". Its own
    premise is only that the fixed batch is not fit (it cannot assume what it measures); the window over which
    the cone holds (:func:`.premises.lemma2_window`) is reported."""
    cfg, out = ctx.cfg, ctx.out
    S = ctx.branch.step
    s = ctx.sidetrip(*alignment_request(cfg))
    rec = s.records
    cos_c = rec.cos_start_constant
    db = s.different_batches
    ref = abs(db.cos_mean) + 2 * db.cos_std
    margin = float(np.nanmin(cos_c)) - ref
    fig = "fig7-gradient-alignment.png"
    plots.save(lambda axes: plots.draw_alignment(axes, rec, db), out / fig,
               title=f"Fig. 7: gradient of a fixed batch along side-trips from step {S}", ncols=2)
    v = Verdict(
        id="fig7-gradient-alignment", source="realnet",
        claim="Along the trajectory the gradient of a fixed batch stays aligned with its start, while gradients "
              "of different batches are nearly orthogonal (Fig. 7; Lemma 2's assumption)",
        statistic=f"min over {cfg.alignment_steps} steps of cos(g_b(theta_t), g_b(theta_S)) minus "
                  "(|mean| + 2 std) of the cosines between different batches' gradients",
        value=margin, comparison=">", threshold=FIG7_MARGIN_MIN, figure=fig,
        details=dict(step=S, min_cos_fixed_constant=float(np.nanmin(cos_c)),
                     final_cos_fixed_linear=float(rec.cos_start_linear[-1]),
                     final_norm_ratio_constant=float(rec.norm_ratio_constant[-1]),
                     different_batches=asdict(db), quote=FIG7_QUOTE,
                     lemma2_windows={k: w.to_dict() for k, w in premises.alignment_windows(s).items()}))
    return premises.attach(v, [premises.lemma2_premise(
        "lemma2-fig7", v.id, premises.alignment_changes(s),
        f"the alignment side-trip's fixed {s.fixed_batch}-split batch of {s.batch_size} along its {s.steps}-step "
        f"side-trips")])


FIG7 = RealClaim("fig7-gradient-alignment", claim_fig7, lambda ctx: [alignment_request(ctx.cfg)])
