r"""From a learning-rate cooldown to the averaging kernel that stands for it (Table 1 / Lemma 2, inverted).

:func:`quadsgd.equivalent_schedule` maps a kernel to its schedule: the step taken ``r`` steps before the
averaging time gets the multiplier :math:`m_r = \sum_{q<r}\mu_q` (the kernel's ``cumulative``).
:func:`kernel_for_schedule` inverts it: :math:`\mu_0 = m_1`, :math:`\mu_q = m_{q+1} - m_q`, a non-negative
kernel exactly when the multipliers are non-decreasing, start at >= 0 and end at 1. :func:`cooldown`
gives the multipliers of the named cooldown shapes used in warmup-stable-decay training:

=============  =====================================  ==============================================
shape          lr factor at cooldown progress x        multiplier of the step r before T (r = 1..L)
=============  =====================================  ==============================================
``linear``     1 - x                                   r / L  (the kernel is ``SWA(L)``)
``1-sqrt``     1 - sqrt(x)                             1 - sqrt(1 - r/L)
``cosine``     (1 + cos(pi x)) / 2                     (1 - cos(pi r/L)) / 2
``exp``        final ** x (exponential decay)          final ** ((L - r)/L)
=============  =====================================  ==============================================

with x = (L - r)/L the fraction of the cooldown done before that step (x = 0 at its first step).

The kernel returned is the canonical one of its weights (one rule, by weights, never by the kernel's
class): a single point is :class:`~quadsgd.kernels.Last`; uniform weights at consecutive lags are
:class:`~quadsgd.kernels.SWA`; two equal weights are :class:`~quadsgd.kernels.TwoPoint`; ``n >= 3`` equal
weights at a stride are :class:`~quadsgd.kernels.NPoint`; anything else a :class:`~quadsgd.kernels.Kernel`.
So ``kernel_for_schedule(equivalent_schedule(k, 1.0))`` is ``k`` for every kernel in canonical form
(``SWA(1)``, ``EMA(1)``, ``Kernel([1])`` are ``Last()``; ``TwoPoint(1)`` and ``NPoint(n, 1)`` are ``SWA``;
``NPoint(2, D)`` is ``TwoPoint(D)``).

EMA (infinite support) and truncation: an EMA's schedule over its last L steps is
:math:`1 - (1-a)^r`, which never reaches 1 (the weight :math:`(1-a)^L` lies on iterates older than the
window, whose steps keep the full lr). Multipliers that are this geometric sequence (``a = multipliers[0]`` < 1,
every entry within 1e-9) are ``EMA(a)``, whose schedule over any window is exactly the given one, whether the
window ends below 1 (truncated) or reaches 1 to rounding (a window of many 1/a); the weight beyond the window
is the EMA's own tail, not moved onto the window's oldest point. Any other sequence must end at 1.
"""
from __future__ import annotations

import math

import numpy as np

from sgdtraj.arguments import check_array, check_choice, check_int, check_real

from .kernels import EMA, SWA, AveragingKernel, Kernel, Last, NPoint, TwoPoint

__all__ = ["kernel_for_schedule", "cooldown", "COOLDOWN_SHAPES"]

#: the named cooldown shapes of :func:`cooldown`
COOLDOWN_SHAPES = ("linear", "1-sqrt", "cosine", "exp")

#: tolerance of "non-decreasing", "ends at 1" and "is geometric" (absolute, on multipliers in [0, 1])
TOL = 1e-9


def cooldown(shape: str, length: int, final: float = 0.01) -> np.ndarray:
    """Multipliers of the cooldown ``shape`` over its last ``length`` steps: ``out[r-1]`` for the step r steps
    before its end, r = 1..length; non-decreasing, ``out[-1] == 1``.

    shape: one of :data:`COOLDOWN_SHAPES` (table in the module docstring). length: L >= 1 steps.
    final: the lr factor the ``exp`` shape decays to, in (0, 1) (ignored by the others).
    ValueError naming ``shape``, ``length`` or ``final`` otherwise.
    """
    shape = check_choice("shape", shape, COOLDOWN_SHAPES)
    L = check_int("length", length, 1)
    r = np.arange(1, L + 1, dtype=np.float64)
    if shape == "linear":
        m = r / L
    elif shape == "1-sqrt":
        m = 1.0 - np.sqrt(1.0 - r / L)
    elif shape == "cosine":
        m = 0.5 * (1.0 - np.cos(np.pi * r / L))
    else:
        f = check_real("final", final, 0.0, 1.0, low_open=True, high_open=True)
        m = np.exp(math.log(f) * (L - r) / L)
    m[-1] = 1.0
    return m


def kernel_for_schedule(multipliers) -> AveragingKernel:
    r"""The kernel whose equivalent schedule is ``multipliers`` (Table 1 inverted: :math:`\mu_q = m_{q+1} - m_q`).

    multipliers: 1-D array, ``multipliers[r-1]`` the lr multiplier of the step r steps before the averaging
    time (r = 1..L: the reverse of the time order of :func:`quadsgd.equivalent_schedule`'s output, so
    ``kernel_for_schedule(equivalent_schedule(k, 1.0)[::-1])`` is ``k``); non-decreasing in r, in [0, 1], ending at 1
    (or an EMA's truncated schedule
    :math:`1-(1-a)^r`, see the module docstring); tolerance 1e-9. Returns the canonical kernel of the
    weights (module docstring). ValueError naming ``multipliers`` for a schedule that no non-negative
    kernel gives (a decrease, a value outside [0, 1], an end below 1 that is not geometric).
    """
    m = check_array("multipliers", multipliers, ndim=(1,))
    if np.any(m < -TOL) or np.any(m > 1.0 + TOL):
        i = int(np.flatnonzero((m < -TOL) | (m > 1.0 + TOL))[0])
        raise ValueError(f"multipliers must lie in [0, 1] (lr factors); multipliers[{i}] = {float(m[i])!r}")
    d = np.diff(m)
    if np.any(d < -TOL):
        i = int(np.flatnonzero(d < -TOL)[0])
        hint = (" (they look like a schedule in time order, e.g. equivalent_schedule's output: pass "
                "multipliers[::-1])" if abs(m[0] - 1.0) <= TOL and np.all(d <= TOL) else "")
        raise ValueError(f"multipliers must be non-decreasing in r (no non-negative kernel gives a decrease): "
                         f"multipliers[{i + 1}] = {float(m[i + 1])!r} < multipliers[{i}] = {float(m[i])!r}{hint}")
    ema = _geometric(m)
    if ema is not None:
        return ema
    if abs(m[-1] - 1.0) > TOL:
        raise ValueError(f"multipliers must end at 1 (every weight inside the window), got "
                         f"multipliers[-1] = {float(m[-1])!r}; only an EMA's schedule 1 - (1-a)^r may end below 1")
    mu = np.clip(np.diff(np.concatenate([[0.0], np.clip(m, 0.0, 1.0)])), 0.0, None)  # rounding: -1e-9 -> 0
    return _canonical(mu / mu.sum())


def _geometric(m: np.ndarray) -> EMA | None:
    """EMA(a) when m[r-1] = 1 - (1-a)^r (a = m[0] in (0, 1)) within :data:`TOL`, else None."""
    a = float(m[0])
    if not 0.0 < a < 1.0:
        return None
    r = np.arange(1, len(m) + 1)
    ref = EMA(a).cumulative(r)
    return EMA(a) if np.all(np.abs(ref - m) <= TOL) else None


def _canonical(mu: np.ndarray) -> AveragingKernel:
    """The canonical kernel of dense weights ``mu`` (lags 0..L-1, non-negative, summing to 1)."""
    lags = np.flatnonzero(mu)
    w = mu[lags]
    n = len(lags)
    if n == 1 and lags[0] == 0:
        return Last()
    uniform = bool(np.all(np.abs(w - 1.0 / n) <= TOL))
    if uniform and lags[0] == 0 and n >= 2:
        steps = np.diff(lags)
        if np.all(steps == steps[0]):
            D = int(steps[0])
            if D == 1:
                return SWA(n)
            return TwoPoint(D) if n == 2 else NPoint(n, D)
    return Kernel(mu[: lags[-1] + 1])
