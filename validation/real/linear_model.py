r"""``linear-model-fit``: the paper's linear model, fitted to the real trajectory at the branch point, predicts
how averaging reduces the fluctuations of the trajectory along its top Hessian directions.

The claim (App. A.1; "matches the observed training trajectories"): near a checkpoint :math:`\theta_S` on a
plateau, SGD along each top Hessian direction :math:`v_i` behaves like the scalar linear model
:math:`u \leftarrow (1 - \lambda\kappa_i)u + \lambda\xi` (with the run's heavy-ball momentum), so the model with
the measured curvature :math:`\kappa_i` and gradient noise :math:`\sigma_i` predicts the variance ratio
:math:`\mathrm{Var}\,\hat p / \mathrm{Var}\,p` of every averaging kernel applied to :math:`p_t = v_i^\top\theta_t`.

Statistic and rule (fixed in code before any measurement; :data:`quadsgd.fitting.FIT_THRESHOLD`):

* value = median over the modelled (stable) directions and the kernels of
  :math:`|\log(\text{measured} / \text{predicted variance ratio})|`, rule ``< log 1.5``; uncertainty: the
  bootstrap standard error over directions (all kernels of a direction resampled together);
* sub-check ``variance``: the same statistic on the variances :math:`\mathrm{Var}\,p_i` themselves, same rule.
  It is a sub-check (so it decides the verdict too), not a detail: the variance ratios are scale-free and
  blind to the noise model -- measured on the synthetic quadratic network that
  :math:`\sigma\times2` leaves the ratio statistic passing and moves the variance statistic by log 4 --
  while the linear model is the pair (curvature, noise); a fit whose noise scale is off by more than the
  factor the ratios are allowed does not "match the trajectory", and the absolute loss it predicts (and
  the loss reduction by averaging) would be off by the same factor.

Premise ``subspace-stable`` (besides the regime premises of every real-network claim): the model lives in the top-k
subspace fitted at S, so that subspace must still be the one the trajectory moves in at the end of the
continuation: the principal angles between the directions at S and the end point's Hessian applied to them
(:func:`realnet.sidetrips.linear_fit.subspace_stability`, k HVPs on the same Hessian sample) are all <= 45 degrees
(:data:`SUBSPACE_COS_MIN`); otherwise the verdict is NOT DECIDED.

The report's details show where the model breaks, with numbers: every direction's :math:`\lambda\kappa_i`, its
distance to the heavy-ball stability edge :math:`\lambda\kappa = 2(1+\beta)`, the log ratios per kernel, the log
variance ratio, the measured and predicted integrated times, the blocks' adequacy, the drift of the
projection over the continuation, the rank correlation of the misfit with :math:`\lambda\kappa`, and the
statistics with the other curvature estimate (Lanczos eigenvalue instead of the fresh-batch Rayleigh
quotient).

Measured on the quick run (2026-12-01: digits ResNet-20 width 16, batch 32, lr 0.05, momentum 0.9, branch at
step 100 of 150; k = 8, sample 256, N = 2,065, kernels ema:0.1 / twopoint:20 / swa:20): ratio statistic 0.389
(bootstrap se 0.083, 95 % CI 0.27-0.52) against log 1.5 = 0.405, variance sub-check 3.27 -- FAIL. What it means:
the branch point is not on a plateau. Over the continuation the training-batch loss falls from 0.030 (first 100
updates) to 0.00016 (last 100): the network memorises the 1,197 digits, the gradient noise measured at S is
far larger than the noise along the continuation, and the measured variances are 2-9 % of the predicted ones
in all 8 directions. The series are not stationary (measured integrated times 1.6-16x the predicted ones;
blocks shorter than 10 correlation times in 8/8 directions, so the measured ratios carry standard errors of
0.14-0.73): the ratio statistic's pass at the margin is no confirmation. No direction is near the stability
edge (lr kappa 0.007-0.042 with the fresh-batch curvature; the Lanczos eigenvalues of the 256-example sample
are 4-9x larger, 4.33 .. 1.34, and with them the ratio statistic is 0.98). On the synthetic quadratic network
(tests) the same path gives 0.010 (ratios) and 0.057 (variances), and 0.011 / 1.37 with the noise measured at
a quarter of the batch size (sigma x 2).

Figures (``draw_*`` take an ``ax``): predicted vs measured (log-log, identity line, the rule's factor-1.5 band,
colour = :math:`\lambda\kappa_i`) for the variance, the integrated autocorrelation time and the kernel
variance ratios; the Hessian's top spectrum (Lanczos eigenvalues and fresh-batch Rayleigh quotients).
"""
from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from .. import plots
from ..verdict import Verdict
from . import premises
from .context import RealClaim, RealContext
from .requests import linear_fit_request

__all__ = ["claim_linear_fit", "draw_predicted_vs_measured", "draw_spectrum", "draw_linear_fit", "where_it_breaks",
           "breaks_text", "LINEAR_MODEL_FIT",
           "NEAR_EDGE_FRACTION", "TREND_MAX"]

#: directions with lr kappa above this fraction of the stability edge 2 (1 + beta) are listed as "near the edge"
# the subspace premise: no modelled direction turns by more than 45 degrees over the continuation (beyond it a
# direction lies more outside the fitted subspace than inside it: cos^2 < 1/2)
SUBSPACE_COS_MIN = math.sqrt(0.5)
NEAR_EDGE_FRACTION = 0.5
#: directions whose projection drifted by more than this many standard deviations over the continuation are
#: listed as "drifting" (a stationary series drifts by O(sqrt(tau / N)) of its sd)
TREND_MAX = 1.0


# ======================================================================================= figures
def draw_predicted_vs_measured(ax, predicted, measured, measured_se, color, label: str, *, markers=None,
                               threshold: float | None = None, cmap: str = "viridis", colorbar: bool = True):
    """Measured against predicted on log-log axes, identity line, dotted band ``exp(+-threshold)``.

    predicted, measured, measured_se: 1-D arrays (points that are not finite and positive are not drawn).
    color: values mapped to colour (lr kappa_i). markers: optional 1-D array of marker groups (e.g. kernel
    names; one legend entry per group). label: the quantity (axis labels).
    """
    p = np.asarray(predicted, dtype=float).ravel()
    m = np.asarray(measured, dtype=float).ravel()
    e = np.asarray(measured_se, dtype=float).ravel()
    c = np.asarray(color, dtype=float).ravel()
    ok = np.isfinite(p) & np.isfinite(m) & (p > 0) & (m > 0)
    groups = np.asarray(markers).ravel() if markers is not None else np.full(p.shape, "", dtype=object)
    shapes = "osD^vP*X"
    sc = None
    cfin = c[np.isfinite(c)]
    vmin, vmax = (float(cfin.min()), float(cfin.max())) if cfin.size else (0.0, 1.0)
    for j, gname in enumerate(dict.fromkeys(groups[ok].tolist())):
        sel = ok & (groups == gname)
        lo = np.clip(m[sel] - np.nan_to_num(e[sel]), m[sel] * 1e-3, None)
        ax.errorbar(p[sel], m[sel], yerr=[m[sel] - lo, np.nan_to_num(e[sel])], fmt="none", ecolor="gray",
                    elinewidth=0.7, alpha=0.6)
        sc = ax.scatter(p[sel], m[sel], c=c[sel], cmap=cmap, vmin=vmin, vmax=vmax, marker=shapes[j % len(shapes)],
                        s=28, edgecolors="k", linewidths=0.4, label=str(gname) if markers is not None else None)
    if ok.any():
        lo = float(min(p[ok].min(), m[ok].min())) / 1.5
        hi = float(max(p[ok].max(), m[ok].max())) * 1.5
        xs = np.geomspace(lo, hi, 10)
        ax.plot(xs, xs, "k-", lw=0.8, label="identity")
        if threshold is not None:
            f = math.exp(threshold)
            ax.plot(xs, xs * f, "k:", lw=0.7, label=f"factor {f:.2g}")
            ax.plot(xs, xs / f, "k:", lw=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # no overlapping minor labels on short log ranges
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    else:
        ax.text(0.5, 0.5, "no finite positive pairs", transform=ax.transAxes, ha="center")
    ax.set_xlabel(f"predicted {label} (linear model)")
    ax.set_ylabel(f"measured {label} (continuation)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    if colorbar and sc is not None:
        ax.figure.colorbar(sc, ax=ax, label="lr * kappa_i")


def draw_spectrum(ax, result):
    """The Hessian's top spectrum of a linear-fit result: Lanczos eigenvalues of the sample loss and the
    fresh-batch Rayleigh quotients along the same vectors (+- 2 se), with the stability edge 2(1+beta)/lr."""
    sp = result.spectrum
    i = sp.index
    ax.plot(i, sp.eigenvalue, "o-", ms=4, color=plots.COLORS[0], label="Lanczos eigenvalue (fixed sample)")
    ax.errorbar(i, sp.rayleigh, yerr=2 * sp.rayleigh_se, fmt="s", ms=4, color=plots.COLORS[1], capsize=2,
                label="Rayleigh quotient on fresh batches (+- 2 se)")
    edge = 2 * (1 + result.momentum) / result.lr
    ax.axhline(edge, color="r", lw=0.8, ls="--", label=f"stability edge 2(1+beta)/lr = {edge:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("curvature (loss Hessian)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)


def draw_linear_fit(axes, result, threshold: float):
    """Four panels: variance, integrated time, kernel variance ratios (predicted vs measured) and the spectrum."""
    d = result.directions
    draw_predicted_vs_measured(axes[0], d.predicted_variance, d.measured_variance, d.measured_variance_se,
                               d.lr_kappa, "Var(v_i^T theta)", threshold=threshold)
    draw_predicted_vs_measured(axes[1], d.predicted_integrated_time, d.measured_integrated_time,
                               d.measured_integrated_time_se, d.lr_kappa, "integrated autocorrelation time")
    kt = result.kernel_table
    lrk = d.lr_kappa[kt.direction]
    draw_predicted_vs_measured(axes[2], kt.predicted_ratio, kt.measured_ratio, kt.measured_ratio_se, lrk,
                               "kernel variance ratio", markers=kt.kernel, threshold=threshold)
    draw_spectrum(axes[3], result)


# ======================================================================================= details
def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def where_it_breaks(result, threshold: float) -> dict:
    """Per-direction numbers and the lists of directions where the model fails, from a linear-fit result."""
    d = result.directions
    lr_ratio = result.per_kernel("log_ratio")
    z_ratio = result.per_kernel("z_ratio")
    rows = []
    for i in range(result.k):
        rows.append(dict(
            direction=i, lr_kappa=_finite(d.lr_kappa[i]), edge_fraction=_finite(d.edge_fraction[i]),
            stable=bool(d.stable[i]), kappa=_finite(d.kappa[i]), eigenvalue=_finite(d.eigenvalue[i]),
            sigma=_finite(d.sigma[i]), log_variance=_finite(d.log_variance[i]), z_variance=_finite(d.z_variance[i]),
            log_ratio={s: _finite(v) for s, v in zip(result.kernels, lr_ratio[i])},
            z_ratio={s: _finite(v) for s, v in zip(result.kernels, z_ratio[i])},
            tau_predicted=_finite(d.predicted_integrated_time[i]), tau_measured=_finite(d.measured_integrated_time[i]),
            tau_measured_se=_finite(d.measured_integrated_time_se[i]), block_ok=bool(d.block_ok[i]),
            trend=_finite(d.trend[i])))
    stable = d.stable.astype(bool)
    med = d.median_abs_log_ratio
    breaks = dict(
        unstable=[int(i) for i in np.flatnonzero(~stable)],
        near_edge=[int(i) for i in np.flatnonzero(d.edge_fraction > NEAR_EDGE_FRACTION)],
        ratio_off=[int(i) for i in np.flatnonzero(stable & np.isfinite(med) & (med >= threshold))],
        variance_off=[int(i) for i in np.flatnonzero(stable & np.isfinite(d.log_variance)
                                                     & (np.abs(d.log_variance) >= threshold))],
        variance_too_large=[int(i) for i in np.flatnonzero(stable & (d.log_variance >= threshold))],
        variance_too_small=[int(i) for i in np.flatnonzero(stable & (d.log_variance <= -threshold))],
        drifting=[int(i) for i in np.flatnonzero(np.abs(np.nan_to_num(d.trend)) > TREND_MAX)],
        blocks_too_short=[int(i) for i in np.flatnonzero(~d.block_ok.astype(bool))])
    ok = stable & np.isfinite(med) & np.isfinite(d.lr_kappa)
    rho = None
    if ok.sum() >= 3 and np.ptp(med[ok]) > 0 and np.ptp(d.lr_kappa[ok]) > 0:
        from scipy import stats

        rho = _finite(stats.spearmanr(d.lr_kappa[ok], med[ok]).statistic)
    return dict(directions=rows, breaks=breaks, spearman_lr_kappa_vs_misfit=rho,
                lr_kappa_range=[_finite(np.nanmin(d.lr_kappa)), _finite(np.nanmax(d.lr_kappa))],
                stability_edge=2 * (1 + result.momentum))


def breaks_text(result, info: dict, threshold: float) -> str:
    """One paragraph (numbers included) of where the model breaks: what the report shows under the verdict."""
    d, b = result.directions, info["breaks"]
    k = result.k
    f = math.exp(threshold)
    stable = d.stable.astype(bool)

    def ids(xs):
        return ", ".join(str(i) for i in xs) if xs else "none"

    parts = [f"{int(stable.sum())}/{k} directions modelled (lr*kappa {np.nanmin(d.lr_kappa):.3g} .. "
             f"{np.nanmax(d.lr_kappa):.3g}; stability edge 2(1+beta) = {info['stability_edge']:.3g}; "
             f"unstable: {ids(b['unstable'])}; above {NEAR_EDGE_FRACTION:g} of the edge: {ids(b['near_edge'])})"]
    if b["ratio_off"]:
        parts.append("kernel variance ratios off by more than x" + f"{f:g} (median over kernels) in directions "
                     + ", ".join(f"{i} (|log| {d.median_abs_log_ratio[i]:.2f})" for i in b["ratio_off"]))
    else:
        parts.append(f"kernel variance ratios within x{f:g} (median over kernels) in every modelled direction")
    vr = np.exp(d.log_variance[stable]) if stable.any() else np.array([np.nan])
    parts.append(f"measured / predicted variance {np.nanmin(vr):.3g} .. {np.nanmax(vr):.3g}; off by more than "
                 f"x{f:g} in {len(b['variance_off'])}/{k} (too small: {ids(b['variance_too_small'])}; too large: "
                 f"{ids(b['variance_too_large'])})")
    tm, tp = d.measured_integrated_time, d.predicted_integrated_time
    with np.errstate(divide="ignore", invalid="ignore"):
        tr = tm[stable] / tp[stable]
    if np.isfinite(tr).any():
        parts.append(f"measured / predicted integrated time {np.nanmin(tr):.3g} .. {np.nanmax(tr):.3g}")
    parts.append(f"projection drifted by more than {TREND_MAX:g} sd over the continuation: {ids(b['drifting'])}; "
                 f"blocks shorter than 10 correlation times (intervals not honest): {len(b['blocks_too_short'])}/{k}")
    rho = info.get("spearman_lr_kappa_vs_misfit")
    if rho is not None:
        parts.append(f"Spearman correlation of lr*kappa with the ratio misfit {rho:.2f}")
    parts.append(f"with the {result.alternative_kappa_source} curvature instead: ratio statistic "
                 f"{result.alternative_statistic.value:.3g}, variance statistic "
                 f"{result.alternative_variance_statistic.value:.3g}")
    return "; ".join(parts)


# ======================================================================================= the claim
def claim_linear_fit(ctx: RealContext) -> Verdict:
    """The ``linear-model-fit`` verdict on the context's run."""
    from quadsgd.fitting import FIT_THRESHOLD

    out = ctx.out
    S = ctx.branch.step
    s = ctx.sidetrip(*linear_fit_request(ctx))
    st, vs = s.statistic, s.variance_statistic
    fig = "linear-model-fit.png"
    plots.save(lambda axes: draw_linear_fit(axes, s, FIT_THRESHOLD), out / fig, ncols=4, figsize=(5.2, 4.4),
               title=f"Linear model fitted at step {S} (k = {s.k}, lr = {s.lr:g}, momentum {s.momentum:g}) vs a "
                     f"{s.steps}-step constant-lr continuation")
    kernels = ", ".join(s.kernels)
    info = where_it_breaks(s, FIT_THRESHOLD)
    v = Verdict(
        id="linear-model-fit", source="realnet",
        claim="The paper's linear model u <- (I - lr Omega) u + lr xi, fitted at a checkpoint (top Hessian "
              "directions, the gradient noise along them, the run's lr and momentum), predicts the variance ratio "
              "of EMA / two-point / SWA averages of the trajectory's projections on those directions, and their "
              "variance, within a factor 1.5 (App. A.1: the model 'matches the observed training trajectories')",
        statistic=f"median over the modelled directions (k = {s.k}) and kernels ({kernels}) of |log(measured / "
                  f"predicted variance ratio)| of v_i^T theta_t along a {s.steps}-step constant-lr continuation "
                  f"from step {S}",
        value=st.value, comparison="<", threshold=FIT_THRESHOLD, uncertainty=st.se, figure=fig,
        details=dict(
            quote=("for Exponential Moving Average (EMA) and Stochastic Weight Averaging we show that our proposed "
                   "model matches the observed training trajectories on ImageNet (abstract; App. A.1)"),
            where_it_breaks=breaks_text(s, info, FIT_THRESHOLD), variance_statistic_value=vs.value,
            statistic_ci=[st.ci_low, st.ci_high], step=S, lr=s.lr, momentum=s.momentum,
            weight_decay=s.weight_decay, batch_size=s.batch_size, k=s.k,
            steps=s.steps, kernels=list(s.kernels), kappa_source=s.kappa_source, statistic=asdict(st),
            variance_statistic=asdict(vs), alternative_kappa_source=s.alternative_kappa_source,
            alternative_statistic=asdict(s.alternative_statistic),
            alternative_variance_statistic=asdict(s.alternative_variance_statistic),
            eigenvalues=[_finite(x) for x in s.eigenvalues], rayleigh=[_finite(x) for x in s.rayleigh],
            noise_std=[_finite(x) for x in s.noise_std],
            subspace_loss_reduction=[asdict(x) for x in s.subspace_loss_reduction],
            lanczos=asdict(s.lanczos), timing=s.timing, wall_s=s.wall_s,
            lanczos_s_per_iteration=s.timing["lanczos"]["wall_s"] / max(s.lanczos.matvecs, 1),
            continuation_s_per_1000_steps=1000.0 * s.timing["continuation"]["wall_s"] / max(s.steps + s.burn_in, 1),
            **info))
    v.check("variance", vs.value, "<", FIT_THRESHOLD,
            "median over directions of |log(measured / predicted Var(v_i^T theta))| (the noise model sigma_i)")
    return premises.attach(v, [subspace_premise(s)])


def subspace_premise(s) -> "premises.Premise":
    """The model's premise: the top-k subspace fitted at S is the one the continuation moves in until its end (the
    smallest cosine of the principal angles between the directions at S and the end point's Hessian applied to
    them, :func:`realnet.sidetrips.linear_fit.subspace_stability`, >= :data:`SUBSPACE_COS_MIN`). NaN (not
    measured) is not met."""
    cos = np.asarray(getattr(s, "subspace_cos", []), dtype=float)
    worst = float(cos.min()) if cos.size else math.nan
    return premises.Premise(
        id="subspace-stable", title="the top-k subspace fitted at S holds over the continuation",
        applies_to="linear-model-fit",
        conditions=(premises.Condition(
            "min_principal_cos", f"smallest cosine of the principal angles between the {s.k} directions at step "
            f"{s.step} and the Hessian at the end of the {s.steps}-step continuation applied to them", worst, ">=",
            SUBSPACE_COS_MIN),),
        details=dict(cosines=[float(c) for c in cos]))


LINEAR_MODEL_FIT = RealClaim("linear-model-fit", claim_linear_fit, lambda ctx: [linear_fit_request(ctx)])
