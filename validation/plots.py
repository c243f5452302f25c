"""Figures of the validation report. Every ``draw_*`` function takes a matplotlib ``ax`` and only draws;
the real-network ones take the typed side-trip results and tables of :mod:`realnet.sidetrips`."""
from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sgdtraj.files import atomic_output  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


_ENABLED = [True]


@contextlib.contextmanager
def disabled():
    """``with plots.disabled(): ...``: :func:`save` draws nothing inside the block (the caller needs only the
    numbers, e.g. the controls' replicates after the first)."""
    _ENABLED.append(False)
    try:
        yield
    finally:
        _ENABLED.pop()


def save(draw, path: Path, title: str = "", figsize=(6.4, 4.4), ncols=1):
    """Create a figure with ``ncols`` axes, call ``draw(ax)`` (or ``draw(axes)``), write PNG atomically (nothing
    inside :func:`disabled`)."""
    if not _ENABLED[-1]:
        return Path(path)
    fig, axes = plt.subplots(1, ncols, figsize=(figsize[0] * ncols, figsize[1]), squeeze=False)
    draw(axes[0, 0] if ncols == 1 else axes[0])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def draw_loss_curves(ax, times, theory: dict, sim: dict, labels: dict, level=None):
    """Theory curves (lines) over simulated means with 95% bands (mean +- 1.96 SE); log-log axes."""
    if level is not None:
        ax.axhline(level, color="gray", lw=0.8, ls=":", label="target level")
    for i, key in enumerate(theory):
        c = COLORS[i % len(COLORS)]
        t_all = np.arange(theory[key].size)
        ax.plot(t_all[1:], theory[key][1:], color=c, lw=1.2, label=f"{labels[key]} (theory)")
        if key in sim:
            x = sim[key]
            mean = x.mean(axis=0)
            se = x.std(axis=0, ddof=1) / math.sqrt(x.shape[0])
            ax.fill_between(times, mean - 1.96 * se, mean + 1.96 * se, color=c, alpha=0.25, lw=0)
            sel = np.unique(np.geomspace(1, times.size, 30).astype(int) - 1)  # evenly spaced on a log axis
            ax.plot(times[sel], mean[sel], "o", ms=3, color=c,
                    label=f"{labels[key]} (simulated mean, 95% band)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step t")
    ax.set_ylabel("loss 0.5 u^T Omega u")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def draw_per_coordinate(ax, curves: dict, stationary: dict, T: int):
    t = np.arange(T + 1)
    for i, name in enumerate(("fast", "slow")):
        c = COLORS[i]
        ax.plot(t[1:], curves[f"{name} SGD"][1:], color=c, lw=1.2, label=f"{name}: SGD (theory)")
        ax.plot(t[1:], curves[f"{name} EMA"][1:], color=c, lw=1.2, ls="--", label=f"{name}: EMA (theory)")
        s_sgd, s_ema = stationary[name]
        ax.axhline(s_sgd, color=c, lw=0.6, ls=":")
        ax.plot([T], [s_sgd], "o", color=c, ms=5, label=f"{name}: SGD stationary (simulated)")
        ax.plot([T], [s_ema], "s", color=c, ms=5, label=f"{name}: EMA stationary (simulated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step t")
    ax.set_ylabel("loss contribution of the coordinate")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def draw_radius(ax, lrs, measured, se, exact, paper, slope):
    ax.errorbar(lrs, measured, yerr=1.96 * se * measured, fmt="o", ms=4, label="simulated RMS distance (95% CI)")
    ax.plot(lrs, exact, "-", lw=1.2, label="exact sqrt(tr Cov)")
    ax.plot(lrs, paper, "--", lw=1.2, label="eq. 13: ||c|| sqrt(lr/2)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("stationary distance to the minimum")
    ax.text(0.05, 0.9, f"fitted slope {slope:.4f} (sqrt: 0.5)", transform=ax.transAxes, fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def draw_effective_lr(ax, deltas, measured: dict, theory: dict, omega, lr, xlabel, formula):
    deltas = np.asarray(deltas)
    for i, kappa in enumerate(omega):
        c = COLORS[i % len(COLORS)]
        th = np.array([theory[D][i] for D in deltas]) / lr
        me = np.array([measured[D][i] for D in deltas]) / lr
        ax.plot(deltas, th, "-", color=c, lw=1.2, label=f"kappa={kappa:g}: {formula}")
        ax.plot(deltas, me, "o", color=c, ms=4, label=f"kappa={kappa:g}: simulated")
    ax.axhline(0.5, color="gray", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("effective lr / lr")
    ax.set_ylim(0.4, 1.05)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def draw_npoint(ax, ns, deltas, measured: dict, theory: dict, omega, lr):
    """Effective lr / lr vs delta for each n: eq. 21 (lines) and simulation (markers), fastest and slowest kappa."""
    for j, n in enumerate(ns):
        c = COLORS[j % len(COLORS)]
        for i, ls, mk in ((0, "-", "o"), (len(omega) - 1, "--", "s")):
            th = np.array([theory[(n, D)][i] for D in deltas]) / lr
            me = np.array([measured[(n, D)][i] for D in deltas]) / lr
            ax.plot(deltas, th, ls, color=c, lw=1.1, label=f"n={n}, kappa={omega[i]:g} (eq. 21)")
            ax.plot(deltas, me, mk, color=c, ms=4)
        ax.axhline(1.0 / n, color=c, lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("delta (steps between points)")
    ax.set_ylabel("effective lr / lr  (markers: simulated)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(True, which="both", alpha=0.3)


def draw_table1(ax, rows: dict):
    names = list(rows)
    x = np.arange(len(names))
    w = 0.25
    ax.bar(x - w, [rows[n]["dist_ratio"] for n in names], w, label="RMS |avg - side-trip| / SGD spread")
    ax.bar(x, [rows[n]["dist_ratio_slow"] for n in names], w, label="same, slow coordinate")
    ax.bar(x + w, [rows[n]["loss_gap"] for n in names], w, label="|loss gap| / SGD loss")
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_xticks(x, names)
    ax.set_ylabel("ratio")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


def draw_covariance_comparison(ax, simulated, exact, paper):
    labels = ["F11", "F12", "F21", "F22"]
    x = np.arange(4)
    w = 0.27
    ax.bar(x - w, simulated.ravel(), w, label="simulated")
    ax.bar(x, exact.ravel(), w, label="exact (Lyapunov/eigen)")
    ax.bar(x + w, paper.ravel(), w, label="eq. 19 as printed")
    ax.set_xticks(x, labels)
    ax.set_ylabel("stationary covariance entry (whitened u)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


# ------------------------------------------------------------------------------------ real network
def draw_lr_sweep(axes, result):
    """Fig. 2 from an lr-sweep result: loss vs single-step size; left: full log range, right: zoom around the
    minima (linear)."""
    c = result.curve
    lr, train, held, held_std = c.lr, c.train_loss, c.heldout_mean, c.heldout_std
    for ax, log in zip(axes, (True, False)):
        sel = lr > 0 if log else (lr <= 2.5 * max(result.best_lr_train, result.best_lr_heldout))
        ax.plot(lr[sel], train[sel], "-o", ms=2.5, color=COLORS[0], label="training batch")
        ax.plot(lr[sel], held[sel], "-o", ms=2.5, color=COLORS[1], label="held-out batches (mean)")
        ax.fill_between(lr[sel], (held - held_std)[sel], (held + held_std)[sel], color=COLORS[1], alpha=0.35, lw=0,
                        label="held-out +- std")
        ax.fill_between(lr[sel], c.heldout_min[sel], c.heldout_max[sel], color=COLORS[1], alpha=0.12, lw=0,
                        label="held-out min/max")
        ax.axhline(result.train_start_loss, color="gray", lw=0.6, ls=":")
        ax.set_xlabel("step size (learning rate of the single step)")
        ax.set_ylabel("loss after one step")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)


def draw_fixed_batch(axes, table):
    """Fig. 3: loss along the interpolation between corresponding fixed-batch GD points, per GD step
    (``table``: a fixed-batch result's ``interpolation``)."""
    steps = sorted(set(table.gd_step.tolist()))
    cmap = plt.get_cmap("viridis")
    for ax, key, name in zip(axes, ("train_loss", "heldout_mean"), ("training batch", "held-out batches")):
        for j in steps:
            sel = table.gd_step == j
            ax.plot(table.alpha[sel], getattr(table, key)[sel], color=cmap(j / max(1, steps[-1])), lw=1.1,
                    label=f"GD step {j}")
        ax.set_xlabel("interpolation alpha (0: from first checkpoint, 1: from second)")
        ax.set_ylabel(f"loss on the {name}")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)


def step0_marker(ax, value: float, label: str = "at the branch point (step 0)") -> None:
    """Step 0 on a log step axis: a dotted horizontal line at its value (a log axis has no 0), not a point drawn
    at a made-up x."""
    if value is not None and np.isfinite(value):
        ax.axhline(value, color="gray", ls=":", lw=1.0, label=label)


def draw_averaging(axes, result):
    """Fig. 5 of one averaging side-trip: :func:`draw_averaging_replicates` of one replicate."""
    draw_averaging_replicates(axes, [result])


def draw_divergence(axes, distances, evaluations, window: int | None = None):
    """Fig. 6 of one divergence side-trip (its ``distances`` and ``evaluations`` tables):
    :func:`draw_divergence_replicates` of one replicate."""
    draw_divergence_replicates(axes, [(distances, evaluations)], window)


def draw_alignment(axes, records, different):
    """Fig. 7: cosine of the fixed batch's gradient with its start (left) and its norm ratio (right)
    (an alignment result's ``records`` and ``different_batches``)."""
    t = np.maximum(records.t.astype(float), 0.5)
    ax = axes[0]
    ax.plot(t, records.cos_start_constant, label="fixed batch, constant lr")
    ax.plot(t, records.cos_start_linear, label="fixed batch, linearly decaying lr")
    ax.plot(t, records.cos_between_schedules, label="fixed batch, between the two schedules")
    ax.plot(t, records.cos_train_vs_fixed_constant, label="training batch of the step vs fixed batch")
    ax.axhspan(different.cos_mean - 2 * different.cos_std, different.cos_mean + 2 * different.cos_std,
               color="gray", alpha=0.2, label="different batches at the start (mean +- 2 std)")
    ax.set_xscale("log")
    ax.set_xlabel("steps after the checkpoint")
    ax.set_ylabel("cosine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    ax = axes[1]
    ax.plot(t, records.norm_ratio_constant, label="constant lr")
    ax.plot(t, records.norm_ratio_linear, label="linearly decaying lr")
    ax.set_xscale("log")
    ax.set_xlabel("steps after the checkpoint")
    ax.set_ylabel("||g_b(theta_t)|| / ||g_b(theta_S)||")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def draw_endpoint_distance(ax, steps, d, branch):
    ax.plot(steps, d, "-o", ms=3, label="|theta_t - theta'_end|")
    ax.axvline(branch, color="gray", lw=0.8, ls=":", label="branch point (batch orders differ after it)")
    ax.set_xlabel("training step t")
    ax.set_ylabel("L2 distance to the independent end point")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def draw_batch_size(ax, rows, b_noise: float = float("nan")):
    """Fig. 13: each sweep's maximum single-step loss drop (training batch, held-out mean) against the batch size,
    log-log, with the measured gradient noise scale B_noise marked."""
    b = [r["batch_size"] for r in rows]
    ax.plot(b, [max(r["train_drop"], 1e-12) for r in rows], "-o", label="training batch: start - best-step loss")
    ax.plot(b, [max(r["heldout_drop"], 1e-12) for r in rows], "-s", label="held-out batches: start - best-step loss")
    if math.isfinite(b_noise):
        ax.axvline(b_noise, color="k", ls="--", lw=1.0, label=f"B_noise = tr(Sigma)/|G|^2 = {b_noise:.3g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("maximum single-step loss drop")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _band(ax, x, ys, color, label, style="-", marker=None):
    """Mean over replicates (rows of ``ys``) as a line, their range as a band."""
    ys = np.asarray(ys, dtype=float)
    if ys.ndim != 2 or ys.shape[1] == 0:
        return  # nothing recorded (e.g. a trajectory without points after the branch)
    many = ys.shape[0] > 1
    with warnings.catch_warnings():  # an all-NaN column (a quantity not measured there) stays NaN, not drawn
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi, mean = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), np.nanmean(ys, axis=0)
    if many:
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
    ax.plot(x, mean, ls=style or "none", color=color, lw=1.3, marker=marker, ms=4, mfc="none",
            label=(f"{label} (mean; band: range over {ys.shape[0]} replicates)" if many else label) if label else None)


def draw_averaging_replicates(axes, results):
    """Fig. 5 over replicates: validation accuracy and loss of each average (dashed) and its equivalent side-trip
    (markers) against k (log axis), mean with the replicates' range as a band; the branch points' mean (k = 0) as
    a dotted line. ``results``: one averaging result per replicate (same kernels and report steps)."""
    first = results[0]
    for ax, key, label in zip(axes, ("val_acc", "val_loss"), ("validation accuracy", "validation loss")):
        ks = [t.k for t in first.trajectory if t.k > 0]
        traj = [[getattr(t, key) for t in r.trajectory if t.k > 0] for r in results]
        _band(ax, ks, traj, "k", "trajectory")
        at0 = [next((getattr(t, key) for t in r.trajectory if t.k == 0), None) for r in results]
        at0 = [float(x) for x in at0 if x is not None]
        step0_marker(ax, float(np.mean(at0)) if at0 else None, "at the branch points (step 0, mean)")
        for i, spec in enumerate(first.kernels):
            c = COLORS[i % len(COLORS)]
            kk = [x.k for x in first.kernels[spec].results if x.k > 0]
            avg = [[getattr(x.average, key) for x in r.kernels[spec].results if x.k > 0] for r in results]
            side = [[getattr(x.sidetrip, key) for x in r.kernels[spec].results if x.k > 0] for r in results]
            _band(ax, kk, avg, c, f"{spec}: average", "--")
            _band(ax, kk, side, c, f"{spec}: equivalent side-trip", "", marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("steps after the branch point")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=5)


def draw_divergence_replicates(axes, results, window: int | None = None):
    """Fig. 6 over replicates: distances between side-trips (left) and validation losses of A, lr/2, the two-point
    average and B (right) against t (log axis), mean with the replicates' range as a band; step 0 as a dotted line;
    ``window``: the shortest Lemma 2 window over the replicates (steps), the steps beyond it shaded. ``results``:
    divergence results, or (distances, evaluations) table pairs."""
    results = [r if isinstance(r, tuple) else (r.distances, r.evaluations) for r in results]
    dists, evals = [d for d, _ in results], [e for _, e in results]
    t = dists[0].t.astype(float)
    pos = t > 0
    if window is not None:
        for ax in axes[:2]:
            ax.axvspan(max(window, 0.5), max(t.max(), 1.0) * 1.05, color="gray", alpha=0.12,
                       label=f"outside Lemma 2's window ({window} steps, shortest replicate)")
    ax = axes[0]
    for i, (key, label) in enumerate((("dist_A_B", "|theta - theta'| (other batch order)"),
                                      ("dist_twopoint_H", "|two-point avg at lr - theta at lr/2|"),
                                      ("dist_A_H", "|theta at lr - theta at lr/2|"),
                                      ("dist_A_start", "|theta - theta_S|"))):
        _band(ax, t[pos], [getattr(d, key)[pos] for d in dists], COLORS[i], label)
    ax.set_xscale("log")
    ax.set_xlabel("steps after the branch point")
    ax.set_ylabel("L2 distance in weight space")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    ax = axes[1]
    ev0 = evals[0]
    for i, model in enumerate(("A", "H", "twopoint", "B")):
        sel0 = (ev0.model == model) & (ev0.t > 0)
        ts = ev0.t[sel0].astype(float)
        ys = [e.val_loss[(e.model == model) & (e.t > 0)] for e in evals]
        name = {"A": "lr", "H": "lr/2", "twopoint": "two-point average at lr", "B": "lr, other batch order"}[model]
        _band(ax, ts, ys, COLORS[i], name, "-", marker="o")
    at0 = [e.val_loss[(e.t == 0) & (e.model == "A")] for e in evals]
    at0 = [float(a[0]) for a in at0 if a.size]
    step0_marker(ax, float(np.mean(at0)) if at0 else None, "at the branch points (step 0, mean)")
    ax.set_xscale("log")
    ax.set_xlabel("steps after the branch point")
    ax.set_ylabel("validation loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
