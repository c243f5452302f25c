r"""Property-based checking of anyone's formula against the simulator.

Write a hypothesis test over whole parameter ranges and one assertion::

    from hypothesis import given, settings
    import quadsgd as qs
    from quadsgd import testing as qst

    @settings(deadline=None, max_examples=30)
    @given(qst.models(), qst.kernels())
    def test_my_formula(m, k):
        qst.assert_stationary_matches(my_covariance(m, k), m, k)

A wrong formula fails with an AssertionError that states the test, the statistic, the p-value, the
model (with a copy-paste reproducer), the kernel and the largest discrepancy; hypothesis then shrinks
the case to a small counterexample (the simulation seed is derived from the parameters, so every
re-run of a case gives the same verdict). A correct formula fails with probability ``alpha``.

Strategies
----------
:func:`models` and :func:`kernels` draw only stable, well-conditioned cases whose mixing time is
bounded (documented ranges), so that one assertion takes well under a second.

Stationary checks (:func:`assert_stationary_matches`, :func:`check_stationary`)
-------------------------------------------------------------------------------
``chains`` independent chains start at :math:`u_0 = 0` and run ``burn_in`` mixing times plus the
kernel's support (exact Gaussian transitions, ``method="exact"``: the cost does not depend on the
length of the burn-in). The final averaged iterates :math:`x_1..x_N` are then i.i.d.
:math:`\mathcal N(0, \Sigma)`, with :math:`\Sigma` the stationary covariance up to a relative
:math:`O(e^{-2\,\mathrm{burn\_in}})`: the mean is exactly 0 and the effective sample size is
exactly N. ``predicted`` may be

* a (d, d) covariance -- **exact Wishart test**: whiten by the prediction,
  :math:`y = L_0^{-1}x` (:math:`\Sigma_0 = L_0L_0^\top`), form :math:`W = \sum_c y_cy_c^\top`
  (:math:`\sim\mathcal W_d(N, I)` under :math:`H_0`) and its Cholesky factor :math:`W = TT^\top`.
  By Bartlett's decomposition the :math:`d(d+1)/2` components :math:`T_{kk}^2\sim\chi^2_{N-k}`
  (k = 0..d-1) and :math:`T_{ij}\sim\mathcal N(0,1)` (i > j) are independent; each gets its
  two-sided p-value and the verdict is the Sidak-combined minimum,
  :math:`p = 1-(1-p_{\min})^{d(d+1)/2}` (``combine="sidak"``, sensitive to a single wrong entry),
  or Fisher's :math:`-2\sum\log p_k\sim\chi^2_{d(d+1)}` (``combine="fisher"``, sensitive to many
  small errors). Both p-values are exactly uniform under :math:`H_0`: the false-alarm rate is
  ``alpha`` (not just at most ``alpha``). :math:`T_{kk}^2` is the residual sum of squares of
  coordinate k regressed on coordinates < k, in the metric of the prediction; a relative error
  :math:`\delta` of one variance is detected once :math:`|\delta| \gtrsim (z_{\alpha'} + 1)\sqrt{2/N}`
  (:math:`z_{\alpha'}\approx 5.3` for ``alpha = 1e-6``, d <= 4: about 6.3% at N = 20000, 3.7% at N = 60000).
  A prediction that is not symmetric (relative asymmetry > ``1e-8``) or not positive definite
  fails outright (p = 0): no covariance has that shape.
* a (d,) vector of variances -- per coordinate :math:`\sum_c x_{c,i}^2/\sigma_i^2\sim\chi^2_N`,
  two-sided, Sidak over d. Exact when the coordinates are independent (diagonal models),
  conservative (rate <= ``alpha``) otherwise.
* a scalar -- the mean over chains of ``quantity(x)`` (default the loss
  :math:`\tfrac12 x^\top Hx`), two-sided z-test with the sample standard deviation (CLT; the
  :math:`O(N^{-1/2})` skewness terms cancel in a two-sided test, the rate error is :math:`O(1/N)`).

Curve checks (:func:`assert_curve_matches`, :func:`check_curve`)
----------------------------------------------------------------
``chains`` chains from ``u0`` (default ones) over ``steps`` steps; at each record :math:`\tau_r`
the mean over chains of the loss has standard error :math:`s_r/\sqrt N` from the per-chain losses,
:math:`z_r = (\bar\ell_r - \mathrm{predicted}_r)/(s_r/\sqrt N)`. ``combine="bonferroni"``
(default): statistic :math:`\max_r|z_r|`, p-value :math:`\min(1, R\min_r p_r)` -- valid for any
correlation between records, conservative (rate <= ``alpha``; close to ``alpha`` when the records
are far apart in mixing times, well below it for densely recorded slow curves).
``combine="hotelling"``: :math:`T^2 = N\bar e^\top S^{-1}\bar e` with :math:`e_c` the per-chain
(loss - prediction) vector and S its sample covariance across records,
:math:`\frac{N-R}{R(N-1)}T^2\sim F(R, N-R)` (exact for Gaussian e, asymptotic in N otherwise;
needs chains >= 10 x records): rate ~ ``alpha``. Records whose loss involves no noise (standard
error 0, e.g. a pure lag at t = 1) are compared with relative tolerance ``1e-8``.

Bad input -- a ``predicted`` of the wrong shape or not finite, ``alpha`` outside (0, 1), a
model whose burn-in (or a curve whose length) exceeds ``max_steps`` -- raises ValueError saying
which.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from .kernels import EMA, SWA, AveragingKernel, Kernel, Last, NPoint, TwoPoint
from .model import LinearModel

__all__ = [
    "models", "kernels", "assert_stationary_matches", "assert_curve_matches",
    "check_stationary", "check_curve", "CheckResult", "mixing_time", "burn_in_steps",
]

_MODEL_KINDS = ("diagonal", "dense", "non_normal")
_KERNEL_KINDS = ("last", "two_point", "n_point", "swa", "ema", "kernel")
#: default step budget of a stationary check (burn-in) per simulation method
_MAX_STEPS = {"exact": 10**6, "step": 50_000}
_SYM_RTOL = 1e-8
_DET_RTOL = 1e-8


# =============================================================================================
# Mixing time
# =============================================================================================
def _radius(eps, beta: float):
    """Spectral radius of x^2 - (1 + beta - eps) x + beta (heavy ball per eigenvalue, eps = lr*kappa)."""
    eps = np.asarray(eps, dtype=np.complex128)
    p = 1.0 + beta - eps
    disc = np.sqrt(p * p - 4.0 * beta)
    return np.maximum(np.abs((p + disc) / 2.0), np.abs((p - disc) / 2.0))


def mixing_time(model: LinearModel) -> float:
    r"""Mixing time :math:`1/(1-\rho)` in steps, :math:`\rho` the spectral radius of the (u, b) transition.

    Per eigenvalue :math:`\kappa` of :math:`\Omega`, :math:`\rho` is the largest root modulus of
    :math:`x^2-(1+\beta-\lambda\kappa)x+\beta` (SGD: :math:`|1-\lambda\kappa|`; small
    :math:`\lambda\kappa`: :math:`\tau\approx(1-\beta)/(\lambda\kappa)`). Correlations decay as
    :math:`\rho^t \le e^{-t/\tau}` (times the eigenvector condition number for non-normal
    :math:`\Omega`).
    """
    if not isinstance(model, LinearModel):
        raise ValueError(f"model must be a qs.LinearModel, got {type(model).__name__}")
    rho = float(np.max(_radius(model.lr * np.asarray(model.eigenvalues), model.momentum)))
    return math.inf if rho >= 1.0 else 1.0 / (1.0 - rho)


def _kernel_time(kernel: AveragingKernel) -> tuple[float, int]:
    """(memory time scale, support) of a kernel: EMA (1/a, 1); finite kernels (1, support)."""
    if isinstance(kernel, EMA):
        return (1.0 / kernel.decay, 1)
    return (1.0, int(kernel.support))


def burn_in_steps(model: LinearModel, kernel=Last(), burn_in: float = 40.0) -> int:
    r"""Steps from :math:`u_0 = 0` after which the averaged iterate is stationary to :math:`O(e^{-2\,\mathrm{burn\_in}})`.

    ``ceil(burn_in * max(mixing_time(model), 1/a of every EMA)) + max support of the finite kernels``.
    kernel: one averaging kernel or a sequence of them.
    """
    ks = _kernel_list(kernel)
    tau = mixing_time(model)
    scale = max([tau] + [_kernel_time(k)[0] for k in ks])
    support = max(_kernel_time(k)[1] for k in ks)
    if not math.isfinite(scale):
        return math.inf  # type: ignore[return-value]
    return int(math.ceil(float(burn_in) * scale)) + support


# =============================================================================================
# Strategies
# =============================================================================================
def _hypothesis():
    try:
        from hypothesis import assume
        from hypothesis import strategies as st
    except ImportError:  # pragma: no cover
        raise ImportError("quadsgd.testing strategies need hypothesis: pip install hypothesis") from None
    return st, assume


def _range(name, value, *, integer=False, low=None, low_open=False, high=None, high_open=False):
    """A number or a (lo, hi) pair -> (lo, hi), checked against the allowed interval."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        lo = hi = value
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    out = []
    for v in (lo, hi):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must hold numbers, got {value!r}")
        if integer and float(v) != int(v):
            raise ValueError(f"{name} must hold integers, got {value!r}")
        v = int(v) if integer else float(v)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if low is not None and (v < low or (low_open and v == low)):
            raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
        if high is not None and (v > high or (high_open and v == high)):
            raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
        out.append(v)
    if out[0] > out[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value!r}")
    return out[0], out[1]


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
    if isinstance(momentum, (int, float, np.integer, np.floating)) and not isinstance(momentum, bool):
        betas = (float(momentum),)
    else:
        try:
            betas = tuple(float(b) for b in momentum)
        except (TypeError, ValueError):
            raise ValueError(f"momentum must be a float or a sequence of floats in [0, 1), got {momentum!r}") from None
    if not betas or any(not (0.0 <= b < 1.0) for b in betas):
        raise ValueError(f"momentum must be a float or a sequence of floats in [0, 1), got {momentum!r}")
    flo, fhi = _range("lr_fraction", lr_fraction, low=0.0, low_open=True, high=1.0, high_open=True)
    clo, chi = _range("curvature", curvature, low=0.0, low_open=True)
    if max_mixing is not None:
        _, mm = _range("max_mixing", max_mixing, low=1.0, low_open=True)
        for b in set(betas):
            for f in (flo, fhi):
                tau = 1.0 / (1.0 - float(_radius(f * 2.0 * (1.0 + b), b)))
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


# =============================================================================================
# Results and formatting
# =============================================================================================
@dataclass(frozen=True, eq=False)
class CheckResult:
    """Outcome of :func:`check_stationary` / :func:`check_curve`.

    passed: pvalue > alpha. pvalue: the combined p-value (exactly uniform under H0 for the
    Wishart tests). test: what was tested and how. statistic: the combined statistic's value
    (Sidak: the smallest component p-value; Fisher: -2 sum log p; scalar: z; curve: max |z| or T^2).
    worst: the largest discrepancy (dict: where, predicted, simulated, z, relative_error).
    kernel_pvalues: one p-value per kernel (before the Bonferroni over kernels).
    message: the full report (the AssertionError text). seed, chains, steps, method: the simulation.
    """

    passed: bool
    pvalue: float
    alpha: float
    test: str
    statistic: float
    worst: dict
    message: str
    seed: int
    chains: int
    steps: int
    method: str
    kernel_pvalues: np.ndarray = field(repr=False)


def _arr(a, precision=6) -> str:
    """One-line text of an array: nested lists of numbers with ``precision`` significant digits."""
    a = np.asarray(a)
    if a.ndim == 0:
        return f"{float(a):.{precision}g}"
    return "[" + ", ".join(_arr(x, precision) for x in a) + "]"


def _model_text(m: LinearModel) -> tuple[str, str]:
    """(summary, copy-paste reproducer) of a model."""
    if m.diagonal:
        kind = "diagonal"
    elif m.symmetric:
        kind = "dense symmetric"
    else:
        kind = "dense normal" if m.normal else "dense non-normal"
    extra = ""
    rep_extra = ""
    if m.hessian is not None and not (m.hessian is m.omega or np.array_equal(m.hessian, m.omega)):
        extra = f", hessian={_arr(m.hessian)}"
        rep_extra = f", hessian=np.array({np.asarray(m.hessian).tolist()!r})"
    summary = (f"LinearModel(omega={_arr(m.omega)}, lr={m.lr:.6g}, momentum={m.momentum:g}{extra})  "
               f"[{kind}, d={m.dim}, eigenvalues {_arr(np.asarray(m.eigenvalues), 4)}, "
               f"lr/lr_bound={m.lr / m.lr_bound:.4g}, mixing time {mixing_time(m):.4g} steps]")
    rep = (f"m = qs.LinearModel(np.array({np.asarray(m.omega).tolist()!r}), lr={m.lr!r}, "
           f"momentum={m.momentum!r}{rep_extra})")
    return summary, rep


def _kernel_repr(k: AveragingKernel) -> str:
    if isinstance(k, Kernel):
        return f"Kernel(weights={np.asarray(k.weights_).tolist()!r})"
    return repr(k)


def _derive_seed(*parts) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode())
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return int.from_bytes(h.digest(), "little") >> 1


def _model_key(m: LinearModel):
    H = m.hessian
    return (np.asarray(m.omega, np.float64), float(m.lr), float(m.momentum),
            None if H is None else np.asarray(H, np.float64))


# =============================================================================================
# Argument checks
# =============================================================================================
def _kernel_list(kernel) -> list:
    if isinstance(kernel, AveragingKernel):
        return [kernel]
    try:
        ks = list(kernel)
    except TypeError:
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...) or a "
                         f"sequence of them, got {kernel!r}") from None
    if not ks or not all(isinstance(k, AveragingKernel) for k in ks):
        raise ValueError(f"kernel must be an averaging kernel (qs.Last(), qs.EMA(...), ...) or a "
                         f"non-empty sequence of them, got {kernel!r}")
    return ks


def _check_alpha(alpha) -> float:
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise ValueError(f"alpha must be a number in (0, 1) (the false-alarm rate), got {alpha!r}")
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise ValueError(f"alpha must be in (0, 1) (the false-alarm rate), got {alpha!r}")
    return a


def _check_int(name, value, low):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_common(model, kernel, alpha, chains, method):
    if not isinstance(model, LinearModel):
        raise ValueError(f"model must be a qs.LinearModel, got {type(model).__name__}")
    ks = _kernel_list(kernel)
    alpha = _check_alpha(alpha)
    chains = _check_int("chains", chains, 2)
    if method not in ("exact", "step"):
        raise ValueError(f"method must be 'exact' or 'step', got {method!r}")
    return ks, alpha, chains


def _split_predictions(predicted, kernel, ks):
    """One prediction per kernel: ``predicted`` itself for a single kernel; for a sequence of kernels a
    sequence of the same length."""
    if isinstance(kernel, AveragingKernel):
        return [predicted]
    if not isinstance(predicted, (list, tuple)) or len(predicted) != len(ks):
        n = f" of length {len(predicted)}" if isinstance(predicted, (list, tuple)) else ""
        raise ValueError(f"with a sequence of {len(ks)} kernels, predicted must be a list of {len(ks)} "
                         f"predictions (one per kernel), got {type(predicted).__name__}{n}")
    return list(predicted)


def _as_prediction(p, d, idx_text):
    try:
        a = np.array(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"predicted{idx_text} must be a real number or array, got {type(p).__name__}") from None
    shapes = f"a scalar (the mean of `quantity`, default the loss), ({d},) variances or ({d}, {d}) covariance"
    if a.ndim == 0:
        kind = "scalar"
    elif a.shape == (d,):
        kind = "variances"
    elif a.shape == (d, d):
        kind = "covariance"
    else:
        raise ValueError(f"predicted{idx_text} has shape {a.shape}; expected {shapes} for this "
                         f"{d}-dimensional model")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"predicted{idx_text} contains NaN or inf")
    return kind, a


# =============================================================================================
# Statistics
# =============================================================================================
def _two_sided_chi2(q, dof):
    from scipy import stats

    return np.minimum(1.0, 2.0 * np.minimum(stats.chi2.cdf(q, dof), stats.chi2.sf(q, dof)))


def _two_sided_normal(z):
    from scipy import stats

    return np.minimum(1.0, 2.0 * stats.norm.sf(np.abs(z)))


def _sidak(pmin: float, n: int) -> float:
    if pmin >= 1.0:
        return 1.0
    return float(-math.expm1(n * math.log1p(-pmin)))


def _fisher(p) -> tuple[float, float]:
    from scipy import stats

    p = np.maximum(np.asarray(p, dtype=np.float64), 1e-300)
    x = float(-2.0 * np.sum(np.log(p)))
    return x, float(stats.chi2.sf(x, 2 * p.size))


def _entry_discrepancy(S, P, N):
    """Largest |z| entry of the sample second moments S against P (zero mean known)."""
    dg = np.diag(P)
    se = np.sqrt((np.outer(dg, dg) + P * P) / N)
    Z = (S - P) / se
    iu = np.triu_indices(P.shape[0])
    k = int(np.argmax(np.abs(Z[iu])))
    i, j = int(iu[0][k]), int(iu[1][k])
    scale = math.sqrt(dg[i] * dg[j])
    rel = (S[i, j] - P[i, j]) / abs(P[i, j]) if abs(P[i, j]) > 1e-12 * scale else math.inf
    return dict(where=f"Cov[{j}, {i}]" if i != j else f"Var[{i}]", predicted=float(P[i, j]),
                simulated=float(S[i, j]), z=float(Z[i, j]), relative_error=float(rel),
                relative_to_scale=float((S[i, j] - P[i, j]) / scale), entry=(i, j))


def _covariance_test(X, P, combine):
    """Exact Wishart test of Cov = P for i.i.d. zero-mean Gaussian rows of X: (p, statistic, text, worst)."""
    import scipy.linalg as sla

    N, d = X.shape
    S = X.T @ X / N
    worst = _entry_discrepancy(S, P, N)
    L0 = np.linalg.cholesky(P)
    Y = sla.solve_triangular(L0, X.T, lower=True)
    T = np.linalg.cholesky(Y @ Y.T)
    dof = N - np.arange(d)
    q = np.diag(T) ** 2
    p_diag = _two_sided_chi2(q, dof)
    il, jl = np.tril_indices(d, -1)
    p_off = _two_sided_normal(T[il, jl])
    p_all = np.concatenate([p_diag, p_off])
    K = p_all.size
    kmin = int(np.argmin(p_all))
    if kmin < d:
        comp = (f"T[{kmin},{kmin}]^2 = {q[kmin]:.6g} (chi2({dof[kmin]}): {dof[kmin]} +- "
                f"{math.sqrt(2 * dof[kmin]):.4g}; residual variance of coordinate {kmin} given coordinates "
                f"< {kmin}, whitened by the prediction, ratio {q[kmin] / dof[kmin]:.5g})")
    else:
        i, j = int(il[kmin - d]), int(jl[kmin - d])
        comp = (f"T[{i},{j}] = {T[i, j]:.4g} (N(0,1); coupling of coordinate {i} to coordinate {j} "
                f"in the prediction's whitened coordinates)")
    name = (f"exact Wishart test of Cov = predicted (Bartlett decomposition of the whitened scatter "
            f"matrix: {K} independent components")
    if combine == "sidak":
        p = _sidak(float(p_all[kmin]), K)
        text = f"{name}, Sidak-combined min p); smallest component p = {p_all[kmin]:.3g} at {comp}"
        return p, float(p_all[kmin]), text, worst
    x, p = _fisher(p_all)
    text = (f"{name}, Fisher-combined: -2 sum log p = {x:.5g} ~ chi2({2 * K})); smallest component "
            f"p = {p_all[kmin]:.3g} at {comp}")
    return p, x, text, worst


def _variance_test(X, v, combine):
    N, d = X.shape
    q = np.sum(X * X, axis=0) / v
    p_all = _two_sided_chi2(q, N)
    s = q / N * v
    z = (s - v) / (v * math.sqrt(2.0 / N))
    i = int(np.argmax(np.abs(z)))
    worst = dict(where=f"Var[{i}]", predicted=float(v[i]), simulated=float(s[i]), z=float(z[i]),
                 relative_error=float((s[i] - v[i]) / v[i]), entry=(i, i))
    kmin = int(np.argmin(p_all))
    name = (f"chi-square test of the variances (d = {d}; sum x_i^2 / predicted_i ~ chi2({N}) per "
            f"coordinate, two-sided; exact for independent coordinates, conservative otherwise")
    if combine == "sidak":
        p = _sidak(float(p_all[kmin]), d)
        return p, float(p_all[kmin]), f"{name}; Sidak-combined min p = {p_all[kmin]:.3g} at coordinate {kmin})", worst
    x, p = _fisher(p_all)
    return p, x, f"{name}; Fisher: -2 sum log p = {x:.5g} ~ chi2({2 * d}))", worst


def _mean_test(vals, pred, what):
    N = vals.size
    mean = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1))
    se = sd / math.sqrt(N)
    rel = (mean - pred) / abs(pred) if pred != 0 else math.inf
    if se <= 1e-14 * max(abs(mean), abs(pred), 1e-300):
        ok = abs(mean - pred) <= _DET_RTOL * max(abs(pred), abs(mean)) + 1e-300
        worst = dict(where=f"mean {what}", predicted=float(pred), simulated=mean, z=0.0 if ok else math.inf,
                     relative_error=float(rel), se=se)
        return (1.0 if ok else 0.0), 0.0, f"deterministic {what} (standard error 0): relative tolerance {_DET_RTOL:g}", worst
    z = (mean - pred) / se
    p = float(_two_sided_normal(z))
    worst = dict(where=f"mean {what}", predicted=float(pred), simulated=mean, z=float(z),
                 relative_error=float(rel), se=se)
    text = (f"two-sided z-test of the mean of {what} over {N} i.i.d. chains (z = (mean - predicted) / "
            f"(sd / sqrt(N)), CLT); z = {z:.4g}")
    return p, float(z), text, worst


def _fmt_worst(w) -> str:
    rel = w["relative_error"]
    if rel is None:
        reltxt = "n/a"
    elif not math.isfinite(rel):
        reltxt = "inf (predicted 0)"
    else:
        reltxt = f"{rel:+.4%}"
    out = (f"{w['where']}: predicted {w['predicted']:.6g}, simulated {w['simulated']:.6g}"
           + (f" +- {w['se']:.3g}" if "se" in w else "")
           + (f" (z = {w['z']:.3g}, " if w["z"] is not None else " (")
           + f"relative error {reltxt}")
    if "relative_to_scale" in w and w["entry"][0] != w["entry"][1]:
        i, j = w["entry"]
        out += f", {w['relative_to_scale']:+.4g} x sqrt(Var[{i}] Var[{j}])"
    return out + ")"


# =============================================================================================
# Stationary check
# =============================================================================================
def check_stationary(predicted, model, kernel=Last(), *, chains=20000, alpha=1e-6, seed=0,
                     method="exact", quantity=None, burn_in=40.0, max_steps=None,
                     combine="sidak") -> CheckResult:
    r"""Simulate and test a predicted stationary covariance, variance vector or scalar; never raises on a mismatch.

    Parameters
    ----------
    predicted : float, (d,) or (d, d) array -- or a list of them, one per kernel
        (d, d): the stationary covariance of the averaged iterate (exact Wishart test);
        (d,): its diagonal (per-coordinate chi-square); scalar: the stationary mean of
        ``quantity`` (z-test). See the module docstring for the statistics.
    model : LinearModel
    kernel : averaging kernel or a sequence of them (one simulation; p-values Bonferroni-combined
        over kernels, rate <= alpha)
    chains : int >= 2 (default 20000): i.i.d. samples (the effective sample size)
    alpha : float in (0, 1): the false-alarm rate (default 1e-6)
    seed : int: combined with the model, kernel, chains and method into the simulation seed
        (deterministic: the same case always gets the same verdict)
    method : "exact" (default; cost independent of the burn-in) or "step"
    quantity : callable (N, d) -> (N,), optional: per-chain value whose mean a scalar
        ``predicted`` gives (default: the loss :math:`\tfrac12 x^\top Hx`, H = ``model.loss_matrix()``)
    burn_in : float > 0: burn-in in mixing times (default 40; see :func:`burn_in_steps`)
    max_steps : int, optional: the step budget (default 10**6 for "exact", 50000 for "step");
        a longer burn-in raises ValueError
    combine : "sidak" (default) or "fisher": how the independent Wishart components are combined

    Returns a :class:`CheckResult`.
    """
    ks, alpha, chains = _check_common(model, kernel, alpha, chains, method)
    if combine not in ("sidak", "fisher"):
        raise ValueError(f"combine must be 'sidak' or 'fisher', got {combine!r}")
    if isinstance(burn_in, (bool, np.bool_)) or not isinstance(burn_in, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(burn_in) and burn_in > 0):
        raise ValueError(f"burn_in must be a positive number of mixing times, got {burn_in!r}")
    if quantity is not None and not callable(quantity):
        raise ValueError(f"quantity must be a callable (N, d) -> (N,) or None, got {quantity!r}")
    seed = _check_int("seed", seed, 0)
    d = model.dim
    preds = [_as_prediction(p, d, "" if isinstance(kernel, AveragingKernel) else f"[{i}]")
             for i, p in enumerate(_split_predictions(predicted, kernel, ks))]
    if any(kind == "covariance" for kind, _ in preds) and chains <= d:
        raise ValueError(f"chains must be > d = {d} for a covariance test, got {chains}")
    budget = _MAX_STEPS[method] if max_steps is None else _check_int("max_steps", max_steps, 1)
    tau = mixing_time(model)
    steps = burn_in_steps(model, ks, burn_in)
    if not (steps <= budget):
        kt = max((_kernel_time(k)[0] for k in ks))
        raise ValueError(
            f"the model mixes too slowly for the step budget: mixing time {tau:.4g} steps"
            f"{f' (EMA memory {kt:.4g} steps)' if kt > tau else ''}, so the burn-in of {burn_in:g} "
            f"mixing times + kernel support needs {steps} steps > max_steps = {budget} (method "
            f"{method!r}); raise max_steps (method='exact' costs the same for any burn-in) or use a "
            f"faster-mixing model (larger lr * curvature; qs.testing.models(max_mixing=...))")
    from .simulate import simulate

    sim_seed = _derive_seed("stationary", _model_key(model), tuple(_kernel_repr(k) for k in ks),
                            chains, method, steps, seed)
    res = simulate(model, steps, chains, tuple(ks), u0=np.zeros(d), record_every=steps, seed=sim_seed,
                   method=method)
    H = None
    per = []
    for i, (k, (kind, P)) in enumerate(zip(ks, preds)):
        X = np.asarray(res.final[i], dtype=np.float64)
        if kind == "scalar":
            if quantity is None:
                if H is None:
                    H = np.asarray(model.loss_matrix(), dtype=np.float64)
                vals = 0.5 * (np.sum(X * X * H, axis=1) if H.ndim == 1 else np.einsum("ci,ij,cj->c", X, H, X))
                what = "the loss 0.5 x^T H x"
            else:
                vals = np.asarray(quantity(X), dtype=np.float64)
                if vals.shape != (chains,):
                    raise ValueError(f"quantity must return shape (chains,) = ({chains},), got {vals.shape}")
                what = f"quantity {getattr(quantity, '__name__', repr(quantity))}"
            per.append((k, kind, P) + _mean_test(vals, float(P), what))
            continue
        if kind == "variances":
            if np.any(P <= 0):
                j = int(np.argmin(P))
                per.append((k, kind, P, 0.0, 0.0, f"predicted variance {j} is {P[j]:.6g} <= 0 (no variance "
                            f"can be): failed without simulation statistics",
                            dict(where=f"Var[{j}]", predicted=float(P[j]), simulated=float(np.mean(X[:, j] ** 2)),
                                 z=-math.inf, relative_error=None)))
                continue
            per.append((k, kind, P) + _variance_test(X, P, combine))
            continue
        scale = float(np.max(np.abs(P))) or 1.0
        asym = np.abs(P - P.T)
        if asym.max() > _SYM_RTOL * scale:
            a, b = np.unravel_index(int(np.argmax(asym)), asym.shape)
            S = X.T @ X / chains
            per.append((k, kind, P, 0.0, float(asym.max() / scale),
                        f"predicted covariance is not symmetric (no covariance is): |P[{a},{b}] - P[{b},{a}]| = "
                        f"{asym[a, b]:.4g} = {asym[a, b] / scale:.3g} x max|P| > {_SYM_RTOL:g}",
                        dict(where=f"P[{a},{b}] = {P[a, b]:.6g} but P[{b},{a}] = {P[b, a]:.6g}; Cov[{a}, {b}]",
                             predicted=float(P[a, b]), simulated=float(S[a, b]), z=None, relative_error=None)))
            continue
        P = 0.5 * (P + P.T)
        w = np.linalg.eigvalsh(P)
        if w[0] <= 0:
            per.append((k, kind, P, 0.0, float(w[0]),
                        f"predicted covariance is not positive definite (smallest eigenvalue {w[0]:.4g}; a "
                        f"stationary covariance of this model is)",
                        dict(where="smallest eigenvalue", predicted=float(w[0]),
                             simulated=float(np.linalg.eigvalsh(X.T @ X / chains)[0]), z=-math.inf,
                             relative_error=None)))
            continue
        per.append((k, kind, P) + _covariance_test(X, P, combine))
    kp = np.array([x[3] for x in per])
    j = int(np.argmin(kp))
    p = float(min(1.0, len(ks) * kp[j])) if len(ks) > 1 else float(kp[0])
    passed = p > alpha
    k, kind, P, _, stat, text, worst = per[j]
    what = {"scalar": "stationary mean", "variances": "stationary variances",
            "covariance": "stationary covariance"}[kind]
    summary, rep = _model_text(model)
    head = (f"quadsgd.testing: the simulation {'agrees with' if passed else 'contradicts'} the predicted "
            f"{what} (p = {p:.3g} {'>' if passed else '<='} alpha = {alpha:g})")
    lines = [head,
             f"  test: {text}" + (f"; Bonferroni over {len(ks)} kernels (kernel p = {kp[j]:.3g})" if len(ks) > 1 else ""),
             f"  largest discrepancy: {_fmt_worst(worst)}",
             f"  model: {summary}",
             f"  kernel: {_kernel_repr(k)}" + (f" (of {len(ks)}: {', '.join(_kernel_repr(x) for x in ks)})" if len(ks) > 1 else ""),
             f"  simulation: {chains} independent chains from u0 = 0, method {method!r}, {steps} steps "
             f"(burn-in {burn_in:g} mixing times + kernel support), seed {sim_seed} (from seed={seed})"]
    if kind != "scalar":
        X = np.asarray(res.final[j], dtype=np.float64)
        sim = (X.T @ X / chains) if kind == "covariance" else np.mean(X * X, axis=0)
        lines.append(f"  predicted: {_arr(P)}")
        lines.append(f"  simulated: {_arr(sim)} (second moments, mean known 0)")
    lines.append(f"  reproduce: {rep}; k = qs.{_kernel_repr(k)}")
    return CheckResult(passed=passed, pvalue=p, alpha=alpha, test=text, statistic=float(stat), worst=worst,
                       message="\n".join(lines), seed=sim_seed, chains=chains, steps=steps, method=method,
                       kernel_pvalues=kp)


def assert_stationary_matches(predicted, model, kernel=Last(), *, chains=20000, alpha=1e-6, seed=0,
                              method="exact", quantity=None, burn_in=40.0, max_steps=None,
                              combine="sidak") -> CheckResult:
    r"""Assert that ``predicted`` is the stationary covariance / variances / mean of the averaged iterate.

    Same arguments as :func:`check_stationary` (statistics in the module docstring: the (d, d)
    test is an exact Wishart test whose false-alarm rate is exactly ``alpha``). Raises
    AssertionError stating the test, the statistic, the p-value, the model (omega, lr, momentum,
    and a reproducer line), the kernel and the largest discrepancy (entry, predicted, simulated,
    z, relative error) when p <= alpha; returns the :class:`CheckResult` otherwise. Raises
    ValueError for bad input (shape of ``predicted``, ``alpha`` outside (0, 1), burn-in beyond
    ``max_steps``, ...).
    """
    r = check_stationary(predicted, model, kernel, chains=chains, alpha=alpha, seed=seed, method=method,
                         quantity=quantity, burn_in=burn_in, max_steps=max_steps, combine=combine)
    if not r.passed:
        raise AssertionError(r.message)
    return r


# =============================================================================================
# Curve check
# =============================================================================================
def check_curve(predicted, model, kernel, steps, *, chains=10000, alpha=1e-6, lr=None, u0=None,
                record_every=1, seed=0, method="step", combine="bonferroni",
                max_steps=100_000) -> CheckResult:
    r"""Simulate and test a predicted expected-loss curve; never raises on a mismatch.

    Parameters
    ----------
    predicted : array (steps + 1,) -- the curve at t = 0..steps, like :func:`quadsgd.expected_loss`
        -- or (R,) at the record times ``quadsgd.simulate.record_times(steps, record_every)``;
        a list of them for a sequence of kernels (Bonferroni over kernels)
    model, kernel : the model and an averaging kernel (or a sequence of them)
    steps : int >= 1, <= max_steps
    chains : int >= 2 (default 10000)
    alpha : float in (0, 1)
    lr, u0 : as in :func:`quadsgd.simulate` (lr schedule of shape (steps,); u0 default ones)
    record_every : spacing of the tested records
    seed : combined with all parameters into the simulation seed (deterministic)
    method : "step" (default) or "exact" (piecewise-constant lr)
    combine : "bonferroni" (max |z|, rate <= alpha) or "hotelling" (T^2 with the sample covariance
        across records, rate ~ alpha; chains >= 10 x records)

    Returns a :class:`CheckResult`.
    """
    ks, alpha, chains = _check_common(model, kernel, alpha, chains, method)
    if combine not in ("bonferroni", "hotelling"):
        raise ValueError(f"combine must be 'bonferroni' or 'hotelling', got {combine!r}")
    budget = _check_int("max_steps", max_steps, 1)
    steps = _check_int("steps", steps, 1)
    if steps > budget:
        raise ValueError(f"steps = {steps} exceeds the step budget max_steps = {budget}")
    record_every = _check_int("record_every", record_every, 1)
    if record_every > steps:
        raise ValueError(f"record_every must be in [1, steps = {steps}], got {record_every}")
    seed = _check_int("seed", seed, 0)
    from .simulate import record_times, simulate

    times = record_times(steps, record_every)
    R = times.size
    raw = _split_predictions(predicted, kernel, ks)
    preds = []
    for i, p in enumerate(raw):
        idx = "" if isinstance(kernel, AveragingKernel) else f"[{i}]"
        try:
            a = np.array(p, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"predicted{idx} must be a real array, got {type(p).__name__}") from None
        if a.shape == (steps + 1,):
            a = a[times]
        elif a.shape != (R,):
            raise ValueError(f"predicted{idx} has shape {a.shape}; expected ({steps + 1},) (t = 0..steps, like "
                             f"qs.expected_loss) or ({R},) (the record times every {record_every} steps)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"predicted{idx} contains NaN or inf")
        preds.append(a)
    if combine == "hotelling" and chains < 10 * R:
        raise ValueError(f"combine='hotelling' needs chains >= 10 x records = {10 * R}, got chains = {chains}; "
                         f"use more chains, a larger record_every or combine='bonferroni'")
    u0a = np.ones(model.dim) if u0 is None else np.asarray(u0, dtype=np.float64)
    lra = None if lr is None else np.asarray(lr, dtype=np.float64)
    sim_seed = _derive_seed("curve", _model_key(model), tuple(_kernel_repr(k) for k in ks), chains, method,
                            steps, record_every, u0a, lra, seed)
    res = simulate(model, steps, chains, tuple(ks), lr=lr, u0=u0, record_every=record_every, seed=sim_seed,
                   method=method, per_chain_loss=combine == "hotelling")
    per = []
    for i, (k, pred) in enumerate(zip(ks, preds)):
        sim = res.loss[i]
        se = res.loss_sem[i]
        det = se <= 1e-12 * np.maximum(np.abs(sim), np.abs(pred))
        bad_det = det & ~(np.abs(sim - pred) <= _DET_RTOL * np.maximum(np.abs(pred), np.abs(sim)) + 1e-300)
        z = np.zeros(R)
        z[~det] = (sim[~det] - pred[~det]) / se[~det]
        if bad_det.any():
            r = int(np.flatnonzero(bad_det)[0])
            worst = _curve_worst(times, r, pred, sim, se, math.inf)
            per.append((k, 0.0, math.inf, f"record t = {times[r]} is deterministic (standard error 0) and differs "
                        f"from the prediction by more than relative {_DET_RTOL:g}", worst))
            continue
        n = int((~det).sum())
        if n == 0:
            r = 0
            per.append((k, 1.0, 0.0, f"all {R} records deterministic (standard error 0), equal within relative "
                        f"{_DET_RTOL:g}", _curve_worst(times, r, pred, sim, se, 0.0)))
            continue
        r = int(np.argmax(np.abs(z)))
        worst = _curve_worst(times, r, pred, sim, se, z[r])
        if combine == "bonferroni":
            pz = _two_sided_normal(z[~det])
            p = float(min(1.0, n * pz.min()))
            text = (f"max |z| over {n} records (z = (mean loss over chains - predicted) / standard error from "
                    f"the per-chain losses), Bonferroni; max |z| = {abs(z[r]):.4g}, smallest record p = {pz.min():.3g}")
            per.append((k, p, float(abs(z[r])), text, worst))
        else:
            p, T2, rank = _hotelling(res.chain_loss[i][:, ~det] - pred[~det])
            text = (f"Hotelling T^2 over {n} records with the sample covariance of the per-chain losses "
                    f"(F({rank}, {chains - rank}) approximation); T^2 = {T2:.5g}, max |z| = {abs(z[r]):.4g}")
            per.append((k, p, T2, text, worst))
    kp = np.array([x[1] for x in per])
    j = int(np.argmin(kp))
    p = float(min(1.0, len(ks) * kp[j])) if len(ks) > 1 else float(kp[0])
    passed = p > alpha
    k, _, stat, text, worst = per[j]
    summary, rep = _model_text(model)
    if lra is None:
        lrtxt = f"constant {model.lr:.6g}"
    elif lra.ndim == 0:
        lrtxt = f"constant {float(lra):.6g}"
    else:
        lrtxt = f"schedule {_arr(lra, 4)}"
    lines = [f"quadsgd.testing: the simulation {'agrees with' if passed else 'contradicts'} the predicted loss "
             f"curve (p = {p:.3g} {'>' if passed else '<='} alpha = {alpha:g})",
             f"  test: {text}" + (f"; Bonferroni over {len(ks)} kernels (kernel p = {kp[j]:.3g})" if len(ks) > 1 else ""),
             f"  largest discrepancy: {_fmt_worst(worst)}",
             f"  model: {summary}",
             f"  kernel: {_kernel_repr(k)}" + (f" (of {len(ks)}: {', '.join(_kernel_repr(x) for x in ks)})" if len(ks) > 1 else ""),
             f"  simulation: {chains} chains, {steps} steps, record_every {record_every} ({R} records), method "
             f"{method!r}, u0 = {_arr(u0a, 4)}, lr {lrtxt}, seed {sim_seed} (from seed={seed})",
             f"  reproduce: {rep}; k = qs.{_kernel_repr(k)}"]
    return CheckResult(passed=passed, pvalue=p, alpha=alpha, test=text, statistic=float(stat), worst=worst,
                       message="\n".join(lines), seed=sim_seed, chains=chains, steps=steps, method=method,
                       kernel_pvalues=kp)


def _curve_worst(times, r, pred, sim, se, z):
    rel = (sim[r] - pred[r]) / abs(pred[r]) if pred[r] != 0 else math.inf
    return dict(where=f"t = {int(times[r])}", predicted=float(pred[r]), simulated=float(sim[r]), se=float(se[r]),
                z=float(z), relative_error=float(rel), time=int(times[r]))


def _hotelling(E):
    """p-value, T^2 and rank of Hotelling's one-sample test of mean 0 for the rows of E (N, R)."""
    from scipy import stats

    N = E.shape[0]
    mean = E.mean(axis=0)
    C = np.cov(E, rowvar=False, ddof=1).reshape(E.shape[1], E.shape[1])
    w, V = np.linalg.eigh(C)
    keep = w > 1e-12 * w.max()
    rank = int(keep.sum())
    proj = V[:, keep].T @ mean
    T2 = float(N * np.sum(proj * proj / w[keep]))
    F = T2 * (N - rank) / (rank * (N - 1))
    return float(stats.f.sf(F, rank, N - rank)), T2, rank


def assert_curve_matches(predicted, model, kernel, steps, *, chains=10000, alpha=1e-6, lr=None, u0=None,
                         record_every=1, seed=0, method="step", combine="bonferroni",
                         max_steps=100_000) -> CheckResult:
    r"""Assert that ``predicted`` is the expected loss curve of the averaged iterate.

    Same arguments as :func:`check_curve`; ``combine="bonferroni"`` (default: max |z| over the
    records, false-alarm rate <= alpha) or ``"hotelling"`` (rate ~ alpha). Raises AssertionError with
    the test, statistic, p-value, model, kernel and largest discrepancy (record time, predicted,
    simulated +- standard error, z, relative error) when p <= alpha; returns the
    :class:`CheckResult` otherwise. ValueError for bad input.
    """
    r = check_curve(predicted, model, kernel, steps, chains=chains, alpha=alpha, lr=lr, u0=u0,
                    record_every=record_every, seed=seed, method=method, combine=combine, max_steps=max_steps)
    if not r.passed:
        raise AssertionError(r.message)
    return r
