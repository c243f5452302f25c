"""Gradient descent on a fixed batch from two checkpoints ends in the same basin (the fixed-batch side-trip):
fig. 3. Thresholds are constants of this module, fixed before measuring.
"""
from __future__ import annotations

from .. import plots
from ..verdict import Verdict
from .context import RealClaim, RealContext
from .requests import fixed_batch_request

__all__ = ["claim_fig3", "FIG3"]

FIG3_QUOTE = ("the side-trip using the same fixed batch along the main training trajectory leads to the same basin. "
              "Remarkably, the held-out batch loss while increasing dramatically also stays in the same basin as the "
              "main trajectory (sec. 3, Fig. 3)")
FIG3_TRAIN_BARRIER_MAX = 0.1  # barrier / start loss along the interpolations (training batch)
FIG3_HELDOUT_BARRIER_MAX = 0.25  # same on the held-out batches


def claim_fig3(ctx: RealContext) -> Verdict:
    """Fig. 3. The paper (sec. 3): "the side-trip using the same fixed batch along the main training trajectory
    leads to the same basin. Remarkably, the held-out batch loss while increasing dramatically also stays in the
    same basin as the main trajectory"."""
    out = ctx.out
    S, S2 = ctx.branch.step, ctx.branch.step2
    s = ctx.sidetrip(*fixed_batch_request(ctx))
    scale_tr = max(s.train_loss_first[0], s.train_loss_second[0])
    scale_ho = max(s.heldout_loss_first[0], s.heldout_loss_second[0])
    tb = max(0.0, max(float(b) for b in s.train_barrier)) / scale_tr
    hb = max(0.0, max(float(b) for b in s.heldout_barrier)) / scale_ho
    fig = "fig3-same-basin.png"
    plots.save(lambda axes: plots.draw_fixed_batch(axes, s.interpolation), out / fig,
               title=f"Fig. 3: interpolation between fixed-batch descents from steps {S} and {S2}", ncols=2)
    v = Verdict(
        id="fig3-same-basin", source="realnet",
        claim="Gradient descent on a fixed batch from two points of the trajectory ends in the same basin: "
              "no loss barrier along the interpolation, for the training and the held-out batches (Fig. 3)",
        statistic="largest loss barrier along (1-a) P1_j + a P2_j over GD steps j = 0..9, divided by the start "
                  "loss (training batch)",
        value=tb, comparison="<", threshold=FIG3_TRAIN_BARRIER_MAX, figure=fig,
        details=dict(step=S, step2=S2, lr=s.lr, heldout_relative_barrier=hb,
                     quote=FIG3_QUOTE,
                     train_loss_after_3_steps=s.train_loss_first[min(3, len(s.train_loss_first) - 1)]))
    v.check("heldout_barrier", hb, "<", FIG3_HELDOUT_BARRIER_MAX, "same on the held-out batches")
    return v


FIG3 = RealClaim("fig3-same-basin", claim_fig3, lambda ctx: [fixed_batch_request(ctx)])
