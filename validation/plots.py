"""Figures of the validation report. Every ``draw_*`` function takes a matplotlib ``ax`` and only draws."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def save(draw, path: Path, title: str = "", figsize=(6.4, 4.4), ncols=1):
    """Create a figure with ``ncols`` axes, call ``draw(ax)`` (or ``draw(axes)``), write PNG atomically."""
    fig, axes = plt.subplots(1, ncols, figsize=(figsize[0] * ncols, figsize[1]), squeeze=False)
    draw(axes[0, 0] if ncols == 1 else axes[0])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
