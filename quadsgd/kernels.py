r"""Averaging kernels: the weights :math:`\mu_k` of :math:`\hat u_t = \sum_{k\ge 0} \mu_k u_{t-k}`.

Paper, Appendix A.2: an average of the trajectory is defined by a kernel :math:`\{\mu_k\}`; its
autocorrelation :math:`C_\delta = \sum_k \mu_k \mu_{k+\delta}` (eq. 17) is all that the stationary
covariance depends on (eq. 19).

Every kernel here has ``stride`` and ``point_weights``: the non-zero weights sit at lags
``0, stride, 2*stride, ...`` (a compressed form used by the exact transient propagation and the
simulator), except :class:`EMA`, whose infinite geometric support is handled as a Markov state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["AveragingKernel", "Last", "TwoPoint", "NPoint", "SWA", "EMA", "Kernel"]


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return value


class AveragingKernel:
    """Base class. Subclasses define ``weights`` (finite kernels) or a closed form (EMA)."""

    #: lag between consecutive non-zero weights (steps)
    stride: int = 1

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


@dataclass(frozen=True)
class Last(AveragingKernel):
    r"""No averaging: :math:`\mu_0 = 1`."""

    @property
    def point_weights(self) -> np.ndarray:
        return np.ones(1)

    def __repr__(self) -> str:
        return "Last()"


@dataclass(frozen=True)
class TwoPoint(AveragingKernel):
    r"""Two-point average :math:`(u_t + u_{t-\Delta})/2`: :math:`\mu_0 = \mu_\Delta = 1/2` (paper A.3, eq. 20).

    delta: distance between the two points, in steps (integer >= 1).
    """

    delta: int

    def __post_init__(self):
        object.__setattr__(self, "delta", _check_int("delta", self.delta, 1))

    @property
    def stride(self) -> int:  # type: ignore[override]
        return self.delta

    @property
    def point_weights(self) -> np.ndarray:
        return np.full(2, 0.5)

    def __repr__(self) -> str:
        return f"TwoPoint(delta={self.delta})"


@dataclass(frozen=True)
class NPoint(AveragingKernel):
    r"""n-point average :math:`n^{-1}\sum_{k<n} u_{t-k\Delta}`: :math:`\mu_{k\Delta} = 1/n` (paper A.4, eq. 21).

    n: number of points (integer >= 2). delta: spacing in steps (integer >= 1).
    """

    n: int
    delta: int

    def __post_init__(self):
        object.__setattr__(self, "n", _check_int("n", self.n, 2))
        object.__setattr__(self, "delta", _check_int("delta", self.delta, 1))

    @property
    def stride(self) -> int:  # type: ignore[override]
        return self.delta

    @property
    def point_weights(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def __repr__(self) -> str:
        return f"NPoint(n={self.n}, delta={self.delta})"


@dataclass(frozen=True)
class SWA(AveragingKernel):
    r"""Stochastic weight averaging over a window (cycle c = 1): :math:`\mu_k = 1/W` for :math:`k < W`.

    window: number of most recent iterates averaged (integer >= 1; 1 is plain SGD).
    """

    window: int

    def __post_init__(self):
        object.__setattr__(self, "window", _check_int("window", self.window, 1))

    @property
    def point_weights(self) -> np.ndarray:
        return np.full(self.window, 1.0 / self.window)

    def __repr__(self) -> str:
        return f"SWA(window={self.window})"


@dataclass(frozen=True)
class EMA(AveragingKernel):
    r"""Exponential moving average :math:`e \leftarrow (1-a)e + a u`: :math:`\mu_k = a(1-a)^k`.

    decay: the weight ``a`` of the newest iterate, in (0, 1] (1 is plain SGD); the paper's
    "decay rate of 450 steps" is ``decay = 1/450``.
    """

    decay: float

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

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay!r})"


@dataclass(frozen=True, eq=False)
class Kernel(AveragingKernel):
    r"""Any finite kernel: ``weights[k]`` multiplies :math:`u_{t-k}`; non-negative, summing to 1.

    weights: 1-D array of length L >= 1 (trailing zeros are allowed).
    """

    weights_: np.ndarray = field(repr=False)

    def __init__(self, weights):
        w = np.array(weights, dtype=np.float64, copy=True)
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

    def __eq__(self, other):
        return isinstance(other, Kernel) and np.array_equal(self.weights_, other.weights_)

    def __hash__(self):
        return hash(self.weights_.tobytes())

    def __repr__(self) -> str:
        return f"Kernel(weights={np.array2string(self.weights_, threshold=8)})"
