r"""Averaging kernels: the weights :math:`\mu_k` of :math:`\hat u_t = \sum_{k\ge 0} \mu_k u_{t-k}`.

Paper, Appendix A.2: an average of the trajectory is defined by a kernel :math:`\{\mu_k\}`; its
autocorrelation :math:`C_\delta = \sum_k \mu_k \mu_{k+\delta}` (eq. 17) is all that the stationary
covariance depends on (eq. 19). Kernels: ``Last``, ``TwoPoint``, ``NPoint``, ``SWA``, ``EMA``, ``Kernel``
(any finite weights). A kernel carries its own behaviour (the integrators never switch on its type):

* :meth:`~AveragingKernel.psi` -- its generating function
  :math:`\Psi(M) = \tfrac{C_0}{2}I + \sum_{\delta\ge1}C_\delta M^\delta` on a :class:`~quadsgd._linalg.Transition`;
* :meth:`~AveragingKernel.paper_factor` -- eq. 19's bracket :math:`C_0 + 2\sum_\delta C_\delta\Gamma^\delta`
  exactly as the paper prints it (eq. 20, 21);
* :meth:`~AveragingKernel.cumulative` -- :math:`\sum_{m<r}\mu_m`, the Table 1 multiplier;
* :meth:`~AveragingKernel.tracking` -- how an online average is kept (:class:`Tracking`): the last
  iterate, a geometric recursion (EMA) or weighted points at a stride;
* one spec grammar: ``str(kernel)`` (e.g. ``"ema:0.02"``, ``"twopoint:100"``) and :func:`parse_kernel`.

A new finite kernel needs only ``point_weights`` (and ``stride`` if its points are spaced); subclasses with a
``spec_name`` register themselves for :func:`parse_kernel`. SWA, TwoPoint and NPoint answer everything in closed
form (O(1) memory for any support); the dense ``weights()``, ``point_weights`` and ``autocorrelation()`` raise
ValueError naming the size parameter beyond :data:`sgdtraj.arguments.MAX_ARRAY_BYTES`. Size parameters are
<= 2**62. Costs, huge kernels and the stability edge: ``docs/kernels.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from sgdtraj.arguments import check_array, check_int, check_real, check_size

from ._linalg import Ops, Transition, triangular_geometric

__all__ = ["AveragingKernel", "Last", "TwoPoint", "NPoint", "SWA", "EMA", "Kernel", "Tracking", "parse_kernel",
           "kernel_from_params", "kernel_classes"]


#: largest size parameter of a kernel (its support must fit in int64 arithmetic: 2**62 steps)
_MAX_SIZE = 2 ** 62


def _check_int(name: str, value, low: int) -> int:
    v = check_int(name, value, low)
    if v > _MAX_SIZE:
        raise ValueError(f"{name} must be an integer >= {low} and <= 2**62 (supports are int64 step counts), got {v}")
    return v


def _check_lags(r) -> np.ndarray:
    """r as an int64 array of lags >= 0 (integral floats accepted); ValueError naming r otherwise."""
    if isinstance(r, (str, bytes)) or isinstance(r, (bool, np.bool_)):
        raise ValueError(f"r must be an integer or an array of integers >= 0, got {r!r}")
    try:
        a = np.asarray(r)
    except (TypeError, ValueError):
        raise ValueError(f"r must be an integer or an array of integers >= 0, got {type(r).__name__}") from None
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(a) & (a == np.round(a)) & (np.abs(a) < 2.0 ** 62)
        if not np.all(ok):
            raise ValueError(f"r must hold integers >= 0, got {a.ravel()[np.flatnonzero(~ok.ravel())[0]]!r}")
    elif a.dtype.kind not in "iu":
        raise ValueError(f"r must be an integer or an array of integers >= 0, got an array of dtype {a.dtype}")
    a = a.astype(np.int64)
    if np.any(a < 0):
        raise ValueError(f"r must hold integers >= 0, got {int(a.min())}")
    return a


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
        L = self.support if length is None else check_int("length", length, 0)
        check_size("length" if length is not None else "kernel", L, f"the dense weights of {self!r}",
                   hint="the kernel's closed forms (cumulative, psi, tracking) need no dense weights")
        mu = np.zeros(L)
        pw = self.point_weights
        idx = np.arange(len(pw)) * self.stride
        keep = idx < L
        mu[idx[keep]] = pw[keep]
        return mu

    def autocorrelation(self) -> np.ndarray:
        r""":math:`C_\delta = \sum_k \mu_k\mu_{k+\delta}` for :math:`\delta = 0..L-1` (eq. 17); shape (L,).

        Cost O(L log L) (FFT) for L > 4096 lags, direct correlation below.
        """
        mu = self.weights()
        return _autocorrelation(mu)

    def cumulative(self, r: np.ndarray) -> np.ndarray:
        r""":math:`\sum_{m<r}\mu_m` for integer r >= 0 (the Table 1 multiplier); shape of r.

        Exactly 1.0 for r >= support (every weight included: the multiplier is 1 before the support).
        """
        r = _check_lags(r)
        mu = self.weights()
        cs = np.concatenate([[0.0], np.cumsum(mu)])
        cs[-1] = 1.0
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

        Default (any finite kernel): the autocorrelation of the L point weights at lags 0, D, 2D, ...
        (stride compression; FFT, O(L log L)), then the polynomial in :math:`H = M^D`: Horner for L <= 256,
        Paterson-Stockmeyer beyond (O(sqrt L) products of transitions plus O(L) scaled additions of the
        stored powers: a kernel of 1e6 weights on 1e3 scalars takes well under a second).
        """
        ops = T.ops
        pw = np.asarray(self.point_weights, dtype=np.float64)
        D = self.stride
        c = _autocorrelation(pw)  # autocorrelation at lags 0, D, 2D, ...
        H = T.power(D) if D > 1 else T.M
        if len(c) == 1:
            return 0.5 * c[0] * ops.I
        if len(c) > _HORNER_MAX:
            return 0.5 * c[0] * ops.I + ops.mul(H, _polynomial(c[1:], H, ops))
        acc = c[-1] * ops.I
        for cm in c[-2:0:-1]:
            acc = cm * ops.I + ops.mul(H, acc)
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
        r""":math:`K(g) = \mathrm{Var}\,\hat u/\mathrm{Var}\,u = C_0 + 2\sum_\delta C_\delta g^\delta` of a scalar
        AR(1).

        g: real or complex array (any shape) with every :math:`|g| < 1` (a stationary AR(1)); ValueError
        naming ``g`` otherwise.
        """
        return 2.0 * self.psi(Transition.scalars(_check_g(g)))

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


#: the default psi evaluates its polynomial by Horner up to this many lags, by Paterson-Stockmeyer beyond
_HORNER_MAX = 256
#: the autocorrelation uses the FFT beyond this many lags (direct correlation below: bit-stable)
_FFT_MIN = 4096


def _autocorrelation(mu: np.ndarray) -> np.ndarray:
    r""":math:`C_\delta = \sum_k\mu_k\mu_{k+\delta}`, :math:`\delta = 0..L-1`: O(L log L) by FFT for L > 4096
    (absolute error ~ 1e-16 x C_0), direct O(L^2) correlation below."""
    L = len(mu)
    if L > _FFT_MIN:
        n = 1 << (2 * L - 1).bit_length()
        f = np.fft.rfft(mu, n)
        return np.fft.irfft(f * np.conj(f), n)[:L]
    return np.correlate(mu, mu, mode="full")[L - 1:]


def _polynomial(coef: np.ndarray, H, ops: Ops):
    r""":math:`\sum_{k<n} \mathrm{coef}_k H^k` by Paterson-Stockmeyer: powers :math:`H^0..H^{B-1}` stored
    (B ~ sqrt n, fewer if they would not fit in 2**27 entries), block sums by tensordot, Horner over the
    n/B blocks in :math:`H^B`."""
    n = len(coef)
    size = max(1, int(np.asarray(ops.I).size))
    B = max(2, min(int(math.isqrt(n)) + 1, (1 << 27) // size))
    P = [ops.I]
    for _ in range(B - 1):
        P.append(ops.mul(H, P[-1]))
    HB = ops.mul(H, P[-1])
    P = np.stack([np.asarray(p) for p in P])  # (B, ...)
    acc = None
    for start in range(((n - 1) // B) * B, -1, -B):
        blk = coef[start:start + B]
        S = np.tensordot(blk, P[:len(blk)], axes=(0, 0))
        acc = S if acc is None else S + ops.mul(HB, acc)
    return acc


def _check_g(g):
    """g as a float64 or complex128 array with every |g| < 1 (ValueError naming g otherwise)."""
    if isinstance(g, (str, bytes)) or isinstance(g, (bool, np.bool_)):
        raise ValueError(f"g must be a real or complex array with |g| < 1, got {g!r}")
    try:
        a = np.asarray(g)
    except (TypeError, ValueError):
        raise ValueError(f"g must be a real or complex array with |g| < 1, got {type(g).__name__}") from None
    if a.dtype.kind not in "iufc":
        raise ValueError(f"g must be a real or complex array with |g| < 1, got an array of dtype {a.dtype}")
    a = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
    with np.errstate(all="ignore"):
        ok = np.isfinite(a) & (np.abs(a) < 1.0)
    if not np.all(ok):
        bad = a.ravel()[np.flatnonzero(~ok.ravel())[0]]
        raise ValueError(f"g must have every |g| < 1 (the transition of a stationary AR(1)), got {bad!r}")
    return a


def _negative_scalars(T: Transition):
    """Mask of the real scalar transitions M < 0 whose 1 + M is given (closed forms near -1 apply), or None."""
    if T.ops.matrix or T.I_plus_M is None or np.iscomplexobj(T.M) or np.iscomplexobj(T.I_plus_M):
        return None
    neg = np.asarray(T.M) < 0
    return neg if np.any(neg) else None


def _abs_log(T: Transition, neg):
    r""":math:`\log|M| = \mathrm{log1p}(-(1+M))` where ``neg`` (M in (-1, 0)), from the accurate 1 + M."""
    with np.errstate(divide="ignore"):
        return np.log1p(-np.where(neg, T.I_plus_M, 0.5))


def _one_minus_power(L, n: int):
    r""":math:`1 - M^n` for M < 0 with :math:`\log|M| = L`: n even :math:`-\mathrm{expm1}(nL)`, n odd
    :math:`1 + e^{nL}`."""
    return -np.expm1(n * L) if n % 2 == 0 else 1.0 + np.exp(n * L)


def _one_plus_power(L, n: int):
    r""":math:`1 + M^n` for M < 0 with :math:`\log|M| = L`: n odd :math:`-\mathrm{expm1}(nL)`, n even
    :math:`1 + e^{nL}`."""
    return -np.expm1(n * L) if n % 2 == 1 else 1.0 + np.exp(n * L)


def _uniform_ratio_negative(n: int, H, opH, omH, L_H):
    r""":math:`K(H) = \frac{1+H}{n(1-H)} - \frac{2H(1-H^n)}{n^2(1-H)^2}` for :math:`H \in (-1, 0)`: both terms >= 0,
    no cancellation, with :math:`1 \pm H` and :math:`1 - H^n` (from :math:`\log|H|`) accurate near -1."""
    return opH / (n * omH) - 2.0 * H * _one_minus_power(L_H, n) / (float(n) * n * omH * omH)


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

    @property
    def support(self) -> int:  # type: ignore[override]
        return self.delta + 1

    def cumulative(self, r: np.ndarray) -> np.ndarray:
        r""":math:`\sum_{m<r}\mu_m`: 0 (r = 0), 1/2 (1 <= r <= delta), 1 (r > delta); O(1) memory."""
        r = _check_lags(r)
        return np.where(r <= 0, 0.0, np.where(r <= self.delta, 0.5, 1.0))

    def autocorrelation(self) -> np.ndarray:
        r""":math:`C_0 = 1/2`, :math:`C_\Delta = 1/4`, 0 elsewhere; shape (delta + 1,) (refused beyond 2 GiB)."""
        check_size("delta", self.delta + 1, f"the autocorrelation of {self!r}",
                   hint="it is C_0 = 1/2, C_delta = 1/4 and 0 elsewhere")
        c = np.zeros(self.delta + 1)
        c[0] = 0.5
        c[self.delta] += 0.25
        return c

    def tracking(self) -> Tracking:
        return Tracking("points", stride=self.delta, n=2)

    def psi(self, T: Transition):
        out = 0.25 * (T.ops.I + T.power(self.delta))  # eq. 20
        neg = _negative_scalars(T)
        if neg is not None and self.delta % 2 == 1:
            # M -> -1, odd delta: 1 + M^delta = -expm1(delta log|M|) (the two points cancel the alternating mode)
            out = np.where(neg, 0.25 * _one_plus_power(_abs_log(T, neg), self.delta), out)
        return out

    def paper_factor(self, Gam, ops: Ops):
        return 0.5 * (ops.I + ops.power(Gam, self.delta))  # eq. 20: C_0 = 1/2, C_Delta = 1/4

    def __repr__(self) -> str:
        return f"TwoPoint(delta={self.delta})"


def _uniform_psi(n: int, D: int, T: Transition):
    r""":math:`\tfrac1{2n}I + n^{-2} H T_{n-1}(H)`, :math:`H = M^\Delta` (eq. 21 without its inverses).

    O(log n) products by doubling (all terms added: exact near H = 1, the slow directions). Near
    H = -1 (real scalar M < 0 with ``T.I_plus_M``, odd D) the sum alternates and the doubling cancels
    :math:`1/(2n)` against :math:`-1/(2n) + O(1/n^2)`: there the closed form
    :math:`\Psi = \tfrac12 K(H)`, :math:`K(H) = \frac{1+H}{n(1-H)} - \frac{2H(1-H^n)}{n^2(1-H)^2}` (two non-negative
    terms, :func:`_uniform_ratio_negative`) is used instead.
    """
    ops = T.ops
    if n == 1:
        return 0.5 * ops.I
    H = T.power(D) if D > 1 else T.M
    out = ops.I / (2.0 * n) + ops.mul(H, triangular_geometric(H, n - 1, ops)) / float(n * n)
    neg = _negative_scalars(T)
    if neg is not None and D % 2 == 1:
        L1 = _abs_log(T, neg)
        LH = D * L1
        if D == 1:
            opH = np.where(neg, T.I_plus_M, 0.5)
            omH = np.where(neg, T.I_minus_M if T.I_minus_M is not None else 1.0 - T.M, 1.5)
            Hn = np.where(neg, T.M, -0.5)
        else:
            opH = np.where(neg, -np.expm1(LH), 0.5)
            omH = np.where(neg, 1.0 + np.exp(LH), 1.5)
            Hn = np.where(neg, -np.exp(LH), -0.5)
        out = np.where(neg, 0.5 * _uniform_ratio_negative(n, Hn, opH, omH, LH), out)
    return out


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
        if (self.n - 1) * self.delta + 1 > _MAX_SIZE:
            raise ValueError(f"n and delta must give a support (n - 1) * delta + 1 <= 2**62, got n = {self.n}, "
                             f"delta = {self.delta}")

    @property
    def stride(self) -> int:  # type: ignore[override]
        return self.delta

    @property
    def point_weights(self) -> np.ndarray:
        check_size("n", self.n, f"the point weights of {self!r}", hint="they are all 1/n")
        return np.full(self.n, 1.0 / self.n)

    @property
    def support(self) -> int:  # type: ignore[override]
        return (self.n - 1) * self.delta + 1

    def weights(self, length: int | None = None) -> np.ndarray:
        r"""Dense weights :math:`\mu_0..\mu_{L-1}` (1/n at lags k Delta); shape (L,); O(L) whatever n."""
        L = self.support if length is None else check_int("length", length, 0)
        check_size("length" if length is not None else "n", L, f"the dense weights of {self!r}",
                   hint="the kernel's closed forms (cumulative, psi, tracking) need no dense weights")
        mu = np.zeros(L)
        mu[: min(L, self.support): self.delta] = 1.0 / self.n
        return mu

    def cumulative(self, r: np.ndarray) -> np.ndarray:
        r""":math:`\sum_{m<r}\mu_m = \min(\lceil r/\Delta\rceil, n)/n`; O(1) memory (exactly 1 from r > (n-1) Delta)."""
        r = _check_lags(r)
        k = np.minimum(-((-np.maximum(r, 0)) // self.delta), self.n)
        return np.where(k >= self.n, 1.0, k / self.n)

    def autocorrelation(self) -> np.ndarray:
        r""":math:`C_{k\Delta} = (n-k)/n^2`, 0 between; shape (support,) (refused beyond 2 GiB)."""
        check_size("n", self.support, f"the autocorrelation of {self!r}",
                   hint="it is C_{k delta} = (n - k)/n^2 and 0 between")
        c = np.zeros(self.support)
        k = np.arange(self.n)
        c[k * self.delta] = (self.n - k) / float(self.n * self.n)
        return c

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
        check_size("window", self.window, f"the point weights of {self!r}", hint="they are all 1/window")
        return np.full(self.window, 1.0 / self.window)

    @property
    def support(self) -> int:  # type: ignore[override]
        return self.window

    def weights(self, length: int | None = None) -> np.ndarray:
        r"""Dense weights :math:`\mu_k = 1/W` (k < W); shape (L,); O(L) whatever W."""
        L = self.window if length is None else check_int("length", length, 0)
        check_size("length" if length is not None else "window", L, f"the dense weights of {self!r}",
                   hint="the kernel's closed forms (cumulative, psi, tracking) need no dense weights")
        mu = np.zeros(L)
        mu[: min(L, self.window)] = 1.0 / self.window
        return mu

    def cumulative(self, r: np.ndarray) -> np.ndarray:
        r""":math:`\sum_{m<r}\mu_m = \min(r, W)/W`; O(1) memory (exactly 1 from r = W)."""
        r = _check_lags(r)
        W = self.window
        return np.where(r >= W, 1.0, np.maximum(r, 0) / W)

    def autocorrelation(self) -> np.ndarray:
        r""":math:`C_\delta = (W-\delta)/W^2`; shape (W,) (refused beyond 2 GiB)."""
        check_size("window", self.window, f"the autocorrelation of {self!r}", hint="it is C_d = (W - d)/W^2")
        W = self.window
        return (W - np.arange(W)) / float(W * W)

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
        try:
            a = check_real("decay", self.decay, 0.0, 1.0, low_open=True)
        except ValueError:
            raise ValueError(f"decay must be in (0, 1] (a finite real number), got {self.decay!r}") from None
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
        length = check_size("length", check_int("length", length, 0), f"the dense weights of {self!r}")
        k = np.arange(length)
        return self.decay * (1.0 - self.decay) ** k

    def autocorrelation(self, length: int = 1000) -> np.ndarray:
        r""":math:`C_\delta = a(1-a)^\delta/(2-a)`; shape (length,)."""
        length = check_size("length", check_int("length", length, 1), f"the autocorrelation of {self!r}")
        a = self.decay
        return a * (1.0 - a) ** np.arange(length) / (2.0 - a)

    def cumulative(self, r: np.ndarray) -> np.ndarray:
        r""":math:`\sum_{m<r}\mu_m = 1-(1-a)^r` (Table 1 EMA row, off-by-one corrected)."""
        r = _check_lags(r).astype(np.float64)
        a = self.decay
        if a == 1.0:
            return np.where(r >= 1, 1.0, 0.0)
        return -np.expm1(r * math.log1p(-a))

    def tracking(self) -> Tracking:
        return Tracking("geometric", decay=self.decay)

    def psi(self, T: Transition):
        r""":math:`\frac{a}{2(2-a)}(I + (1-a)M)(I - (1-a)M)^{-1}`.

        With ``T.I_plus_M`` (scalars; for real ones where M < 0) both factors are written without
        cancellation: :math:`1 + (1-a)M = a + (1-a)(1+M)`, :math:`1 - (1-a)M = a + (1-a)(1-M)`.
        """
        a = self.decay
        c = a / (2.0 * (2.0 - a))
        num = T.ops.I + (1.0 - a) * T.M
        out = c * T.solve_shifted(a, num)
        if not T.ops.matrix and T.I_plus_M is not None:
            neg = True if np.iscomplexobj(T.M) or np.iscomplexobj(T.I_plus_M) else _negative_scalars(T)
            if neg is not None:
                omM = T.I_minus_M if T.I_minus_M is not None else 1.0 - T.M
                alt = c * (a + (1.0 - a) * T.I_plus_M) / (a + (1.0 - a) * omM)
                out = alt if neg is True else np.where(neg, alt, out)
        return out

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
        w = check_array("weights", weights, ndim=(1,), nonempty=False)
        if w.size == 0:
            raise ValueError("weights must be a non-empty 1-D array, got shape (0,)")
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
