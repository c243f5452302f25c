r"""Hypothesis strategies of models and kernels whose checks are fast: :func:`models`, :func:`kernels`.

Both draw only stable, well-conditioned cases with a bounded mixing time / memory (documented
ranges), so that one assertion takes well under a second, and shrink towards the simplest case
(a 1-d diagonal model, ``Last()``). hypothesis is imported when a strategy is built, not with
:mod:`quadsgd`.
"""
from __future__ import annotations

import math

import numpy as np

from sgdtraj.arguments import check_int, check_real

from .._heavy_ball import spectral_radius
from ..kernels import EMA, SWA, Kernel, Last, NPoint, TwoPoint
from ..model import LinearModel

__all__ = ["models", "kernels"]

_MODEL_KINDS = ("diagonal", "dense", "non_normal")
_KERNEL_KINDS = ("last", "two_point", "n_point", "swa", "ema", "kernel")


def _hypothesis():
    try:
        from hypothesis import assume
        from hypothesis import strategies as st
    except ImportError:  # pragma: no cover
        raise ImportError("quadsgd.testing strategies need hypothesis: pip install hypothesis") from None
    return st, assume


def _range(name, value, *, integer=False, low=None, low_open=False, high=None, high_open=False):
    """A number or a (low, high) pair -> (low, high), each checked by ``check_int`` / ``check_real``."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        pair = tuple(value)
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        pair = (value, value)
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    if integer:
        lo, hi = (check_int(name, v, low, high) for v in pair)
    else:
        lo, hi = (check_real(name, v, low, high, low_open, high_open) for v in pair)
    if lo > hi:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value!r}")
    return lo, hi


def _kinds(name, kind, allowed):
    if isinstance(kind, str):
        kinds = allowed if kind == "any" else (kind,)
    else:
        try:
            kinds = tuple(kind)
        except TypeError:
            raise ValueError(f"{name} must be 'any', one of {allowed} or a sequence of them, got {kind!r}") from None
    if not kinds or any(k not in allowed for k in kinds):
        raise ValueError(f"{name} must be 'any', one of {allowed} or a sequence of them, got {kind!r}")
    return kinds


def _eps_floor(max_mixing: float, beta: float) -> float:
    """Smallest lr*kappa whose heavy-ball mixing time is max_mixing: (1-r)(1-beta/r), r = 1-1/max_mixing."""
    r = 1.0 - 1.0 / max_mixing
    return (1.0 - r) * (1.0 - beta / r) * (1.0 + 1e-9)


def _rotation(angles, d):
    """Orthogonal d x d matrix: product of Givens rotations by ``angles`` over the pairs i < j."""
    U = np.eye(d)
    a = iter(angles)
    for i in range(d):
        for j in range(i + 1, d):
            t = next(a)
            c, s = math.cos(t), math.sin(t)
            G = np.eye(d)
            G[i, i] = G[j, j] = c
            G[i, j], G[j, i] = -s, s
            U = U @ G
    return U


def models(dim=(1, 4), kind="any", momentum=(0.0, 0.5, 0.9), lr_fraction=(0.05, 0.9),
           curvature=(0.02, 2.0), max_mixing=200.0):
    r"""Hypothesis strategy of stable, well-conditioned :class:`~quadsgd.LinearModel` instances.

    Parameters (each range is inclusive)
    ----------
    dim : int or (low, high)
        Dimension d (default 1..4). ``kind="non_normal"`` draws d >= 2 (a 1 x 1 matrix is normal).
    kind : "diagonal", "dense", "non_normal", "any" (default) or a sequence of them
        * diagonal: 1-D omega = the eigenvalues :math:`\kappa_i`;
        * dense: symmetric :math:`\Omega = U\mathrm{diag}(\kappa)U^\top`, U a product of Givens
          rotations with angles in :math:`[-\pi, \pi]`;
        * non_normal: ``LinearModel.from_quadratic(A, C)`` with :math:`A = U\mathrm{diag}(\kappa)U^\top`
          and correlated noise :math:`C = BB^\top + 0.3I`, :math:`B_{ij}\in[-1, 1]`
          (so :math:`\mathrm{cond}(C) \le (d + 0.3)/0.3`); :math:`\Omega = Q^{-1}AQ` has the
          eigenvalues :math:`\kappa` and is non-normal (normal draws are rejected).
    momentum : float or sequence of floats in [0, 1)
        Heavy-ball :math:`\beta`, drawn from the sequence (repeat a value to weight it); default (0, 0.5, 0.9).
    lr_fraction : (low, high) in (0, 1)
        lr = fraction x the stability bound :math:`2(1+\beta)/\kappa_{\max}` (default 0.05..0.9).
    curvature : (low, high), low > 0
        Eigenvalues :math:`\kappa_i` log-uniform in this range (default 0.02..2), then raised to the
        floor below.
    max_mixing : float or None
        Upper bound on :func:`mixing_time` in steps (default 200): eigenvalues are raised to the
        floor :math:`\kappa \ge \epsilon_*/\lambda`, :math:`\epsilon_* = (1-r)(1-\beta/r)`,
        :math:`r = 1 - 1/\mathrm{max\_mixing}` (about :math:`\lambda\kappa \ge (1-\beta)/\mathrm{max\_mixing}`).
        None: no bound (theory-only tests).

    Shrinking goes to: diagonal, smallest d, the first momentum, lr_fraction low, all eigenvalues
    = curvature high (isotropic), rotation angles 0, B = 0 (the normal boundary).
    """
    st, assume = _hypothesis()
    dlo, dhi = _range("dim", dim, integer=True, low=1)
    kinds = _kinds("kind", kind, _MODEL_KINDS)
    if dhi < 2 and "non_normal" in kinds:
        if kind == "any":
            kinds = ("diagonal", "dense")
        else:
            raise ValueError(f"kind='non_normal' needs dim >= 2 (a 1 x 1 matrix is normal), got dim={dim!r}")
    if isinstance(momentum, (int, float, np.integer, np.floating)) and not isinstance(momentum, (bool, np.bool_)):
        momentum = (momentum,)
    try:
        if isinstance(momentum, (str, bytes)):
            raise TypeError
        moms = tuple(momentum)
    except TypeError:
        raise ValueError(f"momentum must be a float or a sequence of floats in [0, 1), got {momentum!r}") from None
    if not moms:
        raise ValueError(f"momentum must be a float or a sequence of floats in [0, 1), got {momentum!r}")
    betas = tuple(check_real("momentum", b, 0.0, 1.0, high_open=True) for b in moms)
    flo, fhi = _range("lr_fraction", lr_fraction, low=0.0, low_open=True, high=1.0, high_open=True)
    clo, chi = _range("curvature", curvature, low=0.0, low_open=True)
    if max_mixing is not None:
        _, mm = _range("max_mixing", max_mixing, low=1.0, low_open=True)
        for b in set(betas):
            for f in (flo, fhi):
                tau = 1.0 / (1.0 - float(spectral_radius(f * 2.0 * (1.0 + b), b)))
                if tau > mm:
                    raise ValueError(
                        f"max_mixing={max_mixing!r} is below the mixing time of the largest eigenvalue "
                        f"({tau:.4g} steps at momentum {b}, lr_fraction {f}); raise max_mixing or narrow "
                        f"lr_fraction / momentum")
    else:
        mm = None

    @st.composite
    def _models(draw):
        k = draw(st.sampled_from(kinds))
        d = draw(st.integers(max(dlo, 2) if k == "non_normal" else dlo, dhi))
        beta = draw(st.sampled_from(betas))
        frac = draw(st.floats(flo, fhi))
        pos = np.array([draw(st.floats(0.0, 1.0)) for _ in range(d)])
        kap = chi * (clo / chi) ** pos
        lr = frac * 2.0 * (1.0 + beta) / kap.max()
        if mm is not None:
            kap = np.maximum(kap, _eps_floor(mm, beta) / lr)
        if k == "diagonal":
            return LinearModel(kap, lr, momentum=beta)
        U = _rotation([draw(st.floats(-math.pi, math.pi)) for _ in range(d * (d - 1) // 2)], d)
        A = (U * kap) @ U.T
        A = 0.5 * (A + A.T)
        if k == "dense":
            return LinearModel(A, lr, momentum=beta)
        B = np.array([[draw(st.floats(-1.0, 1.0)) for _ in range(d)] for _ in range(d)])
        C = B @ B.T + 0.3 * np.eye(d)
        m = LinearModel.from_quadratic(A, C, lr, momentum=beta)
        assume(not m.normal)
        return m

    return _models()


def _weights_kernel(ws):
    w = np.array(ws, dtype=np.float64)
    if w.sum() < 0.1:
        w[-1] += 0.1
    return Kernel(w / w.sum())


def kernels(kind="any", max_support=50, ema_decay=(0.03, 1.0), max_weights=12):
    r"""Hypothesis strategy of averaging kernels with bounded support / memory.

    kind : "last", "two_point", "n_point", "swa", "ema", "kernel", "any" (default) or a sequence.
    Ranges (``S = max_support``, default 50):

    * ``Last()``;
    * ``TwoPoint(delta)``, delta in 1..S-1;
    * ``NPoint(n, delta)``, n in 2..min(6, S), delta in 1..max(1, (S-1)//(n-1));
    * ``SWA(window)``, window in 1..S;
    * ``EMA(decay)``, decay in ``ema_decay`` (default 0.03..1: memory 1/decay <= 34 steps);
    * ``Kernel(w / w.sum())`` with 1..min(max_weights, S) weights in [0, 1] (zeros included; if they
      sum to < 0.1 the last gets +0.1).

    Shrinks towards ``Last()``.
    """
    st, _ = _hypothesis()
    kinds = _kinds("kind", kind, _KERNEL_KINDS)
    _, S = _range("max_support", max_support, integer=True, low=1)
    elo, ehi = _range("ema_decay", ema_decay, low=0.0, low_open=True, high=1.0)
    _, mw = _range("max_weights", max_weights, integer=True, low=1)
    parts = []
    for k in _KERNEL_KINDS:
        if k not in kinds:
            continue
        if k == "last":
            parts.append(st.just(Last()))
        elif k == "two_point" and S >= 2:
            parts.append(st.builds(TwoPoint, st.integers(1, S - 1)))
        elif k == "n_point" and S >= 2:
            parts.append(st.integers(2, min(6, S)).flatmap(
                lambda n: st.builds(NPoint, st.just(n), st.integers(1, max(1, (S - 1) // (n - 1))))))
        elif k == "swa":
            parts.append(st.builds(SWA, st.integers(1, S)))
        elif k == "ema":
            parts.append(st.builds(EMA, st.floats(elo, ehi)))
        elif k == "kernel":
            parts.append(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=min(mw, S)).map(_weights_kernel))
    if not parts:
        raise ValueError(f"kind={kind!r} with max_support={max_support!r} leaves no kernel to draw")
    return st.one_of(*parts)
