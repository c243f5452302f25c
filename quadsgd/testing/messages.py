r"""The text of a check's verdict: what was tested, the largest discrepancy, the model and a reproducer.

A failure message (the AssertionError of :func:`~quadsgd.testing.assert_stationary_matches` /
:func:`~quadsgd.testing.assert_curve_matches`) reads::

    quadsgd.testing: the simulation contradicts the predicted stationary covariance (p = ... <= alpha = ...)
      test: <the statistic and its distribution>
      largest discrepancy: Var[0]: predicted ..., simulated ... (z = ..., relative error -4.8%)
      model: LinearModel(omega=[...], lr=..., momentum=...)  [diagonal, d=1, eigenvalues ..., mixing time ...]
      kernel: NPoint(n=3, delta=4)
      simulation: <chains, method, steps, seeds>
      reproduce: m = qs.LinearModel(np.array([...]), lr=..., momentum=...); k = qs.parse_kernel("npoint:3:4")

The reproducer writes the kernel in the one spec grammar (``str(kernel)`` / :func:`quadsgd.parse_kernel`,
which round-trip exactly); a kernel without a spec (a user's own class) is written as its ``repr``.
The "largest discrepancy" entries are dicts (``where``, ``predicted``, ``simulated``, ``z``,
``relative_error``, and ``se`` / ``entry`` / ``time`` where they apply), also returned as
:attr:`CheckResult.worst <quadsgd.testing.CheckResult>`.
"""
from __future__ import annotations

import math

import numpy as np

from ..kernels import AveragingKernel, parse_kernel
from ..model import LinearModel
from .mixing import mixing_time
from .statistics import HotellingTest, VarianceTest, WishartTest, ZTest, second_moment_zscores


def arr(a, precision=6) -> str:
    """One-line text of an array: nested lists of numbers with ``precision`` significant digits."""
    a = np.asarray(a)
    if a.ndim == 0:
        return f"{float(a):.{precision}g}"
    return "[" + ", ".join(arr(x, precision) for x in a) + "]"


# ============================================================================ model and kernel
def model_text(m: LinearModel) -> tuple[str, str]:
    """(summary, copy-paste reproducer) of a model."""
    if m.diagonal:
        kind = "diagonal"
    elif m.symmetric:
        kind = "dense symmetric"
    else:
        kind = "dense normal" if m.normal else "dense non-normal"
    extra = ""
    rep_extra = ""
    if m.hessian is not None and not (m.hessian is m.omega or np.array_equal(m.hessian, m.omega)):
        extra = f", hessian={arr(m.hessian)}"
        rep_extra = f", hessian=np.array({np.asarray(m.hessian).tolist()!r})"
    summary = (f"LinearModel(omega={arr(m.omega)}, lr={m.lr:.6g}, momentum={m.momentum:g}{extra})  "
               f"[{kind}, d={m.dim}, eigenvalues {arr(np.asarray(m.eigenvalues), 4)}, "
               f"lr/lr_bound={m.lr / m.lr_bound:.4g}, mixing time {mixing_time(m):.4g} steps]")
    rep = (f"m = qs.LinearModel(np.array({np.asarray(m.omega).tolist()!r}), lr={m.lr!r}, "
           f"momentum={m.momentum!r}{rep_extra})")
    return summary, rep


def kernel_reproducer(k: AveragingKernel) -> str:
    """``k = qs.parse_kernel("<spec>")`` when the spec round-trips to an equal kernel of the same type,
    else ``k = <repr>``."""
    spec = str(k)
    try:
        back = parse_kernel(spec)
    except ValueError:
        back = None
    if back is not None and type(back) is type(k) and back == k:
        return f'k = qs.parse_kernel("{spec}")'
    return f"k = {k!r}"


def kernel_line(k: AveragingKernel, ks) -> str:
    """``kernel: <repr>`` (and the list of all kernels when several were tested)."""
    line = f"  kernel: {k!r}"
    if len(ks) > 1:
        line += f" (of {len(ks)}: {', '.join(repr(x) for x in ks)})"
    return line


# ============================================================================ largest discrepancies
def covariance_worst(S, P, n: int) -> dict:
    """Largest |z| entry (upper triangle) of the second moments S of n zero-mean samples against P."""
    Z = second_moment_zscores(S, P, n)
    dg = np.diag(P)
    iu = np.triu_indices(P.shape[0])
    k = int(np.argmax(np.abs(Z[iu])))
    i, j = int(iu[0][k]), int(iu[1][k])
    scale = math.sqrt(dg[i] * dg[j])
    rel = (S[i, j] - P[i, j]) / abs(P[i, j]) if abs(P[i, j]) > 1e-12 * scale else math.inf
    return dict(where=f"Cov[{j}, {i}]" if i != j else f"Var[{i}]", predicted=float(P[i, j]),
                simulated=float(S[i, j]), z=float(Z[i, j]), relative_error=float(rel),
                relative_to_scale=float((S[i, j] - P[i, j]) / scale), entry=(i, j))


def variance_worst(r: VarianceTest, v) -> dict:
    """Largest |z| variance of a :class:`VarianceTest` against the predicted variances v (d,)."""
    N = r.dof
    s = r.chi2 / N * v
    z = (s - v) / (v * math.sqrt(2.0 / N))
    i = int(np.argmax(np.abs(z)))
    return dict(where=f"Var[{i}]", predicted=float(v[i]), simulated=float(s[i]), z=float(z[i]),
                relative_error=float((s[i] - v[i]) / v[i]), entry=(i, i))


def mean_worst(r: ZTest, pred: float, what: str) -> dict:
    rel = (r.mean - pred) / abs(pred) if pred != 0 else math.inf
    return dict(where=f"mean {what}", predicted=float(pred), simulated=r.mean, z=float(r.z),
                relative_error=float(rel), se=r.se)


def curve_worst(times, r: int, pred, sim, se, z) -> dict:
    rel = (sim[r] - pred[r]) / abs(pred[r]) if pred[r] != 0 else math.inf
    return dict(where=f"t = {int(times[r])}", predicted=float(pred[r]), simulated=float(sim[r]), se=float(se[r]),
                z=float(z), relative_error=float(rel), time=int(times[r]))


def fmt_worst(w: dict) -> str:
    """One line of a largest-discrepancy dict."""
    rel = w["relative_error"]
    if rel is None:
        reltxt = "n/a"
    elif not math.isfinite(rel):
        reltxt = "inf (predicted 0)"
    else:
        reltxt = f"{rel:+.4%}"
    out = (f"{w['where']}: predicted {w['predicted']:.6g}, simulated {w['simulated']:.6g}"
           + (f" +- {w['se']:.3g}" if "se" in w else "")
           + (f" (z = {w['z']:.3g}, " if w["z"] is not None else " (")
           + f"relative error {reltxt}")
    if "relative_to_scale" in w and w["entry"][0] != w["entry"][1]:
        i, j = w["entry"]
        out += f", {w['relative_to_scale']:+.4g} x sqrt(Var[{i}] Var[{j}])"
    return out + ")"


# ============================================================================ what was tested
def wishart_text(r: WishartTest) -> str:
    d = r.diag_chi2.size
    K = r.component_pvalues.size
    kmin = r.smallest
    q, dof, p_all = r.diag_chi2, r.dof, r.component_pvalues
    if kmin < d:
        comp = (f"T[{kmin},{kmin}]^2 = {q[kmin]:.6g} (chi2({dof[kmin]}): {dof[kmin]} +- "
                f"{math.sqrt(2 * dof[kmin]):.4g}; residual variance of coordinate {kmin} given coordinates "
                f"< {kmin}, whitened by the prediction, ratio {q[kmin] / dof[kmin]:.5g})")
    else:
        il, jl = np.tril_indices(d, -1)
        i, j = int(il[kmin - d]), int(jl[kmin - d])
        comp = (f"T[{i},{j}] = {r.T[i, j]:.4g} (N(0,1); coupling of coordinate {i} to coordinate {j} "
                f"in the prediction's whitened coordinates)")
    name = (f"exact Wishart test of Cov = predicted (Bartlett decomposition of the whitened scatter "
            f"matrix: {K} independent components")
    if r.combine == "sidak":
        return f"{name}, Sidak-combined min p); smallest component p = {p_all[kmin]:.3g} at {comp}"
    return (f"{name}, Fisher-combined: -2 sum log p = {r.statistic:.5g} ~ chi2({2 * K})); smallest component "
            f"p = {p_all[kmin]:.3g} at {comp}")


def variance_text(r: VarianceTest) -> str:
    d = r.component_pvalues.size
    name = (f"chi-square test of the variances (d = {d}; sum x_i^2 / predicted_i ~ chi2({r.dof}) per "
            f"coordinate, two-sided; exact for independent coordinates, conservative otherwise")
    if r.combine == "sidak":
        kmin = int(np.argmin(r.component_pvalues))
        return f"{name}; Sidak-combined min p = {r.component_pvalues[kmin]:.3g} at coordinate {kmin})"
    return f"{name}; Fisher: -2 sum log p = {r.statistic:.5g} ~ chi2({2 * d}))"


def mean_text(r: ZTest, what: str, rtol: float) -> str:
    if r.deterministic:
        return f"deterministic {what} (standard error 0): relative tolerance {rtol:g}"
    return (f"two-sided z-test of the mean of {what} over {r.n} i.i.d. chains (z = (mean - predicted) / "
            f"(sd / sqrt(N)), CLT); z = {r.z:.4g}")


def bonferroni_curve_text(n: int, z_abs: float, pz_min: float) -> str:
    return (f"max |z| over {n} records (z = (mean loss over chains - predicted) / standard error from "
            f"the per-chain losses), Bonferroni; max |z| = {z_abs:.4g}, smallest record p = {pz_min:.3g}")


def hotelling_text(r: HotellingTest, n: int, chains: int, z_abs: float) -> str:
    return (f"Hotelling T^2 over {n} records with the sample covariance of the per-chain losses "
            f"(F({r.rank}, {chains - r.rank}) approximation); T^2 = {r.T2:.5g}, max |z| = {z_abs:.4g}")


# ============================================================================ the whole message
def head_lines(passed: bool, what: str, p: float, alpha: float, text: str, ks, kp_min: float, worst: dict,
               model: LinearModel, k: AveragingKernel) -> tuple[list[str], str]:
    """The lines common to every verdict (header .. kernel) and the model's reproducer."""
    summary, rep = model_text(model)
    lines = [f"quadsgd.testing: the simulation {'agrees with' if passed else 'contradicts'} the predicted "
             f"{what} (p = {p:.3g} {'>' if passed else '<='} alpha = {alpha:g})",
             f"  test: {text}"
             + (f"; Bonferroni over {len(ks)} kernels (kernel p = {kp_min:.3g})" if len(ks) > 1 else ""),
             f"  largest discrepancy: {fmt_worst(worst)}",
             f"  model: {summary}",
             kernel_line(k, ks)]
    return lines, rep


def reproduce_line(model_rep: str, k: AveragingKernel) -> str:
    return f"  reproduce: {model_rep}; {kernel_reproducer(k)}"
