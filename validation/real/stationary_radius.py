r"""``eq13-real-sqrt-lr``: Lemma 1 / eq. 13 on the real network -- at a fixed learning rate the trajectory
stabilises at a distance from the minimum proportional to :math:`\sqrt{\text{lr}}`.

The distance to the minimum is not observable on a network, but the distance between two trajectories that
share their start and differ only in their batch order is: in the linear model both are independent stationary
draws once they have re-equilibrated, so their distance is :math:`\sqrt2` times the stationary radius and
scales like :math:`\sqrt{\text{lr}}` too. From the branch checkpoint :math:`\theta_S`, the divergence side-trip
runs pairs (main batch order, other batch order) at lr and lr * f for every ``eq13_factors`` f (constant lr,
``divergence_steps`` updates; the pair at lr is the side-trips A and B of fig. 6, lr/2 reuses H and adds one,
every other factor adds two). The distance between the members at the end, against lr on log-log axes, has
slope 1/2 under Lemma 1. The paper (sec. 4, Lemma 1): "the trajectory will stabilize at an ellipsoid of a fixed
size proportional to the square root of the learning rate" (:data:`EQ13_QUOTE`).

Statistic and rule (fixed in code before measuring, :data:`EQ13_REAL_TOL`): the least-squares slope of
:math:`\log d` on :math:`\log \text{lr}` over at least :data:`EQ13_MIN_LRS` = 5 lrs with its t-based 95 %
confidence interval (:func:`quadsgd.testing.statistics.slope_with_ci`, >= 3 residual degrees of freedom: with
3 lrs and 1 degree of freedom the interval is ~13 standard errors wide and the rule could not pass); value =
:math:`|\text{slope} - 1/2| + \text{half-width}`, pass if < 0.15 -- the whole interval within 0.5 +- 0.15. Why
0.15: the two regimes Lemma 1 separates differ by 0.5 in slope -- the stationary one (:math:`d \propto
\sqrt{\text{lr}}`) and the transient, diffusive one before re-equilibration (:math:`d \propto \text{lr}
\sqrt t`, slope 1) -- so 0.15 decides between them with a margin (less than a third of the gap) while leaving
room for what the linear model ignores on a real network (BatchNorm's scale invariance, weight decay, the
drift of the plateau); an interval too wide to fit inside that band means the measurement cannot decide,
which is a fail, not a pass. The synthetic ``eq13-radius-sqrt-lr`` uses 0.05 with exact stationary samples.

Premises (Lemma 1 is about the stationary regime): ``pairs-levelled`` -- every pair's mean distance over the
last quarter of the side-trips is at most :data:`EQ13_GROWTH_MAX` = 1.05 times its mean over the quarter before
(stationary: 1; diffusive growth :math:`\sqrt t`: :math:`\sqrt{0.875/0.625}` = 1.18; 1.05 lies within a third
of that gap from stationary); ``enough-lrs`` -- at least 5 lrs (3 residual degrees of freedom). A slope
measured while the pairs still drift apart is NOT DECIDED, not a refutation.

The regime measurements predicted the outcome (``benchmarks/results/2026-12-01-regime-measurements.md``, (e)): the
weight-space distance does not saturate within 4,000 steps at this lr (it grows sub-diffusively, exponent 0.45
-> 0.28), and the slope at the end of the pairs is 0.97 / 0.93 / 0.80 after 100 / 300 / 1200 steps. The
details therefore give the slope at several times along the side-trips, the growth of each pair's distance over
its last quarter, the local time exponent, the ratio per halving of the lr (sqrt 2 = 1.41 stationary, 2
diffusive), the function-space distance (rms difference of log-probabilities on held-out examples, which does
level off) with its slope, and the pairs' training loss per quarter (has the loss re-equilibrated?).
"""
from __future__ import annotations

import math

import numpy as np

from quadsgd.testing.statistics import slope_with_ci

from .. import plots
from ..verdict import Verdict
from . import premises
from .context import RealClaim, RealContext
from .requests import divergence_request

__all__ = ["claim_eq13_real", "draw_eq13_real", "pair_slopes", "EQ13_REAL_TOL", "EQ13_REAL_SLOPE", "EQ13_MIN_LRS",
           "EQ13_GROWTH_MAX", "EQ13_REAL"]

EQ13_REAL_SLOPE = 0.5  # Lemma 1: d ~ sqrt(lr)
EQ13_REAL_TOL = 0.15  # |slope - 1/2| + 95 % CI half-width must be below this (see the module docstring)
EQ13_QUOTE = ("the trajectory will stabilize at an ellipsoid of a fixed size proportional to the square root of the "
              "learning rate (sec. 4, Lemma 1, eq. 13)")
EQ13_MIN_LRS = 5  # learning rates of the fit: 3 residual degrees of freedom
EQ13_GROWTH_MAX = 1.05  # each pair's distance, last quarter / quarter before (levelled off)


def pair_slopes(table, column: str = "dist") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-log slope of the pairs' distance against lr at every recorded step where all pairs have a finite,
    positive value: ``(t, slope, lrs)`` (``table``: a divergence result's ``pair_distances``)."""
    factors = np.unique(table.factor)[::-1]
    ts = np.unique(table.t)
    out_t, out_s = [], []
    lrs = np.array([table.lr[(table.factor == f)][0] for f in factors])
    for t in ts:
        d = np.array([getattr(table, column)[(table.factor == f) & (table.t == t)] for f in factors]).ravel()
        if t > 0 and d.size == factors.size and np.all(np.isfinite(d)) and np.all(d > 0):
            out_t.append(int(t))
            out_s.append(float(np.polyfit(np.log(lrs), np.log(d), 1)[0]))
    return np.array(out_t), np.array(out_s), lrs


def draw_eq13_real(axes, table, slope: float, half: float):
    """Three panels: (0) end distance vs lr, log-log, with the fit, the slope-1/2 (Lemma 1) and slope-1
    (diffusive) references; (1) each pair's distance d(t) along the side-trips; (2) the fitted slope against t
    (weights and function space) with 1/2 and 1 marked."""
    K = int(table.t.max())
    factors = np.unique(table.factor)[::-1]
    end = table.select(table.t == K)
    order = np.argsort(end.lr)
    lr, d = end.lr[order], end.dist[order]
    ax = axes[0]
    ax.plot(lr, d, "o", ms=6, color=plots.COLORS[0], label=f"distance between the pair after {K} steps")
    xs = np.geomspace(lr.min() / 1.3, lr.max() * 1.3, 20)
    g = float(np.exp(np.mean(np.log(lr)))), float(np.exp(np.mean(np.log(d))))
    b = np.polyfit(np.log(lr), np.log(d), 1)
    ax.plot(xs, np.exp(np.polyval(b, np.log(xs))), "-", color=plots.COLORS[0], lw=1.2,
            label=f"fit: slope {slope:.3f} +- {half:.3f} (95% CI)")
    ax.plot(xs, g[1] * (xs / g[0]) ** 0.5, "k--", lw=1.0, label="slope 1/2 (Lemma 1, eq. 13)")
    ax.plot(xs, g[1] * (xs / g[0]) ** 1.0, ":", color="gray", lw=1.0, label="slope 1 (diffusive, not re-equilibrated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(lr, labels=[f"{x:.3g}" for x in lr])
    ax.set_xlabel("learning rate of the pair")
    ax.set_ylabel("||theta_t - theta'_t|| (weights)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    for i, f in enumerate(factors):
        sel = (table.factor == f) & (table.t > 0)
        ax.plot(table.t[sel], table.dist[sel], "-", color=plots.COLORS[i % len(plots.COLORS)], lw=1.2,
                label=f"pair at lr x {f:g} ({table.lr[sel][0]:.3g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("steps after the checkpoint")
    ax.set_ylabel("distance between the pair (weights)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[2]
    t, s, _ = pair_slopes(table)
    ax.plot(t, s, "-", color=plots.COLORS[0], lw=1.2, label="weights")
    tf, sf, _ = pair_slopes(table, "dist_function")
    if tf.size:
        ax.plot(tf, sf, "s--", color=plots.COLORS[1], ms=4, lw=1.0, label="function space (log-probabilities)")
    ax.axhline(0.5, color="k", ls="--", lw=1.0, label="1/2 (Lemma 1)")
    ax.axhline(1.0, color="gray", ls=":", lw=1.0, label="1 (diffusive)")
    ax.axhspan(0.5 - EQ13_REAL_TOL, 0.5 + EQ13_REAL_TOL, color="k", alpha=0.08, label=f"rule: 0.5 +- {EQ13_REAL_TOL:g}")
    ax.set_xscale("log")
    ax.set_xlabel("steps after the checkpoint")
    ax.set_ylabel("log-log slope of the pair distance vs lr")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    _plain_minor_ticks(axes)


def _plain_minor_ticks(axes):
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.xaxis.set_minor_formatter(NullFormatter())  # no overlapping minor labels on short log ranges


def _nearest(ts: np.ndarray, target: float) -> int:
    return int(ts[np.argmin(np.abs(ts - target))])


def claim_eq13_real(ctx: RealContext) -> Verdict:
    """The ``eq13-real-sqrt-lr`` verdict on the context's run."""
    out = ctx.out
    S = ctx.branch.step
    s = ctx.sidetrip(*divergence_request(ctx.cfg))
    pt = s.pair_distances
    if len(pt) == 0:
        raise ValueError("the divergence side-trip recorded no lr pairs (eq13_factors is empty)")
    K = int(pt.t.max())
    factors = [float(f) for f in np.unique(pt.factor)[::-1]]
    end = pt.select(pt.t == K)
    lrs = np.array([float(end.lr[end.factor == f][0]) for f in factors])
    d_end = np.array([float(end.dist[end.factor == f][0]) for f in factors])
    f_end = np.array([float(end.dist_function[end.factor == f][0]) for f in factors])
    slope, half, se = slope_with_ci(np.log(lrs), np.log(d_end))
    t, sl, _ = pair_slopes(pt)
    tf, slf, _ = pair_slopes(pt, "dist_function")
    marks = sorted({_nearest(t, x * K) for x in (0.1, 0.25, 0.5, 0.75, 1.0)}) if t.size else []
    growth, exponent = {}, {}
    for f in factors:
        sel = pt.factor == f
        tt, dd = pt.t[sel], pt.dist[sel]
        last, prev = dd[tt >= 0.75 * K], dd[(tt >= 0.5 * K) & (tt < 0.75 * K)]
        growth[str(f)] = float(last.mean() / prev.mean()) if len(prev) and len(last) else math.nan
        tq = _nearest(tt[tt > 0], K / 4)
        dq = float(dd[tt == tq][0])
        exponent[str(f)] = float(math.log(dd[-1] / dq) / math.log(K / tq)) if K > tq and dq > 0 else math.nan
    f_slope = slope_with_ci(np.log(lrs), np.log(f_end)) if np.all(np.isfinite(f_end) & (f_end > 0)) else None
    fig = "eq13-real-sqrt-lr.png"
    plots.save(lambda axes: draw_eq13_real(axes, pt, slope, half), out / fig, ncols=3, figsize=(5.0, 4.4),
               title=f"Lemma 1 / eq. 13 on the real network: pairs of side-trips with different batch orders from "
                     f"step {S}, {K} steps at lr x {', '.join(f'{f:g}' for f in factors)}")
    v = Verdict(
        id="eq13-real-sqrt-lr", source="realnet",
        claim="At a fixed learning rate the trajectory stabilises at a distance proportional to sqrt(lr) (Lemma 1, "
              "eq. 13): two trajectories from the same checkpoint with different batch orders end at a distance "
              "that scales like sqrt(lr)",
        statistic=f"|slope - 1/2| + 95% CI half-width of the least-squares slope of log ||theta_K - theta'_K|| "
                  f"(weights, K = {K} constant-lr steps from step {S}) against log lr over lr x "
                  f"{', '.join(f'{f:g}' for f in factors)} (one pair per lr, {len(lrs) - 2} residual degrees of "
                  f"freedom)",
        value=abs(slope - EQ13_REAL_SLOPE) + half, comparison="<", threshold=EQ13_REAL_TOL, uncertainty=half,
        figure=fig,
        details=dict(
            slope=slope, ci95_half_width=half, slope_se=se, step=S, steps=K, lrs=lrs.tolist(),
            distance_end=d_end.tolist(),
            ratio_per_halving=[float(d_end[i] / d_end[i + 1]) for i in range(len(d_end) - 1)],
            slope_at_t={str(int(m)): float(sl[t == m][0]) for m in marks},
            distance_growth_last_vs_previous_quarter=growth, time_exponent_last_three_quarters=exponent,
            function_distance_end=f_end.tolist(),
            function_slope=None if f_slope is None else f_slope[0],
            function_slope_ci95_half_width=None if f_slope is None else f_slope[1],
            function_slope_at_t={str(int(a)): float(b) for a, b in zip(tf, slf)},
            pair_train_loss_quarters=s.pair_train_loss_quarters,
            pairs_wall_s=s.timing.get("pairs", {}).get("wall_s"), residual_dof=len(lrs) - 2, quote=EQ13_QUOTE))
    return premises.attach(v, [premises.lemma1_premise(v.id, growth, len(lrs), EQ13_GROWTH_MAX, EQ13_MIN_LRS,
                                                       exponent)])


EQ13_REAL = RealClaim("eq13-real-sqrt-lr", claim_eq13_real, lambda ctx: [divergence_request(ctx.cfg)])
