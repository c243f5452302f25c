r"""Averaging kernels: the weights :math:`\mu_k` of :math:`\hat u_t = \sum_{k\ge 0} \mu_k u_{t-k}`.

Paper, Appendix A.2: an average of the trajectory is defined by a kernel :math:`\{\mu_k\}`; its
autocorrelation :math:`C_\delta = \sum_k \mu_k \mu_{k+\delta}` (eq. 17) is all that the stationary
covariance depends on (eq. 19).

A kernel carries its own behaviour (the integrators never switch on its type):

* :meth:`~AveragingKernel.psi` -- its generating function
  :math:`\Psi(M) = \tfrac{C_0}{2}I + \sum_{\delta\ge1}C_\delta M^\delta` on a
  :class:`~quadsgd._linalg.Transition` (scalars or stacks of matrices): closed form (EMA, two-point),
  O(log n) doubling (n-point, SWA) or Horner over the autocorrelation (any finite kernel, the default);
* :meth:`~AveragingKernel.paper_factor` -- eq. 19's bracket :math:`C_0 + 2\sum_\delta C_\delta\Gamma^\delta`
  exactly as the paper prints it (eq. 20, 21);
* :meth:`~AveragingKernel.cumulative` -- :math:`\sum_{m<r}\mu_m`, the Table 1 multiplier;
* :meth:`~AveragingKernel.tracking` -- how an online average is kept (:class:`Tracking`): the last
  iterate, a geometric recursion (EMA) or weighted points at a stride (accumulator slots);
* one spec grammar: ``str(kernel)`` (e.g. ``"ema:0.02"``, ``"twopoint:100"``) and :func:`parse_kernel`,
  used by the sweep TOML files, the realnet command lines and the reports alike.

A new finite kernel needs only ``point_weights`` (and ``stride`` if its points are spaced): everything
else has a correct generic default. Subclasses with a ``spec_name`` register themselves for
:func:`parse_kernel`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from ._checks import check_int
from ._linalg import Ops, Transition, triangular_geometric

__all__ = ["AveragingKernel", "Last", "TwoPoint", "NPoint", "SWA", "EMA", "Kernel", "Tracking", "parse_kernel",
           "kernel_from_params", "kernel_classes"]


def _check_int(name: str, value, low: int) -> int:
    return check_int(name, value, low)


class Tracking(NamedTuple):
    r"""How an average is computed online (by the simulator, the transient moments and realnet).

    kind: ``"last"`` (the iterate itself), ``"geometric"`` (:math:`e \leftarrow (1-a)e + a u`, ``decay`` = a)
    or ``"points"`` (``n`` points at lags ``0, stride, ..., (n-1) stride`` with ``weights``; None = uniform 1/n).
    """

    kind: str
    decay: float = 0.0
    stride: int = 1
    n: int = 1
    weights: np.ndarray | None = None

    def weight_array(self) -> np.ndarray:
        """The (n,) point weights (materialised for uniform weights)."""
        if self.weights is not None:
            return np.asarray(self.weights, dtype=np.float64)
        return np.full(self.n, 1.0 / self.n)

    @property
    def uniform_window(self) -> int:
        """W for a uniform average of the last W >= 2 consecutive iterates (stride 1), else 0."""
        if self.kind != "points" or self.stride != 1 or self.n < 2:
            return 0
        if self.weights is None:
            return self.n
        w = np.asarray(self.weights)
        return self.n if bool(np.all(w == w[0])) else 0


_REGISTRY: dict[str, type] = {}
_ALIASES: dict[str, str] = {}


class AveragingKernel:
    """Base class. A finite kernel defines ``point_weights`` (and ``stride``); the rest has generic defaults.

    Class attributes of subclasses: ``spec_name`` (its name in the spec grammar, lowercase; registering
    it with :func:`parse_kernel`), ``spec_aliases`` (other accepted names) and ``params`` (the constructor
    arguments, in order; also the sweep parameters it reads).
    """

    #: lag between consecutive non-zero weights (steps)
    stride: int = 1
    spec_name: ClassVar[str | None] = None
    spec_aliases: ClassVar[tuple] = ()
    params: ClassVar[tuple] = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        name = cls.__dict__.get("spec_name")
        if name:
            _REGISTRY[name] = cls
            for a in (name, cls.__name__.lower(), *cls.__dict__.get("spec_aliases", ())):
                _ALIASES[a.lower()] = name

    # ------------------------------------------------------------------ weights
    @property
    def point_weights(self) -> np.ndarray:
        """Non-zero weights at lags ``0, stride, 2*stride, ...``; shape (n_points,)."""
        raise NotImplementedError

    @property
    def support(self) -> int:
        """Number of lags 0..support-1 that carry weight (math.inf for EMA)."""
        return (len(self.point_weights) - 1) * self.stride + 1

    def weights(self, length: int | None = None) -> np.ndarray:
        r"""Dense weights :math:`\mu_0..\mu_{L-1}`; shape (L,). ``length`` truncates/pads."""
        L = self.support if length is None else int(length)
        mu = np.zeros(L)
        pw = self.point_weights
        idx = np.arange(len(pw)) * self.stride
        keep = idx < L
        mu[idx[keep]] = pw[keep]
        return mu

    def autocorrelation(self) -> np.ndarray:
        r""":math:`C_\delta = \sum_k \mu_k\mu_{k+\delta}` for :math:`\delta = 0..L-1` (eq. 17); shape (L,)."""
        mu = self.weights()
        L = len(mu)
        if L > 4096:
            n = 1 << (2 * L - 1).bit_length()
            f = np.fft.rfft(mu, n)
            c = np.fft.irfft(f * np.conj(f), n)[:L]
        else:
            c = np.correlate(mu, mu, mode="full")[L - 1:]
        return c

    def cumulative(self, r: np.ndarray) -> np.ndarray:
        r""":math:`\sum_{m<r}\mu_m` for integer r >= 0 (the Table 1 multiplier); shape of r."""
        r = np.asarray(r, dtype=np.int64)
        mu = self.weights()
        cs = np.concatenate([[0.0], np.cumsum(mu)])
        return cs[np.minimum(r, len(mu))]

    # ------------------------------------------------------------------ behaviour
    def tracking(self) -> Tracking:
        """How an online average of this kernel is kept (default: weighted points at ``stride``)."""
        pw = np.ascontiguousarray(self.point_weights, dtype=np.float64)
        if pw.size == 1 and pw[0] == 1.0:
            return Tracking("last")
        return Tracking("points", stride=int(self.stride), n=int(pw.size), weights=pw)

    @property
    def is_last(self) -> bool:
        """True when the average is the last iterate itself (Last, SWA(1), Kernel([1]), EMA(1))."""
        t = self.tracking()
        return t.kind == "last" or (t.kind == "geometric" and t.decay == 1.0)

    def psi(self, T: Transition):
        r"""Generating function :math:`\Psi(M) = \tfrac{C_0}{2}I + \sum_{m\ge1} C_m M^m` on ``T.M``.

        Default (any finite kernel): Horner over its autocorrelation at lags 0, D, 2D, ... (stride
        compression), O(support / D) products.
        """
        ops = T.ops
        pw = self.point_weights
        D = self.stride
        c = np.correlate(pw, pw, mode="full")[len(pw) - 1:]  # autocorrelation at lags 0, D, 2D, ...
        H = T.power(D) if D > 1 else T.M
        acc = c[-1] * ops.I
        for cm in c[-2:0:-1]:
            acc = cm * ops.I + ops.mul(H, acc)
        if len(c) == 1:
            return 0.5 * c[0] * ops.I
        return 0.5 * c[0] * ops.I + ops.mul(H, acc)

    def paper_factor(self, Gam, ops: Ops):
        r"""eq. 19's bracket :math:`C_0 + 2\sum_\delta C_\delta\Gamma^\delta` as printed (default: the sum)."""
        I = ops.I
        c = self.autocorrelation()
        acc = np.zeros_like(I)
        for cm in c[:0:-1]:
            acc = ops.mul(Gam, cm * I + acc)
        return c[0] * I + 2.0 * acc

    def variance_ratio(self, g) -> np.ndarray:
        r""":math:`K(g) = \mathrm{Var}\,\hat u/\mathrm{Var}\,u = C_0 + 2\sum_\delta C_\delta g^\delta` of a scalar AR(1)."""
        g = np.asarray(g, dtype=np.float64 if np.isrealobj(g) else np.complex128)
        return 2.0 * self.psi(Transition.scalars(g))

    # ------------------------------------------------------------------ spec grammar
    def spec_args(self) -> tuple:
        """The arguments written after ``spec_name`` in :meth:`__str__` (default: ``params`` values)."""
        return tuple(getattr(self, p) for p in self.params)

    def __str__(self) -> str:
        if self.spec_name is None:
            return repr(self)
        args = self.spec_args()
        return ":".join([self.spec_name, *(_fmt_arg(a) for a in args)])

    #: a spec without arguments takes ``length`` as its one size argument (``twopoint``, ``swa`` templates)
    length_template: ClassVar[bool] = False

    @classmethod
    def from_spec_args(cls, args: list[str], length: int | None = None) -> "AveragingKernel":
        """Build from the text arguments of a spec; ``length`` fills omitted size arguments (see subclasses)."""
        if not args and length is not None and cls.length_template:
            return cls(length)
        if len(args) != len(cls.params):
            raise ValueError(f"{cls.spec_name} takes {len(cls.params)} argument(s) {cls.params}, got {args}")
        return cls(*(_parse_number(a) for a in args))

    spec_forms: ClassVar[str] = ""


def _fmt_arg(a) -> str:
    if isinstance(a, np.ndarray):
        return ",".join(repr(float(x)) for x in a)
    if isinstance(a, float):
        return repr(a)
    return str(a)


def _parse_number(text: str):
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


@dataclass(frozen=True)
class Last(AveragingKernel):
    r"""No averaging: :math:`\mu_0 = 1`."""

    spec_name: ClassVar[str] = "last"
    spec_aliases: ClassVar[tuple] = ("sgd", "last_iterate")
    spec_forms: ClassVar[str] = "last"

    @property
    def point_weights(self) -> np.ndarray:
        return np.ones(1)

    def tracking(self) -> Tracking:
        return Tracking("last")

    def psi(self, T: Transition):
        return 0.5 * T.ops.I

    def paper_factor(self, Gam, ops: Ops):
        return ops.I.copy()

    def __repr__(self) -> str:
        return "Last()"


@dataclass(frozen=True)
class TwoPoint(AveragingKernel):
    r"""Two-point average :math:`(u_t + u_{t-\Delta})/2`: :math:`\mu_0 = \mu_\Delta = 1/2` (paper A.3, eq. 20).

    delta: distance between the two points, in steps (integer >= 1).
    """

    delta: int
    spec_name: ClassVar[str] = "twopoint"
    spec_aliases: ClassVar[tuple] = ("two_point", "two-point")
    params: ClassVar[tuple] = ("delta",)
    spec_forms: ClassVar[str] = "twopoint:D"
    length_template: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "delta", _check_int("delta", self.delta, 1))

    @property
    def stride(self) -> int:  # type: ignore[override]
        return self.delta

    @property
    def point_weights(self) -> np.ndarray:
        return np.full(2, 0.5)

    def tracking(self) -> Tracking:
        return Tracking("points", stride=self.delta, n=2)

    def psi(self, T: Transition):
        return 0.25 * (T.ops.I + T.power(self.delta))  # eq. 20

    def paper_factor(self, Gam, ops: Ops):
        return 0.5 * (ops.I + ops.power(Gam, self.delta))  # eq. 20: C_0 = 1/2, C_Delta = 1/4

    def __repr__(self) -> str:
        return f"TwoPoint(delta={self.delta})"


def _uniform_psi(n: int, D: int, T: Transition):
    r""":math:`\tfrac1{2n}I + n^{-2} H T_{n-1}(H)`, :math:`H = M^\Delta` (eq. 21 without its inverses)."""
    ops = T.ops
    if n == 1:
        return 0.5 * ops.I
    H = T.power(D) if D > 1 else T.M
    return ops.I / (2.0 * n) + ops.mul(H, triangular_geometric(H, n - 1, ops)) / float(n * n)


def _uniform_paper_factor(n: int, D: int, Gam, ops: Ops):
    """eq. 21 as printed, with the inverses of (I - Gamma^Delta)."""
    I = ops.I
    if n == 1:
        return I.copy()
    GD = ops.power(Gam, D)
    inv1 = ops.inv_solve(I - GD, I)  # (I - Gamma^Delta)^{-1}
    G1 = ops.mul(ops.mul(inv1, GD), I - ops.power(GD, n - 1))
    G2 = ops.mul(ops.mul(ops.mul(inv1, inv1), GD),
                 I - n * ops.power(GD, n - 1) + (n - 1) * ops.power(GD, n))
    return I / n + (2.0 / n) * (G1 - G2 / n)  # eq. 21


@dataclass(frozen=True)
class NPoint(AveragingKernel):
    r"""n-point average :math:`n^{-1}\sum_{k<n} u_{t-k\Delta}`: :math:`\mu_{k\Delta} = 1/n` (paper A.4, eq. 21).

    n: number of points (integer >= 2). delta: spacing in steps (integer >= 1).
    """

    n: int
    delta: int
    spec_name: ClassVar[str] = "npoint"
    spec_aliases: ClassVar[tuple] = ("n_point", "n-point")
    params: ClassVar[tuple] = ("n", "delta")
    spec_forms: ClassVar[str] = "npoint:n:D"

    def __post_init__(self):
        object.__setattr__(self, "n", _check_int("n", self.n, 2))
        object.__setattr__(self, "delta", _check_int("delta", self.delta, 1))

    @property
    def stride(self) -> int:  # type: ignore[override]
        return self.delta

    @property
    def point_weights(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def tracking(self) -> Tracking:
        return Tracking("points", stride=self.delta, n=self.n)

    def psi(self, T: Transition):
        return _uniform_psi(self.n, self.delta, T)

    def paper_factor(self, Gam, ops: Ops):
        return _uniform_paper_factor(self.n, self.delta, Gam, ops)

    @classmethod
    def from_spec_args(cls, args, length=None):
        if len(args) == 1 and length is not None:
            n = check_int("n", _parse_number(args[0]), 2)
            D = length // (n - 1)
            if D < 1:
                raise ValueError(f"npoint:{n} needs a length >= {n - 1}, got {length}")
            return cls(n, D)
        return super().from_spec_args(args, length)

    def __repr__(self) -> str:
        return f"NPoint(n={self.n}, delta={self.delta})"


@dataclass(frozen=True)
class SWA(AveragingKernel):
    r"""Stochastic weight averaging over a window (cycle c = 1): :math:`\mu_k = 1/W` for :math:`k < W`.

    window: number of most recent iterates averaged (integer >= 1; 1 is plain SGD).
    """

    window: int
    spec_name: ClassVar[str] = "swa"
    params: ClassVar[tuple] = ("window",)
    spec_forms: ClassVar[str] = "swa:W"
    length_template: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "window", _check_int("window", self.window, 1))

    @property
    def point_weights(self) -> np.ndarray:
        return np.full(self.window, 1.0 / self.window)

    def tracking(self) -> Tracking:
        return Tracking("last") if self.window == 1 else Tracking("points", stride=1, n=self.window)

    def psi(self, T: Transition):
        return _uniform_psi(self.window, 1, T)

    def paper_factor(self, Gam, ops: Ops):
        return _uniform_paper_factor(self.window, 1, Gam, ops)

    def __repr__(self) -> str:
        return f"SWA(window={self.window})"


@dataclass(frozen=True)
class EMA(AveragingKernel):
    r"""Exponential moving average :math:`e \leftarrow (1-a)e + a u`: :math:`\mu_k = a(1-a)^k`.

    decay: the weight ``a`` of the newest iterate, in (0, 1] (1 is plain SGD); the paper's
    "decay rate of 450 steps" is ``decay = 1/450``.
    """

    decay: float
    spec_name: ClassVar[str] = "ema"
    params: ClassVar[tuple] = ("decay",)
    spec_forms: ClassVar[str] = "ema:a"

    def __post_init__(self):
        a = self.decay
        if isinstance(a, (bool, np.bool_)):
            raise ValueError(f"decay must be a float in (0, 1], got {a!r}")
        try:
            a = float(a)
        except (TypeError, ValueError):
            raise ValueError(f"decay must be a float in (0, 1], got {self.decay!r}") from None
        if not math.isfinite(a) or not (0.0 < a <= 1.0):
            raise ValueError(f"decay must be in (0, 1], got {a!r}")
        object.__setattr__(self, "decay", a)

    @property
    def support(self) -> float:  # type: ignore[override]
        return math.inf

    @property
    def point_weights(self) -> np.ndarray:
        raise TypeError("EMA has infinite support; use weights(length)")

    def weights(self, length: int | None = None) -> np.ndarray:
        if length is None:
            raise ValueError("EMA has infinite support: pass length to weights()")
        k = np.arange(int(length))
        return self.decay * (1.0 - self.decay) ** k

    def autocorrelation(self, length: int = 1000) -> np.ndarray:
        r""":math:`C_\delta = a(1-a)^\delta/(2-a)`; shape (length,)."""
        a = self.decay
        return a * (1.0 - a) ** np.arange(length) / (2.0 - a)

    def cumulative(self, r: np.ndarray) -> np.ndarray:
        r""":math:`\sum_{m<r}\mu_m = 1-(1-a)^r` (Table 1 EMA row, off-by-one corrected)."""
        r = np.asarray(r, dtype=np.float64)
        a = self.decay
        if a == 1.0:
            return np.where(r >= 1, 1.0, 0.0)
        return -np.expm1(r * math.log1p(-a))

    def tracking(self) -> Tracking:
        return Tracking("geometric", decay=self.decay)

    def psi(self, T: Transition):
        r""":math:`\frac{a}{2(2-a)}(I + (1-a)M)(I - (1-a)M)^{-1}`."""
        a = self.decay
        c = a / (2.0 * (2.0 - a))
        num = T.ops.I + (1.0 - a) * T.M
        return c * T.solve_shifted(a, num)

    def paper_factor(self, Gam, ops: Ops):
        a = self.decay
        # C_delta = a (1-a)^delta / (2-a): geometric sum in closed form
        x = (1.0 - a) * Gam
        I = ops.I
        return (a / (2.0 - a)) * (I + 2.0 * ops.inv_solve(I - x, x))

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay!r})"


@dataclass(frozen=True, eq=False)
class Kernel(AveragingKernel):
    r"""Any finite kernel: ``weights[k]`` multiplies :math:`u_{t-k}`; non-negative, summing to 1.

    weights: 1-D array of length L >= 1 (trailing zeros are allowed).
    """

    weights_: np.ndarray = field(repr=False)
    spec_name: ClassVar[str] = "kernel"
    params: ClassVar[tuple] = ("weights",)
    spec_forms: ClassVar[str] = "kernel:w0,w1,..."

    def __init__(self, weights):
        if isinstance(weights, (str, bytes)):
            raise ValueError(f"weights must be a non-empty 1-D array of numbers, got the string {weights!r}")
        try:
            w = np.array(weights, dtype=np.float64, copy=True)
        except (TypeError, ValueError):
            raise ValueError(f"weights must be a non-empty 1-D array of numbers, got {weights!r}") from None
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"weights must be a non-empty 1-D array, got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite (no NaN/inf)")
        if np.any(w < 0):
            raise ValueError(f"weights must be non-negative, min is {w.min()!r}")
        s = float(w.sum())
        if abs(s - 1.0) > 1e-9:
            raise ValueError(f"weights must sum to 1 (within 1e-9), they sum to {s!r}")
        nz = np.flatnonzero(w)
        w = w[: nz[-1] + 1]
        w.setflags(write=False)
        object.__setattr__(self, "weights_", w)

    @property
    def point_weights(self) -> np.ndarray:
        return self.weights_

    def spec_args(self) -> tuple:
        return (self.weights_,)

    @classmethod
    def from_spec_args(cls, args, length=None):
        if len(args) != 1:
            raise ValueError(f"kernel takes one comma-separated list of weights, got {args}")
        return cls([_parse_number(x) for x in args[0].split(",") if x.strip()])

    def __eq__(self, other):
        return isinstance(other, Kernel) and np.array_equal(self.weights_, other.weights_)

    def __hash__(self):
        return hash(self.weights_.tobytes())

    def __repr__(self) -> str:
        return f"Kernel(weights={np.array2string(self.weights_, threshold=8)})"


# ====================================================================================== spec grammar
def kernel_classes() -> dict[str, type]:
    """Registered kernel classes by spec name (``{"last": Last, "twopoint": TwoPoint, ...}``)."""
    return dict(_REGISTRY)


def _forms() -> str:
    return ", ".join(c.spec_forms or c.spec_name for c in _REGISTRY.values())


def canonical_name(name: str) -> str:
    """The spec name of a kernel given by spec name, class name or alias (case-insensitive)."""
    if not isinstance(name, str) or name.strip().lower() not in _ALIASES:
        raise ValueError(f"unknown kernel {name!r}; known: {_forms()}")
    return _ALIASES[name.strip().lower()]


def parse_kernel(spec, length: int | None = None) -> AveragingKernel:
    """The kernel a spec string denotes: ``name[:arg[:arg]]`` -- the grammar of ``str(kernel)``.

    ``last``, ``twopoint:D``, ``npoint:n:D``, ``swa:W``, ``ema:a``, ``kernel:w0,w1,...`` (names are
    case-insensitive; class names and aliases such as ``two_point`` are accepted). ``length`` fills
    omitted size arguments of templates: ``twopoint`` -> ``TwoPoint(length)``, ``swa`` ->
    ``SWA(length)``, ``npoint:n`` -> ``NPoint(n, length // (n-1))``. An AveragingKernel is returned as is.
    ValueError naming the spec and the known forms otherwise.
    """
    if isinstance(spec, AveragingKernel):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"kernel spec must be a non-empty string such as 'ema:0.02', got {spec!r}")
    name, *args = spec.strip().split(":")
    cls = _REGISTRY[canonical_name(name)]
    try:
        return cls.from_spec_args(args, length)
    except (ValueError, TypeError) as e:
        raise ValueError(f"bad kernel spec {spec!r} ({e}); forms: {_forms()}") from None


def kernel_from_params(name: str, params: dict) -> AveragingKernel:
    """The kernel ``name`` (spec name, class name or alias) built from a dict holding its ``params``."""
    cls = _REGISTRY[canonical_name(name)]
    return cls(*(params[p] for p in cls.params))
