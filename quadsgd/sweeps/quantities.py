r"""Built-in quantities of sweep specs: the parameter schema, the kernels by name, and the quantity registry.

A *point* is a dict of parameters (schema :data:`PARAMS`) that defines a diagonal linear model
(paper Appendix A.1, eq. 15: :math:`u_{t+1} = u_t - \lambda(\beta b_t + \Omega u_t - \xi_t)`, loss
:math:`\tfrac12 u^\top\Omega u`), a set of averaging kernels and the run lengths. :class:`SpecFunction`
computes the requested quantities (:data:`QUANTITIES`) of one point and returns them as tidy columns
``quantity, kernel, kappa, time, value, stderr`` (stderr: standard error, NaN for exact values); one row per:

* ``stationary_loss`` -- kernel: :math:`\tfrac12\mathrm{tr}(\Omega\,\mathrm{Cov}\,\hat u)`, exact (eq. 19 made exact);
* ``stationary_covariance`` -- kernel x kappa: :math:`\mathrm{Var}\,\hat u_i` of a coordinate with
  :math:`\Omega_{ii}=\kappa`;
* ``stationary_loss_per_kappa`` -- kernel x kappa:
  :math:`\sum_{i:\Omega_{ii}=\kappa}\tfrac12\kappa\mathrm{Var}\,\hat u_i` (Fig. 11b);
* ``effective_lr`` -- kernel x kappa: :math:`\lambda\,\mathrm{Var}\,\hat u/\mathrm{Var}\,u`, exact (eq. 20 generalised);
* ``effective_lr_paper`` -- kernel x kappa: :math:`\lambda(C_0+2\sum_\delta C_\delta\Gamma^\delta)` as printed,
  :math:`\Gamma=1-\lambda\kappa` (the kernel's ``paper_factor``: TwoPoint eq. 20, NPoint/SWA eq. 21; no momentum);
* ``expected_loss`` -- kernel x time: exact :math:`E\,\tfrac12\hat u_t^\top\Omega\hat u_t` from :math:`u_0`
  (Fig. 9, 11a);
* ``expected_loss_per_kappa`` -- kernel x kappa x time: the same over the coordinates with
  :math:`\Omega_{ii}=\kappa` (Fig. 11b);
* ``sim_loss`` -- kernel x time: mean over ``chains`` simulated chains; stderr = std / sqrt(chains);
* ``sim_loss_per_kappa`` -- kernel x kappa (t = steps): per-kappa loss of the simulated final iterates.

``kappa`` is an eigenvalue :math:`\Omega_{ii}` (rows sorted by kappa), ``time`` a step index (``records`` /
``record_spacing``); both NaN where they do not apply. ``kernel`` is the class name (``Last``, ``TwoPoint``,
``NPoint``, ``SWA``, ``EMA``, ``Kernel``); the kernel's ``params`` (``delta``, ``n``, ``window``, ``decay``,
``weights``) are columns of the point.

Also: kernels by name (:func:`canonical_kernel`), the :func:`quantity` decorator, the point builders and checks
(:func:`point_model`, :func:`build_kernels`, :func:`record_schedule`, :func:`complete_point`, :func:`check_point`,
:func:`check_stable`). Details: ``docs/sweeps.md``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from .._linalg import Ops
from ..kernels import AveragingKernel, kernel_classes, kernel_from_params
from ..model import LinearModel
from ..theory import (
    effective_lr,
    expected_loss,
    stationary_covariance,
    stationary_loss,
    stationary_loss_per_coordinate,
)

__all__ = [
    "Param", "PARAMS", "param", "param_names", "Quantity", "QUANTITIES", "quantity", "SPECTRA", "OUTPUT_COLUMNS",
    "PointData", "Block", "SpecFunction", "sweep_kernels", "kernel_class", "canonical_kernel",
    "build_omega", "point_model", "build_kernels", "record_schedule", "relevant_params", "complete_point",
    "check_point", "check_stable", "unknown_name_message",
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
            if lo == -math.inf:
                return "" if hi == math.inf else f"<= {int(hi)}"
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


# =============================================================================================
# Kernels by name, from the kernel registry
# =============================================================================================
def sweep_kernels() -> dict[str, type]:
    """The kernels a spec can name: class name -> class, in registration order (read live)."""
    return {cls.__name__: cls for cls in kernel_classes().values()}


def kernel_class(name) -> type:
    """The kernel class named ``name``: its class name, spec name or an alias (case-insensitive, e.g.
    ``TwoPoint``, ``twopoint``, ``two_point``); ValueError listing the class names otherwise."""
    if isinstance(name, str) and name == name.strip():
        from ..kernels import canonical_name

        try:
            return kernel_classes()[canonical_name(name)]
        except ValueError:
            pass
    raise ValueError(f"unknown kernel {name!r}; allowed: {', '.join(sweep_kernels())}")


def canonical_kernel(name) -> str:
    """Class name of a kernel given by name (the value of the table's ``kernel`` column); ValueError otherwise."""
    return kernel_class(name).__name__


def _annotation_kind(tp) -> str:
    t = getattr(tp, "__name__", None) or str(tp)
    if t == "int":
        return "int"
    if any(s in t for s in ("ndarray", "tuple", "list", "Sequence")):
        return "floats"
    return "float"


def _kernel_param(name: str) -> Param | None:
    """Schema entry of a kernel parameter not in :data:`PARAMS` (type from the dataclass field)."""
    for cls in kernel_classes().values():
        if name in cls.params:
            types = {f.name: f.type for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            return Param(name, _annotation_kind(types.get(name, "float")),
                         f"parameter {name!r} of the {cls.__name__} kernel (its range is checked by the kernel)")
    return None


def param(name: str) -> Param:
    """Schema entry of a parameter: :data:`PARAMS` or a registered kernel's parameter; KeyError otherwise."""
    p = PARAMS.get(name) or _kernel_param(name)
    if p is None:
        raise KeyError(name)
    return p


def param_names() -> list[str]:
    """Every parameter name: :data:`PARAMS`, then the registered kernels' parameters not in it."""
    names = dict.fromkeys(PARAMS)
    for cls in kernel_classes().values():
        names.update(dict.fromkeys(cls.params))
    return list(names)


# =============================================================================================
# The quantity registry
# =============================================================================================
class Block(NamedTuple):
    """Rows of one quantity for one kernel: ``value`` (n,), ``kappa``, ``time``, ``stderr`` (scalars or (n,);
    NaN where they do not apply)."""

    value: np.ndarray
    kappa: object = np.nan
    time: object = np.nan
    stderr: object = np.nan


@dataclass(frozen=True)
class PointData:
    """What the quantity functions of one point read (built once per point by :class:`SpecFunction`).

    kappa (K,): the distinct eigenvalues of Omega, sorted; first (K,): a coordinate of each; inverse
    (d,): the kappa index of each coordinate; count (K,): coordinates per kappa. steps, u0 (d,), times
    (R,) int64 and every (the simulator's ``record_every``) are None unless a quantity needs them; sim
    is the :class:`quadsgd.SimulationResult` of all kernels of the point (None without a simulated quantity).
    """

    point: dict
    model: LinearModel
    kernels: tuple
    kappa: np.ndarray
    first: np.ndarray
    inverse: np.ndarray
    count: np.ndarray
    steps: int | None = None
    u0: np.ndarray | None = None
    times: np.ndarray | None = None
    every: int | None = None
    sim: object = None


@dataclass(frozen=True)
class Quantity:
    """A quantity of spec sweeps. ``function(point_data, j) -> Block`` computes its rows for the j-th
    kernel; ``needs``: parameters it reads beyond the model and kernels; ``simulation``: it reads
    ``point_data.sim``; ``curve``: it reads the record times ``point_data.times``."""

    name: str
    doc: str
    function: Callable[[PointData, int], Block]
    needs: tuple = ()
    simulation: bool = False
    curve: bool = False


#: quantity name -> Quantity, in the order they are documented
QUANTITIES: dict[str, Quantity] = {}

_RUN = ("steps", "records", "record_spacing", "u0")
_SIM = ("chains", "method", "replicate")


def quantity(name: str, doc: str, needs=(), simulation: bool = False, curve: bool = False):
    """Decorator registering ``function(point_data, j) -> Block`` as the quantity ``name``."""
    def register(function):
        QUANTITIES[name] = Quantity(name, doc, function, tuple(needs), simulation, curve)
        return function
    return register


@quantity("stationary_loss", "exact stationary loss 0.5 tr(H Cov u_hat) per kernel")
def _stationary_loss(pt: PointData, j: int) -> Block:
    return Block(stationary_loss(pt.model, pt.kernels[j]))


@quantity("stationary_covariance", "exact stationary variance of a coordinate, per kernel and kappa")
def _stationary_covariance(pt: PointData, j: int) -> Block:
    return Block(stationary_covariance(pt.model, pt.kernels[j])[pt.first], kappa=pt.kappa)


@quantity("stationary_loss_per_kappa", "exact stationary loss of the coordinates with Omega_ii = kappa")
def _stationary_loss_per_kappa(pt: PointData, j: int) -> Block:
    per = stationary_loss_per_coordinate(pt.model, pt.kernels[j])
    return Block(np.bincount(pt.inverse, per, pt.kappa.size), kappa=pt.kappa)


@quantity("effective_lr", "exact effective lr lr * Var(u_hat)/Var(u) per eigen-direction (eq. 20 generalised)")
def _effective_lr(pt: PointData, j: int) -> Block:
    return Block(effective_lr(pt.model, pt.kernels[j])[pt.first], kappa=pt.kappa)


@quantity("effective_lr_paper", "lr * (C_0 + 2 sum C_d (1 - lr kappa)^d) as printed (eq. 19-21; no momentum)")
def _effective_lr_paper(pt: PointData, j: int) -> Block:
    lr = pt.model.lr
    g = 1.0 - lr * pt.kappa
    return Block(lr * pt.kernels[j].paper_factor(g, Ops(g, matrix=False)), kappa=pt.kappa)


@quantity("expected_loss", "exact expected loss curve from u0", _RUN, curve=True)
def _expected_loss(pt: PointData, j: int) -> Block:
    curve = expected_loss(pt.model, pt.kernels[j], steps=pt.steps, u0=pt.u0)
    return Block(curve[pt.times], time=pt.times)


@quantity("expected_loss_per_kappa", "exact expected loss curve of the coordinates with Omega_ii = kappa",
          _RUN, curve=True)
def _expected_loss_per_kappa(pt: PointData, j: int) -> Block:
    m = pt.model
    curves = []
    for kap, c in zip(pt.kappa, pt.count):  # one coordinate with Omega = kappa, times its multiplicity
        m1 = LinearModel(np.array([kap]), m.lr, momentum=m.momentum)
        curves.append(c * expected_loss(m1, pt.kernels[j], steps=pt.steps, u0=pt.u0[:1])[pt.times])
    return Block(np.concatenate(curves), kappa=np.repeat(pt.kappa, pt.times.size),
                 time=np.tile(pt.times, pt.kappa.size))


@quantity("sim_loss", "simulated mean loss curve and its standard error", _RUN + _SIM, simulation=True, curve=True)
def _sim_loss(pt: PointData, j: int) -> Block:
    idx = np.searchsorted(pt.sim.times, pt.times)
    return Block(pt.sim.loss[j, idx], time=pt.times, stderr=pt.sim.loss_sem[j, idx])


@quantity("sim_loss_per_kappa", "simulated final loss per kappa and its standard error",
          ("steps", "u0") + _SIM, simulation=True)
def _sim_loss_per_kappa(pt: PointData, j: int) -> Block:
    f = np.asarray(pt.sim.final[j], dtype=np.float64)  # (chains, d)
    order = np.argsort(pt.inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(pt.count)[:-1]])
    per = np.add.reduceat((0.5 * pt.model.omega * f * f)[:, order], starts, axis=1)  # (chains, n_kappa)
    return Block(per.mean(axis=0), kappa=pt.kappa, time=pt.steps,
                 stderr=per.std(axis=0, ddof=1) / math.sqrt(f.shape[0]))


#: the output columns of :class:`SpecFunction`, in order
OUTPUT_COLUMNS = ("quantity", "kernel", "kappa", "time", "value", "stderr")


# =============================================================================================
# Points: names, completion, builders and checks
# =============================================================================================
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
        need.update(kernel_class(k).params)
    for q in quantities:
        need.update(QUANTITIES[q].needs)
    if "design" in point:
        need.add("design")
    return [name for name in param_names() if name in need]


def complete_point(point: dict, kernels, quantities) -> dict:
    """The point with defaults filled in for every relevant parameter (schema order, then given extras).

    Raises ValueError naming a required parameter that is missing.
    """
    out = {}
    for name in relevant_params(point, kernels, quantities):
        if name in point:
            out[name] = point[name]
        elif param(name).required:
            users = ([k for k in kernels if name in kernel_class(k).params]
                     or [q for q in quantities if name in QUANTITIES[q].needs])
            why = f" (needed by {', '.join(users)})" if users else ""
            raise ValueError(f"missing parameter {name!r}{why}: it must be {param(name).describe()}; "
                             f"set it in [params] or sweep it in [grid]")
        else:
            out[name] = param(name).default
    for name in param_names():  # parameters given but not needed stay part of the point
        if name in point and name not in out:
            out[name] = point[name]
    return out


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


def point_model(p: dict) -> LinearModel:
    """The diagonal LinearModel of a point (H = Omega); ValueError for an unstable lr."""
    return LinearModel(build_omega(p), p["lr"], momentum=p.get("momentum", 0.0))


def build_kernels(p: dict, names) -> list[AveragingKernel]:
    """Averaging kernels named ``names`` (class names), each built from its ``params`` in the point."""
    return [kernel_from_params(name, p) for name in names]


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
    for name in kernels:  # the kernel's own validation (e.g. Kernel weights summing to 1)
        names = kernel_class(name).params
        try:
            kernel_from_params(name, p)
        except (ValueError, TypeError) as e:
            where = f"parameter {names[0]!r}" if len(names) == 1 else f"{name} ({', '.join(names)})"
            raise ValueError(f"{where}: {e}") from None
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
        point_model(p)
    except ValueError:
        from ..model import stability_bound

        bound = stability_bound(om, p.get("momentum", 0.0))
        raise ValueError(f"lr = {p['lr']!r} is unstable: with momentum = {p.get('momentum', 0.0)!r} and "
                         f"largest Omega = {om.max():g} the iteration needs 0 < lr < {bound:.6g}") from None


# =============================================================================================
# The point function
# =============================================================================================
class _Rows:
    """Blocks of rows, concatenated into the :data:`OUTPUT_COLUMNS` at the end."""

    def __init__(self):
        self.blocks = []

    def add(self, quantity_name: str, kernel: str, block: Block) -> None:
        value = np.atleast_1d(np.asarray(block.value, dtype=np.float64))
        n = value.size
        self.blocks.append((quantity_name, kernel, np.broadcast_to(np.asarray(block.kappa, np.float64), n),
                            np.broadcast_to(np.asarray(block.time, np.float64), n), value,
                            np.broadcast_to(np.asarray(block.stderr, np.float64), n)))

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


def point_data(p: dict, names, quantities, seed: int = 0) -> PointData:
    """The :class:`PointData` of a complete point for the kernels ``names`` and the ``quantities``
    (runs the simulation when one of them needs it)."""
    m = point_model(p)
    kernels = tuple(build_kernels(p, names))
    kappa, first, inverse, count = np.unique(m.omega, return_index=True, return_inverse=True, return_counts=True)
    qs = [QUANTITIES[q] for q in quantities]
    steps = u0 = times = every = sim = None
    if any(q.needs for q in qs):
        steps = p["steps"]
        u0 = np.full(m.dim, float(p["u0"]))
        if any(q.curve for q in qs):
            times, every = record_schedule(steps, p["records"], p["record_spacing"])
        else:
            times, every = np.array([steps], dtype=np.int64), steps
    if any(q.simulation for q in qs):
        from ..simulation import simulate

        sim = simulate(m, steps, p["chains"], kernels=kernels, u0=u0, record_every=every, seed=int(seed),
                       method=p["method"])
    return PointData(p, m, kernels, kappa, first, inverse, count, steps, u0, times, every, sim)


class SpecFunction:
    """Point function of spec sweeps: ``SpecFunction(settings)(seed=s, **point) -> columns``.

    settings: ``{design_name_or_None: {"kernels": (...), "quantities": (...)}}`` (kernel class names,
    quantity names); a point with a ``design`` parameter uses that design's settings. Picklable (runs on
    process pools and Dask; pickling carries the kernel classes, so a worker imports the modules that
    define them). Returns a dict of equal-length columns :data:`OUTPUT_COLUMNS` (module docstring): for
    each quantity, for each kernel, the quantity's rows.
    """

    def __init__(self, settings: dict):
        self.settings = {k: {"kernels": tuple(v["kernels"]), "quantities": tuple(v["quantities"])}
                         for k, v in settings.items()}
        self.kernel_classes = {n: kernel_class(n) for v in self.settings.values() for n in v["kernels"]}

    def __repr__(self) -> str:
        return f"quadsgd.sweeps.quantities.SpecFunction({json.dumps(self.settings, sort_keys=True)})"

    def __call__(self, seed=0, **p):
        s = self.settings[p.get("design")]
        names, quantities = s["kernels"], s["quantities"]
        pt = point_data(p, names, quantities, seed)
        rows = _Rows()
        for q in quantities:
            function = QUANTITIES[q].function
            for j, name in enumerate(names):
                rows.add(q, name, function(pt, j))
        return rows.columns()
