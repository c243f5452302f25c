r"""Figures of sweep tables: plotting functions that take a matplotlib ``ax`` and a table and only draw.

* :func:`plot_loss_curves` (paper Fig. 9 / 11a), :func:`plot_loss_per_kappa` (Fig. 11b), :func:`plot_line`
  (a quantity over a parameter, e.g. eq. 20 over delta), :func:`plot_heatmap` (a quantity over two
  parameters); :func:`select_rows` picks the rows they draw;
* :data:`FIGURES` -- the figure kinds of spec files (``[[figures]] kind = ...``) -> plotting function and
  the quantities it needs; the figure's options are the function's keyword arguments;
* :func:`draw_figures` -- one file per figure spec (``file``, ``kind``, ``size``, ``dpi``, options), each
  written atomically (:func:`sgdtraj.files.atomic_output`).

Kernel labels are built from the kernel's class name and its ``params`` (the table's ``kernel`` column
and the point's parameter columns), so a newly registered kernel is labelled without editing this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgdtraj.files import atomic_output

from .quantities import kernel_class

__all__ = ["plot_loss_curves", "plot_loss_per_kappa", "plot_line", "plot_heatmap", "select_rows", "FIGURES",
           "FIGURE_KEYS", "FigureKind", "draw_figures"]

#: the keys of a figure spec that are not options of the plotting function
FIGURE_KEYS = ("file", "kind", "size", "dpi")

_SYMBOL = {"lr": "λ", "momentum": "β", "delta": "Δ", "decay": "a", "window": "W", "kappa": "κ",
           "n": "n", "steps": "T", "chains": "chains", "dim": "d"}
#: display names of kernels by class name (the class name is used for others)
_KERNEL_LABEL = {"Last": "SGD (last iterate)", "TwoPoint": "two-point", "NPoint": "n-point", "SWA": "SWA",
                 "EMA": "EMA", "Kernel": "kernel"}
#: how a kernel parameter is shown in a label (None: not shown; others: "symbol = value")
_PARAM_LABEL = {
    "decay": lambda v: f"1/a = {1.0 / float(v):.4g}",
    "delta": lambda v: f"Δ = {int(v)}",
    "n": lambda v: f"n = {int(v)}",
    "window": lambda v: f"W = {int(v)}",
    "weights": None,
}


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def _kernel_label(row) -> str:
    """``EMA (1/a = 450)``, ``n-point (n = 3, Δ = 10)``: display name and the kernel's parameters."""
    name = row.get("kernel")
    base = _KERNEL_LABEL.get(name, str(name))
    try:
        params = kernel_class(name).params
    except ValueError:
        params = ()
    extra = []
    for p in params:
        show = _PARAM_LABEL.get(p, lambda v, p=p: f"{_SYMBOL.get(p, p)} = {_fmt(v)}")
        if show is not None and _present(row.get(p)):
            extra.append(show(row[p]))
    return base + (f" ({', '.join(extra)})" if extra else "")


def _present(v) -> bool:
    import pandas as pd

    return not pd.isna(v)


def select_rows(table, select=None):
    """Rows of ``table`` matching ``select``: a dict {column: value or list of values} (AND), or a list of
    such dicts (OR). Float values match within a relative 1e-12."""
    import pandas as pd

    if select is None:
        return table
    conds = [select] if isinstance(select, dict) else list(select)
    mask = pd.Series(False, index=table.index)
    for cond in conds:
        m = pd.Series(True, index=table.index)
        for col, want in cond.items():
            if col not in table.columns:
                raise ValueError(f"select: unknown column {col!r}; columns: {', '.join(map(str, table.columns))}")
            wants = want if isinstance(want, (list, tuple)) else [want]
            colv = table[col]
            hit = pd.Series(False, index=table.index)
            for w in wants:
                if isinstance(w, (int, float)) and not isinstance(w, bool) and pd.api.types.is_numeric_dtype(colv):
                    hit |= np.isclose(colv.astype(float), float(w), rtol=1e-12, atol=0.0)
                else:
                    hit |= colv == w
            m &= hit
        mask |= m
    return table[mask]


def _series_label(row, series) -> str:
    parts = [f"{_SYMBOL.get(c, c)} = {_fmt(row[c])}" for c in series if c in row and _present(row[c])]
    return ", ".join(parts)


def _group_keys(df, cols):
    cols = [c for c in cols if c in df.columns]
    if not cols:
        return [((), df)]
    return [((k,) if not isinstance(k, tuple) else k, g) for k, g in df.groupby(cols, sort=False, dropna=False)]


def plot_loss_curves(ax, table, *, series=("lr",), select=None, theory="expected_loss",
                     simulation="sim_loss", stationary="stationary_loss", logx=True, logy=True, title=None,
                     legend="upper right"):
    r"""Loss versus step (paper Fig. 9 / 11a): exact expected-loss lines, simulated means with
    +-2 standard-error bars, and the stationary loss as a dotted asymptote, one colour per curve.

    table: a sweep table (quantity, kernel, time, value, stderr + parameters). series: parameter columns
    that distinguish curves besides the kernel. select: rows to draw (see :func:`select_rows`).
    """
    df = select_rows(table, select)
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    cols = [c for c in list(series) + ["kernel"] if c in df.columns]
    curves = df[df["quantity"].isin([theory, simulation])]
    colors = iter(_colors())
    kinds = set()
    for key, g in _group_keys(curves, cols):
        row = g.iloc[0]
        label = ", ".join(x for x in (_series_label(row, series), _kernel_label(row)) if x)
        c = next(colors)
        th = g[g["quantity"] == theory].sort_values("time")
        sm = g[g["quantity"] == simulation].sort_values("time")
        if len(th):
            ax.plot(th["time"], th["value"], color=c, lw=1.6, label=label)
            kinds.add("lines: exact expected loss")
        if len(sm):
            ax.errorbar(sm["time"], sm["value"], yerr=2 * sm["stderr"], fmt="o", ms=3, color=c, alpha=0.8,
                        elinewidth=0.8, label=None if len(th) else label)
            chains = f" ({int(row['chains'])} chains)" if "chains" in row and _present(row["chains"]) else ""
            kinds.add(f"dots: simulated mean ± 2 s.e.{chains}")
        if stationary:
            st = df[(df["quantity"] == stationary)]
            for k, v in zip(cols, key):
                st = st[(st[k] == v)] if not (isinstance(v, float) and math.isnan(v)) else st
            if len(st):
                ax.axhline(float(st["value"].iloc[0]), color=c, ls=":", lw=1.0)
                kinds.add("dotted: stationary loss")
    if not kinds:
        raise ValueError(f"plot_loss_curves: no rows of quantity {theory!r} or {simulation!r} to draw")
    _axes(ax, logx, logy, "step t", r"loss $\frac{1}{2}\,\hat u^\top \Omega\, \hat u$")
    ax.grid(True, which="major", alpha=0.3)
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    proxies = {"exact": Line2D([], [], color="0.3", lw=1.6),
               "dots": Line2D([], [], color="0.3", marker="o", ls="", ms=3),
               "dotted": Line2D([], [], color="0.3", ls=":", lw=1.0)}
    for kind in sorted(kinds, key=lambda k: ("lines" not in k, "dots" not in k)):
        handles.append(proxies["exact" if kind.startswith("lines") else kind.split(":")[0]])
        labels.append(kind.split(": ", 1)[1])
    ax.legend(handles, labels, fontsize=8, loc=legend)
    if title:
        ax.set_title(title, fontsize=9)


def plot_loss_per_kappa(ax, table, *, select=None, quantity="expected_loss_per_kappa",
                        stationary="stationary_loss_per_kappa", logx=True, logy=True, title=None,
                        legend="best"):
    r"""Contribution of each eigenvalue group to the loss versus step (paper Fig. 11b): one colour per
    kappa (fast/slow), one line style per kernel, stationary contributions dotted."""
    df = select_rows(table, select)
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    cur = df[df["quantity"] == quantity]
    if not len(cur):
        raise ValueError(f"plot_loss_per_kappa: no rows of quantity {quantity!r} to draw")
    kappas = np.sort(cur["kappa"].unique())
    kernels = list(dict.fromkeys(cur["kernel"]))
    styles = ["-", "--", "-.", ":"]
    colors = _colors()
    names = {}
    if kappas.size == 2:
        names = {kappas[0]: " (slow)", kappas[1]: " (fast)"}
    for i, kap in enumerate(kappas[::-1]):
        for j, ker in enumerate(kernels):
            g = cur[(cur["kappa"] == kap) & (cur["kernel"] == ker)].sort_values("time")
            if not len(g):
                continue
            lab = f"κ = {kap:.4g}{names.get(kap, '')}, {_kernel_label(g.iloc[0])}"
            ax.plot(g["time"], g["value"], color=colors[i % len(colors)], ls=styles[j % len(styles)], lw=1.6,
                    label=lab)
            st = df[(df["quantity"] == stationary) & (df["kappa"] == kap) & (df["kernel"] == ker)]
            if len(st):
                ax.axhline(float(st["value"].iloc[0]), color=colors[i % len(colors)], ls=":", lw=0.8)
    _axes(ax, logx, logy, "step t",
          r"loss contribution $\sum_{i:\,\Omega_{ii}=\kappa} \frac{1}{2}\kappa\,\hat u_i^2$")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc=legend)
    if title:
        ax.set_title(title, fontsize=9)


def plot_line(ax, table, *, x, quantity, hue=(), select=None, reference=None, normalize=None,
              logx=False, logy=False, ylabel=None, title=None, label=None, reference_label=None,
              legend="best"):
    r"""A quantity versus a parameter, one line per ``hue`` group (and kernel): markers for ``quantity``,
    dashed lines for ``reference`` (e.g. ``effective_lr_paper``: eq. 20 over delta); ``normalize``
    divides values by a column (e.g. ``lr``: :math:`\hat\lambda/\lambda`); ``label`` / ``reference_label``
    name the two in the legend (default: the quantity names)."""
    df = select_rows(table, select)
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    if x not in df.columns:
        raise ValueError(f"plot_line: x = {x!r} is not a column of the table")
    hue = [hue] if isinstance(hue, str) else list(hue)
    cols = hue + ["kernel"]
    colors = iter(_colors())
    main = df[df["quantity"] == quantity]
    if not len(main):
        raise ValueError(f"plot_line: no rows of quantity {quantity!r} to draw")

    def yv(g):
        y = g["value"].to_numpy(dtype=float)
        return y / g[normalize].to_numpy(dtype=float) if normalize else y

    for key, g in _group_keys(main, cols):
        g = g.sort_values(x)
        row = g.iloc[0]
        lab = ", ".join(s for s in (_series_label(row, hue), _KERNEL_LABEL.get(row["kernel"], row["kernel"])) if s)
        c = next(colors)
        has_sem = "stderr" in g and np.isfinite(g["stderr"].to_numpy(dtype=float)).any()
        if has_sem:
            s = g["stderr"].to_numpy(dtype=float) / (g[normalize].to_numpy(dtype=float) if normalize else 1.0)
            ax.errorbar(g[x], yv(g), yerr=2 * s, fmt="o", ms=4, color=c, label=f"{lab}: {label or quantity} (±2 s.e.)")
        else:
            ax.plot(g[x], yv(g), "o" if reference else "o-", ms=4, lw=1.2, color=c,
                    label=f"{lab}: {label or quantity}")
        if reference:
            r = df[df["quantity"] == reference]
            for k, v in zip(cols, key):
                r = r[r[k] == v]
            r = r.sort_values(x)
            if len(r):
                ax.plot(r[x], yv(r), "--", color=c, lw=1.2, label=f"{lab}: {reference_label or reference}")
    _axes(ax, logx, logy, _label(x), ylabel or (f"{quantity} / {normalize}" if normalize else quantity))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc=legend)
    if title:
        ax.set_title(title, fontsize=9)


def plot_heatmap(ax, table, *, x, y, quantity, select=None, logx=False, logy=False, logz=True, title=None,
                 zlabel=None):
    """A quantity over two parameters (one kernel: use ``select``) as a colour map with a colour bar."""
    import matplotlib.colors as mcolors

    df = select_rows(table, select)
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    df = df[df["quantity"] == quantity]
    if not len(df):
        raise ValueError(f"plot_heatmap: no rows of quantity {quantity!r} to draw")
    if df.duplicated([x, y]).any():
        raise ValueError(f"plot_heatmap: several rows per ({x}, {y}): narrow them with select "
                         f"(e.g. select = {{kernel = \"EMA\"}})")
    piv = df.pivot(index=y, columns=x, values="value").sort_index().sort_index(axis=1)
    xs, ys = piv.columns.to_numpy(dtype=float), piv.index.to_numpy(dtype=float)
    z = piv.to_numpy(dtype=float)
    norm = mcolors.LogNorm() if logz else None
    mesh = ax.pcolormesh(_edges(xs, logx), _edges(ys, logy), np.ma.masked_invalid(z), norm=norm,
                         cmap="viridis", shading="flat")
    ax.figure.colorbar(mesh, ax=ax, label=zlabel or quantity)
    _axes(ax, logx, logy, _label(x), _label(y))
    if title:
        ax.set_title(title, fontsize=9)


def _edges(v, log):
    v = np.asarray(v, dtype=float)
    if v.size == 1:
        return np.array([v[0] * 0.9, v[0] * 1.1]) if log else np.array([v[0] - 0.5, v[0] + 0.5])
    w = np.log(v) if log else v
    mid = 0.5 * (w[1:] + w[:-1])
    e = np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])
    return np.exp(e) if log else e


def _colors():
    return ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"] * 3


@dataclass(frozen=True)
class FigureKind:
    func: object
    needs_any: tuple  # at least one of these quantities must be computed (or the function's `quantity`)


#: figure kinds of spec files -> plotting function
FIGURES = {
    "loss_curves": FigureKind(plot_loss_curves, ("expected_loss", "sim_loss")),
    "loss_per_kappa": FigureKind(plot_loss_per_kappa, ("expected_loss_per_kappa",)),
    "line": FigureKind(plot_line, ()),
    "heatmap": FigureKind(plot_heatmap, ()),
}


def draw_figures(table, figures, out_dir) -> list[Path]:
    """Draw each figure spec (``file``, ``kind``, ``size``, ``dpi``, plot options) from ``table`` into
    ``out_dir`` (each file written to a temporary name and moved into place). Returns the paths."""
    from matplotlib.figure import Figure

    paths = []
    for f in figures:
        opts = {k: v for k, v in f.items() if k not in FIGURE_KEYS}
        fig = Figure(figsize=tuple(f.get("size", [6.4, 4.4])), layout="constrained")
        ax = fig.add_subplot()
        FIGURES[f["kind"]].func(ax, table, **opts)
        path = Path(out_dir) / f["file"]
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=f.get("dpi", 150), format=path.suffix.lstrip(".").lower())
        paths.append(path)
    return paths


def _axes(ax, logx: bool, logy: bool, xlabel: str, ylabel: str) -> None:
    """Log scales where asked, and the axis labels (every figure of this module)."""
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _label(name: str) -> str:
    """An axis label: the parameter's name with its symbol where it has one."""
    return f"{name} ({_SYMBOL[name]})" if name in _SYMBOL else name
