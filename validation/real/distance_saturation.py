"""The distance from the trajectory's points to an independent trajectory's end point decreases and levels off
(the divergence side-trip): fig. 8. Thresholds are constants of this module, fixed before measuring.
"""
from __future__ import annotations

import numpy as np

from .. import plots
from ..verdict import Verdict
from .context import RealClaim, RealContext
from .requests import divergence_request

__all__ = ["claim_fig8", "FIG8"]

FIG8_QUOTE = ("the final point of one trajectory and an independent trajectory re-trained using different sequence of "
              "mini-batches monotonically decreases until saturates at some constant level (sec. 5, Fig. 8)")
FIG8_TAIL_MAX = 0.2  # decline over the last third of the path / total decline
FIG8_DECREASE_MIN = 1.2  # first distance / last distance


def claim_fig8(ctx: RealContext) -> Verdict:
    """Fig. 8. The paper (sec. 5): "the final point of one trajectory and an independent trajectory re-trained
    using different sequence of mini-batches monotonically decreases until saturates at some constant level"."""
    cfg, out = ctx.cfg, ctx.out
    S = ctx.branch.step
    s = ctx.sidetrip(*divergence_request(cfg))
    ck, ep = s.checkpoint_distances, s.endpoint_distances
    pts = sorted([(int(a), float(b)) for a, b in zip(ck.step, ck.dist_to_B_end)] +
                 [(int(a), float(b)) for a, b in zip(ep.step, ep.dist_to_B_end)])
    steps = np.array([p[0] for p in pts], float)
    d = np.array([p[1] for p in pts])
    # drop the independent end point itself if it appears (distance 0 by construction)
    keep = np.isfinite(d)
    steps, d = steps[keep], d[keep]
    t23 = steps[0] + (steps[-1] - steps[0]) * 2 / 3
    d23 = float(np.interp(t23, steps, d))
    tail = (d23 - d[-1]) / (d[0] - d[-1]) if d[0] > d[-1] else float("nan")
    fig = "fig8-distance-saturates.png"
    plots.save(lambda ax: plots.draw_endpoint_distance(ax, steps, d, S), out / fig,
               title="Fig. 8: distance from trajectory points to an independently trained end point")
    v = Verdict(
        id="fig8-distance-saturates", source="realnet",
        claim="The distance from the points of a trajectory to the end point of an independent trajectory "
              "(different batch order after a shared burn-in) decreases and then levels off (Fig. 8)",
        statistic="decrease of the distance over the last third of the path / its total decrease",
        value=tail, comparison="<", threshold=FIG8_TAIL_MAX, figure=fig,
        details=dict(step=S, first=float(d[0]), at_two_thirds=d23, last=float(d[-1]), quote=FIG8_QUOTE))
    v.check("decreases", float(d[0] / d[-1]), ">", FIG8_DECREASE_MIN, "first distance / last distance")
    return v


FIG8 = RealClaim("fig8-distance-saturates", claim_fig8, lambda ctx: [divergence_request(ctx.cfg)])
