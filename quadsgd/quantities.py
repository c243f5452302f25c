r"""Built-in quantities of sweep specs: the parameter schema, the point function, and the figures.

A *point* is a dict of parameters (schema :data:`PARAMS`) that defines a diagonal linear model
(paper Appendix A.1, eq. 15: :math:`u_{t+1} = u_t - \lambda(\beta b_t + \Omega u_t - \xi_t)`, loss
:math:`\tfrac12 u^\top\Omega u`), a set of averaging kernels and the run lengths. :class:`SpecFunction`
computes the requested quantities (:data:`QUANTITIES`) of one point and returns them as tidy
columns ``quantity, kernel, kappa, time, value, stderr``:

=========================== ========================= ==================================================
quantity                    one row per               value (stderr: standard error, NaN for exact)
=========================== ========================= ==================================================
``stationary_loss``         kernel                    :math:`\tfrac12\mathrm{tr}(\Omega\,\mathrm{Cov}\,\hat u)`, exact (eq. 19 made exact)
``stationary_covariance``   kernel x kappa            :math:`\mathrm{Var}\,\hat u_i` of a coordinate with :math:`\Omega_{ii}=\kappa`
``stationary_loss_per_kappa`` kernel x kappa          :math:`\sum_{i:\Omega_{ii}=\kappa}\tfrac12\kappa\mathrm{Var}\,\hat u_i` (Fig. 11b)
``effective_lr``            kernel x kappa            :math:`\lambda\,\mathrm{Var}\,\hat u/\mathrm{Var}\,u` exact (eq. 20 generalised)
``effective_lr_paper``      kernel x kappa            :math:`\lambda(C_0+2\sum_\delta C_\delta\Gamma^\delta)` as printed, :math:`\Gamma=1-\lambda\kappa`
                                                      (TwoPoint: eq. 20; NPoint/SWA: eq. 21; no momentum term)
``expected_loss``           kernel x time             exact :math:`E\,\tfrac12\hat u_t^\top\Omega\hat u_t` from :math:`u_0` (Fig. 9 / 11a)
``expected_loss_per_kappa`` kernel x kappa x time     the same, summed over the coordinates with :math:`\Omega_{ii}=\kappa` (Fig. 11b)
``sim_loss``                kernel x time             mean over ``chains`` simulated chains; stderr = std / sqrt(chains)
``sim_loss_per_kappa``      kernel x kappa (t=steps)  per-kappa loss of the simulated final iterates; stderr over chains
=========================== ========================= ==================================================

``kappa`` is an eigenvalue :math:`\kappa = \Omega_{ii}` (rows sorted by kappa), ``time`` a step index
(log- or linearly spaced records, see ``records`` / ``record_spacing``); both are NaN where they do not
apply. ``kernel`` is the class name (``Last``, ``TwoPoint``, ``NPoint``, ``SWA``, ``EMA``, ``Kernel``); the
kernel's own parameters (``delta``, ``n``, ``window``, ``decay``, ``weights``) are columns of the point.

Plotting functions (``plot_*``) take a matplotlib ``ax`` and a results table and only draw.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass

import numpy as np

from ._linalg import Ops
from .kernels import EMA, SWA, Kernel, Last, NPoint, TwoPoint
from .model import LinearModel
from .theory import (
    effective_lr,
    expected_loss,
    stationary_covariance,
    stationary_loss,
    stationary_loss_per_coordinate,
)

__all__ = [
    "PARAMS", "QUANTITIES", "KERNELS", "SPECTRA", "FIGURES", "OUTPUT_COLUMNS", "SpecFunction",
    "build_omega", "build_model", "build_kernels", "record_schedule", "relevant_params",
    "check_point", "check_stable", "select_rows",
    "plot_loss_curves", "plot_loss_per_kappa", "plot_line", "plot_heatmap",
]

_REQUIRED = object()


# =============================================================================================
# Parameter schema
# =============================================================================================
@dataclass(frozen=True)
class Param:
    """One sweepable parameter: its type ("float", "int", "str", "floats") and allowed range."""

    name: str
    kind: str
    doc: str
    default: object = _REQUIRED
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        """Human-readable type and range, e.g. ``a float in (0, inf)``."""
        if self.kind == "str":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        rng = self._range()
        if self.kind == "int":
            return f"an integer {rng}".rstrip()
        if self.kind == "float":
            return f"a float {rng}".rstrip()
        return f"a non-empty list of floats, each {rng}".rstrip()

    def _range(self) -> str:
        lo, hi = self.low, self.high
        if self.kind == "int":
            return f">= {int(lo)}" if hi == math.inf else f"in [{int(lo)}, {int(hi)}]"
        if lo == -math.inf and hi == math.inf:
            return "(finite)"
        lb = "(" if self.low_open else "["
        hb = ")" if self.high_open or hi == math.inf else "]"
        return f"in {lb}{_g(lo)}, {_g(hi)}{hb}"

    def _in_range(self, v: float) -> bool:
        lo_ok = v > self.low if self.low_open else v >= self.low
        hi_ok = v < self.high if self.high_open else v <= self.high
        return lo_ok and hi_ok

    def coerce(self, value):
        """Normalized value (int, float, str or tuple of floats); ValueError (without location) otherwise."""
        bad = ValueError(f"parameter {self.name!r} must be {self.describe()}, got {value!r} "
                         f"({type(value).__name__})")
        if self.kind == "str":
            if not isinstance(value, str) or value not in self.choices:
                raise bad
            return value
        if self.kind == "floats":
            if not isinstance(value, (list, tuple)) or len(value) == 0:
                raise bad
            out = []
            for x in value:
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise bad
                x = float(x)
                if not math.isfinite(x) or not self._in_range(x):
                    raise bad
                out.append(x)
            return tuple(out)
        if isinstance(value, (bool, np.bool_)):
            raise bad
        if isinstance(value, np.generic):
            value = value.item()
        if self.kind == "int":
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or not self._in_range(value):
                raise bad
            return int(value)
        if not isinstance(value, (int, float)):
            raise bad
        value = float(value)
        if not math.isfinite(value) or not self._in_range(value):
            raise bad
        return value


def _g(x) -> str:
    if x == math.inf:
        return "inf"
    if x == -math.inf:
        return "-inf"
    return f"{x:g}"


#: spectrum layouts of the diagonal Omega
SPECTRA = ("two-scale", "loguniform", "powerlaw", "explicit")
#: averaging kernels by name -> the parameters they read
KERNELS = {
    "Last": (),
    "TwoPoint": ("delta",),
    "NPoint": ("n", "delta"),
    "SWA": ("window",),
    "EMA": ("decay",),
    "Kernel": ("weights",),
}
_KERNEL_ALIASES = {k.lower(): k for k in KERNELS}
_KERNEL_ALIASES.update({"two_point": "TwoPoint", "two-point": "TwoPoint", "n_point": "NPoint",
                        "n-point": "NPoint", "sgd": "Last", "last_iterate": "Last"})

_P = Param
PARAMS: dict[str, Param] = {p.name: p for p in [
    _P("design", "str", "name of the [[design]] block the point belongs to (set automatically)"),
    _P("spectrum", "str", "layout of the diagonal Omega: two-scale (paper Fig. 9: n_fast coordinates at "
       "`fast`, n_slow at `slow`), loguniform (dim values from omega_min to omega_max, geometric), "
       "powerlaw (omega_max * i^-exponent, i = 1..dim), explicit (the list `omega`)",
       default="two-scale", choices=SPECTRA),
    _P("fast", "float", "Omega of the fast coordinates (two-scale)", 1.0, 0.0, low_open=True),
    _P("slow", "float", "Omega of the slow coordinates (two-scale)", 0.015, 0.0, low_open=True),
    _P("n_fast", "int", "number of fast coordinates (two-scale)", 1, 0),
    _P("n_slow", "int", "number of slow coordinates (two-scale)", 1, 0),
    _P("dim", "int", "number of coordinates (loguniform, powerlaw)", 100, 1),
    _P("omega_min", "float", "smallest Omega (loguniform)", 1e-3, 0.0, low_open=True),
    _P("omega_max", "float", "largest Omega (loguniform, powerlaw)", 1.0, 0.0, low_open=True),
    _P("exponent", "float", "power-law exponent (powerlaw)", 1.0, 0.0),
    _P("omega", "floats", "the diagonal of Omega (explicit)", _REQUIRED, 0.0, low_open=True),
    _P("lr", "float", "learning rate lambda (must keep the iteration stable)", _REQUIRED, 0.0, low_open=True),
    _P("momentum", "float", "heavy-ball momentum beta (PyTorch convention)", 0.0, 0.0, 1.0, high_open=True),
    _P("delta", "int", "spacing Delta of TwoPoint / NPoint averages (steps)", _REQUIRED, 1),
    _P("n", "int", "number of points of an NPoint average", _REQUIRED, 2),
    _P("window", "int", "SWA window (steps)", _REQUIRED, 1),
    _P("decay", "float", "EMA weight a of the newest iterate (the paper's '450 steps' is 1/450)",
       _REQUIRED, 0.0, 1.0, low_open=True),
    _P("weights", "floats", "weights of a general Kernel (mu_0, mu_1, ...; summing to 1)", _REQUIRED, 0.0),
    _P("u0", "float", "start u_0 of every coordinate (curves and simulation)", 1.0),
    _P("steps", "int", "number of SGD steps T (curves and simulation)", _REQUIRED, 1),
    _P("records", "int", "number of record times of the curves", 100, 1),
    _P("record_spacing", "str", "record times: log (geometric, for log-x plots) or linear",
       "log", choices=("log", "linear")),
    _P("chains", "int", "number of simulated chains", 1000, 2),
    _P("method", "str", "simulation method of quadsgd.simulate", "step", choices=("step", "exact")),
    _P("replicate", "int", "replicate index (changes only the simulation seed)", 0, 0),
]}
del _P

_SPECTRUM_PARAMS = {
    "two-scale": ("fast", "slow", "n_fast", "n_slow"),
    "loguniform": ("dim", "omega_min", "omega_max"),
    "powerlaw": ("dim", "omega_max", "exponent"),
    "explicit": ("omega",),
}


@dataclass(frozen=True)
class Quantity:
    name: str
    doc: str
    needs: tuple = ()       # parameters it reads beyond the model and kernels
    simulation: bool = False


QUANTITIES: dict[str, Quantity] = {q.name: q for q in [
    Quantity("stationary_loss", "exact stationary loss 0.5 tr(H Cov u_hat) per kernel"),
    Quantity("stationary_covariance", "exact stationary variance of a coordinate, per kernel and kappa"),
    Quantity("stationary_loss_per_kappa", "exact stationary loss of the coordinates with Omega_ii = kappa"),
    Quantity("effective_lr", "exact effective lr lr * Var(u_hat)/Var(u) per eigen-direction (eq. 20 generalised)"),
    Quantity("effective_lr_paper", "lr * (C_0 + 2 sum C_d (1 - lr kappa)^d) as printed (eq. 19-21; no momentum)"),
    Quantity("expected_loss", "exact expected loss curve from u0", ("steps", "records", "record_spacing", "u0")),
    Quantity("expected_loss_per_kappa", "exact expected loss curve of the coordinates with Omega_ii = kappa",
             ("steps", "records", "record_spacing", "u0")),
    Quantity("sim_loss", "simulated mean loss curve and its standard error",
             ("steps", "records", "record_spacing", "u0", "chains", "method", "replicate"), True),
    Quantity("sim_loss_per_kappa", "simulated final loss per kappa and its standard error",
             ("steps", "u0", "chains", "method", "replicate"), True),
]}

_CURVES = ("expected_loss", "expected_loss_per_kappa", "sim_loss")

#: the output columns of :class:`SpecFunction`, in order
OUTPUT_COLUMNS = ("quantity", "kernel", "kappa", "time", "value", "stderr")


def canonical_kernel(name) -> str:
    """Class name of a kernel given by name (case-insensitive, ``two_point`` etc. accepted); ValueError otherwise."""
    if not isinstance(name, str) or name.lower() not in _KERNEL_ALIASES:
        raise ValueError(f"unknown kernel {name!r}; allowed: {', '.join(KERNELS)}")
    return _KERNEL_ALIASES[name.lower()]


def unknown_name_message(kind: str, name, allowed) -> str:
    """'unknown parameter 'lrr' (did you mean 'lr'?); allowed: ...'"""
    close = difflib.get_close_matches(str(name), list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; allowed: {', '.join(allowed)}"


def relevant_params(point: dict, kernels, quantities) -> list[str]:
    """Names of the parameters a point needs, in schema order (given the spectrum, kernels, quantities)."""
    spectrum = point.get("spectrum", PARAMS["spectrum"].default)
    need = {"spectrum", "lr", "momentum"}
    need.update(_SPECTRUM_PARAMS.get(spectrum, ()))
    for k in kernels:
        need.update(KERNELS[k])
    for q in quantities:
        need.update(QUANTITIES[q].needs)
    if "design" in point:
        need.add("design")
    return [name for name in PARAMS if name in need]


def complete_point(point: dict, kernels, quantities) -> dict:
    """The point with defaults filled in for every relevant parameter (schema order, then given extras).

    Raises ValueError naming a required parameter that is missing.
    """
    out = {}
    for name in relevant_params(point, kernels, quantities):
        if name in point:
            out[name] = point[name]
        elif PARAMS[name].required:
            users = [k for k in kernels if name in KERNELS[k]] or [q for q in quantities if name in QUANTITIES[q].needs]
            why = f" (needed by {', '.join(users)})" if users else ""
            raise ValueError(f"missing parameter {name!r}{why}: it must be {PARAMS[name].describe()}; "
                             f"set it in [params] or sweep it in [grid]")
        else:
            out[name] = PARAMS[name].default
    for name in PARAMS:  # parameters given but not needed stay part of the point
        if name in point and name not in out:
            out[name] = point[name]
    return out


# =============================================================================================
# Builders
# =============================================================================================
def build_omega(p: dict) -> np.ndarray:
    """Diagonal of Omega for a point; shape (d,)."""
    s = p.get("spectrum", "two-scale")
    if s == "two-scale":
        return np.concatenate([np.full(p["n_fast"], p["fast"]), np.full(p["n_slow"], p["slow"])])
    if s == "loguniform":
        return np.geomspace(p["omega_max"], p["omega_min"], p["dim"])
    if s == "powerlaw":
        return p["omega_max"] * np.arange(1, p["dim"] + 1, dtype=np.float64) ** (-p["exponent"])
    return np.asarray(p["omega"], dtype=np.float64)


def build_model(p: dict) -> LinearModel:
    """The diagonal LinearModel of a point (H = Omega); ValueError for an unstable lr."""
    return LinearModel(build_omega(p), p["lr"], momentum=p.get("momentum", 0.0))


def build_kernels(p: dict, names) -> list:
    """Averaging kernels named ``names``, with their parameters from the point."""
    out = []
    for name in names:
        if name == "Last":
            out.append(Last())
        elif name == "TwoPoint":
            out.append(TwoPoint(p["delta"]))
        elif name == "NPoint":
            out.append(NPoint(p["n"], p["delta"]))
        elif name == "SWA":
            out.append(SWA(p["window"]))
        elif name == "EMA":
            out.append(EMA(p["decay"]))
        else:
            out.append(Kernel(np.asarray(p["weights"], dtype=np.float64)))
    return out


def record_schedule(steps: int, records: int, spacing: str):
    """Record times of the curves and the simulator's ``record_every``.

    log: the distinct integers of ``geomspace(1, steps, records)`` (always ending at ``steps``),
    simulated with ``record_every = 1``; linear: ``record_every = max(1, steps // records)`` and
    the simulator's record times (multiples of it, and ``steps``). Returns (times (R,) int64, record_every).
    """
    if spacing == "log":
        t = np.unique(np.rint(np.geomspace(1, steps, min(records, steps))).astype(np.int64))
        t[-1] = steps
        return t, 1
    every = max(1, steps // records)
    t = np.arange(every, steps + 1, every, dtype=np.int64)
    if t.size == 0 or t[-1] != steps:
        t = np.append(t, np.int64(steps))
    return t, every


def check_point(p: dict, kernels, quantities) -> None:
    """Checks of one complete point beyond per-parameter types (ValueError naming the key); stability not included."""
    s = p.get("spectrum", "two-scale")
    if s == "two-scale" and p["n_fast"] + p["n_slow"] < 1:
        raise ValueError(f"n_fast + n_slow must be >= 1, got n_fast = {p['n_fast']}, n_slow = {p['n_slow']}")
    if s == "loguniform" and p["omega_min"] > p["omega_max"]:
        raise ValueError(f"omega_min must be <= omega_max, got omega_min = {p['omega_min']!r} > "
                         f"omega_max = {p['omega_max']!r}")
    if "Kernel" in kernels:
        try:
            Kernel(np.asarray(p["weights"]))
        except ValueError as e:
            raise ValueError(f"parameter 'weights': {e}") from None
    if any(QUANTITIES[q].simulation for q in quantities):
        d = build_omega(p).size
        nbytes = 8.0 * p["chains"] * d * (3 + len(kernels))
        if nbytes > 8 * 2**30:
            raise ValueError(f"the simulation of chains = {p['chains']} x {d} coordinates needs about "
                             f"{nbytes / 2**30:.1f} GiB (limit 8 GiB): lower 'chains' or the dimension")


def check_stable(p: dict) -> None:
    """ValueError (naming lr, the allowed range and the momentum) if the point's lr is unstable."""
    om = build_omega(p)
    try:
        build_model(p)
    except ValueError:
        from .model import stability_bound

        bound = stability_bound(om, p.get("momentum", 0.0))
        raise ValueError(f"lr = {p['lr']!r} is unstable: with momentum = {p.get('momentum', 0.0)!r} and "
                         f"largest Omega = {om.max():g} the iteration needs 0 < lr < {bound:.6g}") from None


# =============================================================================================
# The point function
# =============================================================================================
class _Rows:
    def __init__(self):
        self.blocks = []

    def add(self, quantity, kernel, value, kappa=np.nan, time=np.nan, stderr=np.nan):
        value = np.atleast_1d(np.asarray(value, dtype=np.float64))
        n = value.size
        self.blocks.append((quantity, kernel, np.broadcast_to(np.asarray(kappa, np.float64), n),
                            np.broadcast_to(np.asarray(time, np.float64), n), value,
                            np.broadcast_to(np.asarray(stderr, np.float64), n)))

    def columns(self) -> dict:
        if not self.blocks:
            return {c: [] for c in OUTPUT_COLUMNS}
        n = [b[4].size for b in self.blocks]
        return {
            "quantity": [b[0] for b, k in zip(self.blocks, n) for _ in range(k)],
            "kernel": [b[1] for b, k in zip(self.blocks, n) for _ in range(k)],
            "kappa": np.concatenate([b[2] for b in self.blocks]),
            "time": np.concatenate([b[3] for b in self.blocks]),
            "value": np.concatenate([b[4] for b in self.blocks]),
            "stderr": np.concatenate([b[5] for b in self.blocks]),
        }


class SpecFunction:
    """Point function of spec sweeps: ``SpecFunction(settings)(seed=s, **point) -> columns``.

    settings: ``{design_name_or_None: {"kernels": (...), "quantities": (...)}}``; a point with a
    ``design`` parameter uses that design's settings. Picklable (runs on process pools and Dask).
    Returns a dict of equal-length columns :data:`OUTPUT_COLUMNS` (see the module docstring).
    """

    def __init__(self, settings: dict):
        self.settings = {k: {"kernels": tuple(v["kernels"]), "quantities": tuple(v["quantities"])}
                         for k, v in settings.items()}

    def __repr__(self) -> str:
        return f"quadsgd.quantities.SpecFunction({json.dumps(self.settings, sort_keys=True)})"

    def __call__(self, seed=0, **p):
        s = self.settings[p.get("design")]
        names, quantities = s["kernels"], s["quantities"]
        m = build_model(p)
        kernels = build_kernels(p, names)
        om = m.omega
        kappa, first, inv, count = np.unique(om, return_index=True, return_inverse=True, return_counts=True)
        lr = m.lr
        rows = _Rows()
        if any(QUANTITIES[q].needs for q in quantities):
            steps = p["steps"]
            u0 = np.full(m.dim, float(p["u0"]))
            if any(q in _CURVES for q in quantities):
                times, every = record_schedule(steps, p["records"], p["record_spacing"])
            else:
                times, every = np.array([steps], dtype=np.int64), steps
        sim = None
        if any(QUANTITIES[q].simulation for q in quantities):
            from .simulate import simulate

            sim = simulate(m, steps, p["chains"], kernels=tuple(kernels), u0=u0, record_every=every,
                           seed=int(seed), method=p["method"])
        for q in quantities:
            for j, (name, k) in enumerate(zip(names, kernels)):
                if q == "stationary_loss":
                    rows.add(q, name, stationary_loss(m, k))
                elif q == "stationary_covariance":
                    rows.add(q, name, stationary_covariance(m, k)[first], kappa=kappa)
                elif q == "stationary_loss_per_kappa":
                    rows.add(q, name, np.bincount(inv, stationary_loss_per_coordinate(m, k), kappa.size),
                             kappa=kappa)
                elif q == "effective_lr":
                    rows.add(q, name, effective_lr(m, k)[first], kappa=kappa)
                elif q == "effective_lr_paper":
                    g = 1.0 - lr * kappa
                    rows.add(q, name, lr * k.paper_factor(g, Ops(g, matrix=False)), kappa=kappa)
                elif q == "expected_loss":
                    rows.add(q, name, expected_loss(m, k, steps=steps, u0=u0)[times], time=times)
                elif q == "expected_loss_per_kappa":
                    for kap, c in zip(kappa, count):
                        m1 = LinearModel(np.array([kap]), lr, momentum=m.momentum)
                        curve = c * expected_loss(m1, k, steps=steps, u0=u0[:1])[times]
                        rows.add(q, name, curve, kappa=kap, time=times)
                elif q == "sim_loss":
                    idx = np.searchsorted(sim.times, times)
                    rows.add(q, name, sim.loss[j, idx], time=times, stderr=sim.loss_sem[j, idx])
                elif q == "sim_loss_per_kappa":
                    f = np.asarray(sim.final[j], dtype=np.float64)  # (chains, d)
                    order = np.argsort(inv, kind="stable")
                    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
                    per = np.add.reduceat((0.5 * om * f * f)[:, order], starts, axis=1)  # (chains, n_kappa)
                    rows.add(q, name, per.mean(axis=0), kappa=kappa, time=steps,
                             stderr=per.std(axis=0, ddof=1) / math.sqrt(f.shape[0]))
        return rows.columns()


# =============================================================================================
# Figures: plotting functions take an ax and a table and only draw
# =============================================================================================
_SYMBOL = {"lr": "λ", "momentum": "β", "delta": "Δ", "decay": "a", "window": "W", "kappa": "κ",
           "n": "n", "steps": "T", "chains": "chains", "dim": "d"}
_KERNEL_LABEL = {"Last": "SGD (last iterate)", "TwoPoint": "two-point", "NPoint": "n-point", "SWA": "SWA",
                 "EMA": "EMA", "Kernel": "kernel"}


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def _kernel_label(row) -> str:
    name = row.get("kernel")
    base = _KERNEL_LABEL.get(name, str(name))
    extra = []
    if name == "EMA" and _present(row.get("decay")):
        extra.append(f"1/a = {1.0 / float(row['decay']):.4g}")
    if name in ("TwoPoint", "NPoint") and _present(row.get("delta")):
        if name == "NPoint" and _present(row.get("n")):
            extra.append(f"n = {int(row['n'])}")
        extra.append(f"Δ = {int(row['delta'])}")
    if name == "SWA" and _present(row.get("window")):
        extra.append(f"W = {int(row['window'])}")
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
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step t")
    ax.set_ylabel(r"loss $\frac{1}{2}\,\hat u^\top \Omega\, \hat u$")
    ax.grid(True, which="major", alpha=0.3)
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    proxies = {"exact": Line2D([], [], color="0.3", lw=1.6), "dots": Line2D([], [], color="0.3", marker="o", ls="", ms=3),
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
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step t")
    ax.set_ylabel(r"loss contribution $\sum_{i:\,\Omega_{ii}=\kappa} \frac{1}{2}\kappa\,\hat u_i^2$")
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
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(f"{x} ({_SYMBOL[x]})" if x in _SYMBOL else x)
    ax.set_ylabel(ylabel or (f"{quantity} / {normalize}" if normalize else quantity))
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
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(f"{x} ({_SYMBOL[x]})" if x in _SYMBOL else x)
    ax.set_ylabel(f"{y} ({_SYMBOL[y]})" if y in _SYMBOL else y)
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
class Figure:
    func: object
    needs_any: tuple  # at least one of these quantities must be computed (or the function's `quantity`)


#: figure kinds of spec files -> plotting function
FIGURES = {
    "loss_curves": Figure(plot_loss_curves, ("expected_loss", "sim_loss")),
    "loss_per_kappa": Figure(plot_loss_per_kappa, ("expected_loss_per_kappa",)),
    "line": Figure(plot_line, ()),
    "heatmap": Figure(plot_heatmap, ()),
}
