r"""The paper's linear model fitted to a real trajectory (Appendix A.1, eq. 14-16): predictions per Hessian
direction, measurements from a recorded projection series, and the statistic of the ``linear-model-fit`` verdict.

Pure functions on numpy arrays returning typed results (no torch, no files); the torch side -- Hessian-vector
products, Lanczos, mini-batch gradients -- is :mod:`realnet.hessian`. Per direction :math:`v_i` the model is the
scalar heavy-ball process :math:`p_{t+1} = p_t - \lambda m_{t+1}`, :math:`m_{t+1} = \beta m_t + \kappa_i p_t +
v_i^\top b_t` (PyTorch momentum), i.e. ``quadsgd.LinearModel([kappa_i], lr, momentum)`` with :math:`p = \sigma_i u`.

* :func:`curvatures` -- :math:`\kappa_i` = loss-Hessian eigenvalue + the run's weight decay;
* :func:`noise_estimate` -> :class:`NoiseEstimate` -- :math:`\sigma_i^2 = \mathrm{Var}_B(v_i^\top g_B)` from an
  (n_batches, k) array of projected mini-batch gradients (n_batches >= 4);
* :func:`predict` -> :class:`Prediction` -- stationary variance, autocorrelation at lags 1..``lags``, integrated
  time, each kernel's variance ratio and loss reduction :math:`\tfrac12\kappa_i(\mathrm{Var}\,p -
  \mathrm{Var}\,\hat p)`; a direction with :math:`\kappa_i \le 0` or :math:`\lambda\kappa_i \ge 2(1+\beta)` gets
  NaN and ``stable`` False;
* :func:`measure` -> :class:`Measurement` -- the same from ``projections`` :math:`p_t = v_i^\top\theta_t`, an
  (N + 1, k) array of a constant-lr continuation (every step), with delete-one-block jackknife standard errors
  over ``n_blocks`` blocks (t intervals, ``n_blocks - 1`` dof); ``window_ok`` / ``block_ok`` flag directions
  whose window hit the block length or whose blocks are shorter than :data:`BLOCK_FACTOR` correlation times;
* :func:`compare` -> :class:`Comparison`, :func:`fit_statistic` -> :class:`FitStatistic` -- median over
  (direction, kernel) of :math:`|\log(\text{measured}/\text{predicted})|` with a bootstrap over directions;
  :data:`FIT_THRESHOLD` (log 1.5) is the verdict's rule, fixed before any measurement;
* :func:`min_steps` -- the length rule: blocks at least :data:`SPAN_FACTOR` times the longest lag or kernel span
  after the EMA burn-in.

Errors: ValueError naming the argument for arrays of the wrong shape or not finite, a constant direction, an
empty or trivial kernel list, and a series shorter than :func:`min_steps` (naming ``steps``).
Derivations, estimators, input conventions and their measured coverage: ``docs/linear-model-fit.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import signal, stats

from sgdtraj.arguments import check_int, check_real, check_seed

from .kernels import AveragingKernel, Last, TwoPoint, parse_kernel
from .model import LinearModel
from .theory import stationary_covariance, stationary_loss_per_coordinate

__all__ = [
    "NoiseEstimate", "Prediction", "Measurement", "Comparison", "FitStatistic",
    "curvatures", "noise_estimate", "predict", "measure", "compare", "fit_statistic", "apply_kernel",
    "kernel_span", "min_steps", "t_quantile", "DEFAULT_KERNELS", "FIT_THRESHOLD", "SPAN_FACTOR", "BLOCK_FACTOR",
    "N_BLOCKS", "WINDOW_C",
]

#: the verdict's rule, fixed before measuring: median |log(measured / predicted variance ratio)| < log 1.5
FIT_THRESHOLD = math.log(1.5)
#: a-priori length rule: blocks at least this many times the longest lag / kernel span (ValueError otherwise)
SPAN_FACTOR = 5
#: a-posteriori check: blocks at least this many times the measured correlation time (``block_ok``)
BLOCK_FACTOR = 10
#: default number of jackknife blocks
N_BLOCKS = 20
#: window constant for the integrated autocorrelation time (M >= WINDOW_C * tau_abs(M))
WINDOW_C = 3.0
#: the averaging side-trip's kernels in the quick validation (``RealConfig.averaging_kernels`` with K = 100)
DEFAULT_KERNELS = ("ema:0.02", "twopoint:100", "swa:100")
_EMA_TAIL = 1e-3


# ====================================================================================== typed results
class NoiseEstimate(NamedTuple):
    """Gradient-noise statistics per direction from ``n_batches`` mini-batch gradients.

    sigma, sigma_se: (k,) standard deviation of :math:`v_i^\\top g_B` and its standard error.
    variance, variance_se: (k,) :math:`\\sigma_i^2` (unbiased) and its standard error
    (:math:`\\sqrt{(m_4 - s^4(n-3)/(n-1))/n}`). mean, mean_se: (k,) mean projected gradient and its
    standard error (the drift at :math:`\\theta_S`). n_batches: int.
    """

    sigma: np.ndarray
    sigma_se: np.ndarray
    variance: np.ndarray
    variance_se: np.ndarray
    mean: np.ndarray
    mean_se: np.ndarray
    n_batches: int


class Prediction(NamedTuple):
    """The linear model's stationary predictions per direction (NaN where ``stable`` is False).

    kappa, sigma, lr_kappa, stable: (k,). lr, momentum: floats. lags: (L,) = 1..L. kernels: tuple of
    spec strings. whitened_variance: (k,) Var u (unit noise). variance: (k,) Var p = sigma^2 Var u.
    autocorrelation: (k, L). integrated_time: (k,). variance_ratio, averaged_variance: (k, n_kernels).
    loss: (k,) 0.5 kappa Var p. loss_reduction: (k, n_kernels) 0.5 kappa (Var p - Var p_hat).
    """

    kappa: np.ndarray
    sigma: np.ndarray
    lr: float
    momentum: float
    lr_kappa: np.ndarray
    stable: np.ndarray
    lags: np.ndarray
    kernels: tuple
    whitened_variance: np.ndarray
    variance: np.ndarray
    autocorrelation: np.ndarray
    integrated_time: np.ndarray
    variance_ratio: np.ndarray
    averaged_variance: np.ndarray
    loss: np.ndarray
    loss_reduction: np.ndarray


class Measurement(NamedTuple):
    """Estimates from a projection series with block-jackknife standard errors (``*_se``).

    steps: N (the series has N + 1 points). n_blocks, block_length: the jackknife blocks. lags: (L,).
    kernels: spec strings. mean: (k,). variance: (k,). autocorrelation: (k, L). integrated_time: (k,)
    with ``window`` (k,) and ``window_ok`` (k,). variance_ratio, averaged_variance: (k, n_kernels).
    loss_reduction: (k, n_kernels) (NaN without kappa). correlation_time: (k,) max(tau, 1 + 2 sum_{L<=M}
    rho_L^2, 1) -- the integrated times of the series and of its square (what the variance-type sums
    inherit). block_ok: (k,) block_length >= BLOCK_FACTOR * correlation_time.
    dof: n_blocks - 1 (Student-t degrees of freedom of the intervals).
    """

    steps: int
    n_blocks: int
    block_length: int
    lags: np.ndarray
    kernels: tuple
    mean: np.ndarray
    variance: np.ndarray
    variance_se: np.ndarray
    autocorrelation: np.ndarray
    autocorrelation_se: np.ndarray
    integrated_time: np.ndarray
    integrated_time_se: np.ndarray
    window: np.ndarray
    window_ok: np.ndarray
    correlation_time: np.ndarray
    variance_ratio: np.ndarray
    variance_ratio_se: np.ndarray
    averaged_variance: np.ndarray
    averaged_variance_se: np.ndarray
    loss_reduction: np.ndarray
    loss_reduction_se: np.ndarray
    block_ok: np.ndarray
    dof: int


@dataclass(frozen=True)
class FitStatistic:
    """The verdict's statistic: median over (direction, kernel) of :math:`|\\log(\\hat K/K)|`.

    value: the median. se: bootstrap standard error (directions resampled with replacement, all
    kernels of a direction kept together). ci_low, ci_high: 2.5 / 97.5 % bootstrap percentiles.
    threshold: :data:`FIT_THRESHOLD`. passed: value < threshold. n_directions, n_values: used (finite,
    stable) directions and (direction, kernel) pairs. n_boot, seed: of the bootstrap.
    """

    value: float
    se: float
    ci_low: float
    ci_high: float
    threshold: float
    passed: bool
    n_directions: int
    n_values: int
    n_boot: int
    seed: int


class Comparison(NamedTuple):
    """Measured against predicted, per direction.

    kernels: spec strings. log_variance_ratio: (k, n_kernels) log(measured K / predicted K).
    z_variance_ratio: (k, n_kernels) (measured - predicted) / se. log_variance: (k,) log(measured Var p /
    predicted Var p) (depends on sigma: the noise model). z_variance: (k,). z_autocorrelation: (k, L).
    z_integrated_time: (k,). statistic: :class:`FitStatistic` on the variance ratios (the verdict).
    variance_statistic: the same statistic on the variances (a check of the noise model sigma).
    """

    kernels: tuple
    log_variance_ratio: np.ndarray
    z_variance_ratio: np.ndarray
    log_variance: np.ndarray
    z_variance: np.ndarray
    z_autocorrelation: np.ndarray
    z_integrated_time: np.ndarray
    statistic: FitStatistic
    variance_statistic: FitStatistic


# ====================================================================================== helpers
def _kernels(kernels) -> tuple:
    if isinstance(kernels, (str, AveragingKernel)):
        kernels = (kernels,)
    out = tuple(parse_kernel(k) for k in kernels)
    if not out:
        raise ValueError("kernels must name at least one averaging kernel (e.g. 'ema:0.02', 'twopoint:100')")
    for k in out:
        if k.tracking().kind == "last" or k.is_last:
            raise ValueError(f"kernels: {str(k)!r} is the last iterate itself (variance ratio 1), not an average")
    return out


def _vector(name, x, k=None) -> np.ndarray:
    a = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a non-empty 1-D array of finite numbers, got shape {a.shape}")
    if k is not None and a.size != k:
        raise ValueError(f"{name} must have {k} entries (one per direction), got {a.size}")
    return a


def kernel_span(kernel) -> int:
    """Steps of memory of a kernel for the length rule: points: (n-1)*stride (its reach); EMA: ceil((2-a)/a)
    (the integrated autocorrelation time of an EMA of white noise)."""
    t = parse_kernel(kernel).tracking()
    if t.kind == "geometric":
        return int(math.ceil((2.0 - t.decay) / t.decay - 1e-9))
    if t.kind == "points":
        return int((t.n - 1) * t.stride)
    return 0


def _kernel_burn(kernel) -> int:
    """First index of the averaged series that is used (a full window / EMA weight on p_0 < 1e-3)."""
    t = parse_kernel(kernel).tracking()
    if t.kind == "geometric":
        a = t.decay
        return 0 if a >= 1.0 else int(math.ceil(math.log(_EMA_TAIL) / math.log1p(-a)))
    if t.kind == "points":
        return int((t.n - 1) * t.stride)
    return 0


def apply_kernel(series: np.ndarray, kernel) -> tuple[np.ndarray, int]:
    r"""The kernel average of a series along its last axis: (averaged values, index of their first point).

    series: (..., T). Points kernels: :math:`\hat p_t = \sum_j w_j p_{t-jD}` for t >= (n-1)D; EMA:
    :math:`e_0 = p_0`, :math:`e_t = (1-a)e_{t-1} + ap_t`, returned from the burn-in index on.
    Returns (array (..., T - first), first).
    """
    p = np.asarray(series, dtype=np.float64)
    kern = parse_kernel(kernel)
    t = kern.tracking()
    first = _kernel_burn(kern)
    T = p.shape[-1]
    if first >= T:
        raise ValueError(f"the series ({T} points) is shorter than the kernel {str(kern)!r} needs ({first + 1})")
    if t.kind == "last":
        return p.copy(), 0
    if t.kind == "geometric":
        a = t.decay
        zi = ((1.0 - a) * p[..., :1])
        e, _ = signal.lfilter([a], [1.0, -(1.0 - a)], p, axis=-1, zi=zi)
        return e[..., first:], first
    w = t.weight_array()
    D = t.stride
    out = np.zeros(p.shape[:-1] + (T - first,))
    for j, wj in enumerate(w):
        out += wj * p[..., first - j * D: T - j * D]
    return out, first


def min_steps(lags: int, kernels=DEFAULT_KERNELS, n_blocks: int = N_BLOCKS) -> int:
    """The smallest N (series of N + 1 points) that :func:`measure` accepts for these lags and kernels."""
    ks = _kernels(kernels)
    span = max([int(lags), 1] + [kernel_span(k) for k in ks])
    burn = max([0] + [_kernel_burn(k) for k in ks])
    return n_blocks * SPAN_FACTOR * span + burn - 1


def curvatures(eigenvalues, weight_decay: float = 0.0) -> np.ndarray:
    """:math:`\\kappa_i` = eigenvalue of the loss Hessian + coupled weight decay (the curvature of the optimised
    objective :math:`L + \\tfrac{wd}2\\|\\theta\\|^2`, which is what the optimizer's mean update feels); shape (k,)."""
    wd = check_real("weight_decay", weight_decay, 0.0)
    return _vector("eigenvalues", eigenvalues) + wd


# ====================================================================================== noise
def noise_estimate(projected_gradients) -> NoiseEstimate:
    """Gradient-noise variance per direction from projections of independent mini-batch gradients.

    projected_gradients: (n_batches, k) array, row b = :math:`V g_{B_b}` (see
    :func:`realnet.hessian.projected_gradients`), n_batches >= 4.
    """
    G = np.asarray(projected_gradients, dtype=np.float64)
    if G.ndim == 1:
        G = G[:, None]
    if G.ndim != 2 or not np.all(np.isfinite(G)):
        raise ValueError(f"projected_gradients must be a finite (n_batches, k) array, got shape {G.shape}")
    n = G.shape[0]
    if n < 4:
        raise ValueError(f"noise_batches must be >= 4 (the variance of sigma^2 needs a 4th moment), got {n}")
    mean = G.mean(0)
    d = G - mean
    s2 = (d * d).sum(0) / (n - 1)
    m4 = (d ** 4).mean(0)
    var_s2 = np.maximum((m4 - s2 * s2 * (n - 3) / (n - 1)) / n, 0.0)
    se_s2 = np.sqrt(var_s2)
    sigma = np.sqrt(s2)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_se = np.where(sigma > 0, se_s2 / (2.0 * np.where(sigma > 0, sigma, 1.0)), np.nan)
    return NoiseEstimate(sigma=sigma, sigma_se=sigma_se, variance=s2, variance_se=se_s2, mean=mean,
                         mean_se=np.sqrt(s2 / n), n_batches=int(n))


# ====================================================================================== prediction
def predict(kappa, sigma, lr: float, momentum: float = 0.0, kernels=DEFAULT_KERNELS, lags: int = 10) -> Prediction:
    r"""The linear model's stationary predictions per direction (equations: docs/linear-model-fit.md).

    kappa: (k,) curvatures (loss-Hessian eigenvalue + weight decay). sigma: (k,) noise standard
    deviations (>= 0). lr: constant learning rate (> 0). momentum: heavy-ball beta in [0, 1) (PyTorch).
    kernels: spec strings or quadsgd kernels (e.g. ``"ema:0.02"``, ``"twopoint:100"``, ``"swa:100"``).
    lags: autocorrelations at lags 1..lags (>= 1).
    """
    kappa = _vector("kappa", kappa)
    k = kappa.size
    sigma = _vector("sigma", sigma, k)
    if np.any(sigma < 0):
        raise ValueError("sigma must be >= 0 in every direction")
    lr = check_real("lr", lr, 0.0, low_open=True)
    momentum = check_real("momentum", momentum, 0.0, 1.0, high_open=True)
    lags = check_int("lags", lags, 1)
    ks = _kernels(kernels)
    nk = len(ks)
    lr_kappa = lr * kappa
    bound = 2.0 * (1.0 + momentum)
    stable = (kappa > 0) & (lr_kappa < bound * (1.0 - 1e-12))
    L = np.arange(1, lags + 1)
    wvar = np.full(k, np.nan)
    rho = np.full((k, lags), np.nan)
    ratio = np.full((k, nk), np.nan)
    lossv = np.full(k, np.nan)
    lred = np.full((k, nk), np.nan)
    s = np.flatnonzero(stable)
    if s.size:
        kap = kappa[s]
        # whitened model per direction: Omega = kappa, unit noise, loss weight H = kappa sigma^2
        m = LinearModel(kap, lr, momentum, hessian=kap * sigma[s] ** 2)
        vu = stationary_covariance(m, Last())
        wvar[s] = vu
        for i, lag in enumerate(L):
            vtp = stationary_covariance(m, TwoPoint(int(lag)))
            rho[s, i] = (2.0 * vtp - vu) / vu
        l0 = stationary_loss_per_coordinate(m, Last())
        lossv[s] = l0
        for j, kern in enumerate(ks):
            ratio[s, j] = stationary_covariance(m, kern) / vu
            lred[s, j] = l0 - stationary_loss_per_coordinate(m, kern)
    tau = np.full(k, np.nan)
    tau[s] = 1.0 / (kappa[s] ** 2 * wvar[s])  # long-run variance 1/kappa^2 over Var u (docs/linear-model-fit.md)
    var = sigma ** 2 * wvar
    return Prediction(kappa=kappa, sigma=sigma, lr=lr, momentum=momentum, lr_kappa=lr_kappa, stable=stable, lags=L,
                      kernels=tuple(str(x) for x in ks), whitened_variance=wvar, variance=var, autocorrelation=rho,
                      integrated_time=tau, variance_ratio=ratio, averaged_variance=var[:, None] * ratio,
                      loss=lossv, loss_reduction=lred)


# ====================================================================================== measurement
def _block_ids(T: int, n_blocks: int) -> tuple[np.ndarray, int]:
    b = T // n_blocks
    ids = np.minimum(np.arange(T) // b, n_blocks - 1)
    return ids, b


def _block_sums(x: np.ndarray, ids: np.ndarray, n_blocks: int) -> np.ndarray:
    """Sums of x (k, n) over time indices grouped by block id ids (n,); returns (n_blocks, k)."""
    out = np.zeros((n_blocks, x.shape[0]))
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    sums = np.add.reduceat(x, starts, axis=1)  # (k, n_present)
    out[ids[starts]] = sums.T
    return out


def _jackknife(full: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """Delete-one-block jackknife standard error; reps: (J, ...) replicate estimates."""
    J = reps.shape[0]
    return np.sqrt((J - 1) / J * np.sum((reps - reps.mean(0)) ** 2, axis=0))


def _with_replicates(S: np.ndarray) -> np.ndarray:
    """Stack the total (index 0) and the J leave-one-block-out sums (1..J) of block sums S (J, ...)."""
    tot = S.sum(0)
    return np.concatenate([tot[None], tot[None] - S], axis=0)


def _lag_block_sums(x: np.ndarray, ids: np.ndarray, n_blocks: int, Lmax: int):
    r"""Per block j and lag L = 0..Lmax: :math:`\sum x_tx_{t+L}`, :math:`\sum x_t`, :math:`\sum x_{t+L}` and the
    count, over t in block j with t + L < T. x: (k, T). Returns arrays (J, Lmax+1, k) x 3 and (J, Lmax+1).

    The products by one FFT cross-correlation per block (the block against itself extended by Lmax points),
    the plain sums by cumulative sums: O(k T log) instead of O(k T Lmax).
    """
    k, T = x.shape
    L = np.arange(Lmax + 1)
    Spp = np.zeros((n_blocks, Lmax + 1, k))
    Sa = np.zeros_like(Spp)
    Sb = np.zeros_like(Spp)
    Cn = np.zeros((n_blocks, Lmax + 1))
    cs = np.concatenate([np.zeros((k, 1)), np.cumsum(x, axis=1)], axis=1)  # cs[:, t] = sum_{u<t} x_u
    for j in range(n_blocks):
        idx = np.flatnonzero(ids == j)
        s, e = int(idx[0]), int(idx[-1]) + 1
        seg = x[:, s:e]
        ext = x[:, s:min(e + Lmax, T)]
        n = 1 << (seg.shape[1] + ext.shape[1]).bit_length()
        cc = np.fft.irfft(np.conj(np.fft.rfft(seg, n, axis=1)) * np.fft.rfft(ext, n, axis=1), n, axis=1)
        Spp[j] = cc[:, :Lmax + 1].T
        stop = np.clip(T - L, s, e)  # first-index range [s, stop) for lag L
        Cn[j] = stop - s
        Sa[j] = (cs[:, stop] - cs[:, [s]]).T
        Sb[j] = (cs[:, stop + L] - cs[:, s + L]).T
    return Spp, Sa, Sb, Cn


def measure(projections, kernels=DEFAULT_KERNELS, lags: int = 10, *, kappa=None,
            n_blocks: int = N_BLOCKS) -> Measurement:
    r"""Estimate variance, autocorrelations, integrated time, kernel variance ratios and loss reductions of
    :math:`p_t = v_i^\top\theta_t` with block-jackknife standard errors (docs/linear-model-fit.md).

    projections: (N + 1, k) array, row t = the k projections after t steps (t = 0..N). kernels: as in
    :func:`predict`. lags: autocorrelations at lags 1..lags. kappa: (k,) curvatures for the loss
    reduction (None: NaN). n_blocks: jackknife blocks (>= 5).
    ValueError naming ``steps`` when N is too short for the lags / kernels (:func:`min_steps`).
    """
    P = np.asarray(projections, dtype=np.float64)
    if P.ndim == 1:
        P = P[:, None]
    if P.ndim != 2 or P.shape[0] < 2 or not np.all(np.isfinite(P)):
        raise ValueError(f"projections must be a finite (N + 1, k) array with N >= 1, got shape {P.shape}")
    lags = check_int("lags", lags, 1)
    n_blocks = check_int("n_blocks", n_blocks, 5)
    ks = _kernels(kernels)
    nk = len(ks)
    T, k = P.shape
    N = T - 1
    need = min_steps(lags, ks, n_blocks)
    if N < need:
        span = max([lags] + [kernel_span(x) for x in ks])
        raise ValueError(
            f"steps = {N} is too short: estimating lag-{lags} autocorrelations and the kernels "
            f"{[str(x) for x in ks]} (longest span {span} steps) with n_blocks = {n_blocks} jackknife blocks of "
            f">= {SPAN_FACTOR} x span needs steps >= {need}; increase steps or reduce lags / the kernel spans")
    if kappa is not None:
        kappa = _vector("kappa", kappa, k)
    if np.any(np.ptp(P, axis=0) == 0):
        i = int(np.flatnonzero(np.ptp(P, axis=0) == 0)[0])
        raise ValueError(f"projections: direction {i} is constant over the series (zero variance)")
    x = (P - P.mean(0)).T  # (k, T): centred for numerical stability (estimates re-centre exactly)
    ids, b = _block_ids(T, n_blocks)

    # ---- window for the integrated time from the full-series autocorrelation (FFT)
    nfft = 1 << (2 * T - 1).bit_length()
    f = np.fft.rfft(x, nfft, axis=1)
    acov = np.fft.irfft(f * np.conj(f), nfft, axis=1)[:, :T] / np.arange(T, 0, -1)
    rho_fft = acov / acov[:, :1]
    Mcap = max(1, b)
    window = np.full(k, Mcap)
    window_ok = np.zeros(k, dtype=bool)
    tau_abs = np.zeros(k)
    cum_abs = 1.0 + 2.0 * np.cumsum(np.abs(rho_fft[:, 1:Mcap + 1]), axis=1)  # tau_abs(M), M = 1..Mcap
    Ms = np.arange(1, Mcap + 1)
    for i in range(k):
        ok = np.flatnonzero(Ms >= WINDOW_C * cum_abs[i])
        if ok.size:
            window[i] = Ms[ok[0]]
            window_ok[i] = True
        tau_abs[i] = cum_abs[i, window[i] - 1]
    Lmax = int(max(lags, window.max()))

    # ---- block sums: p, lag products (lag 0..Lmax) with the sums of both factors
    S1 = _block_sums(x, ids, n_blocks)  # (J, k)
    cnt = np.bincount(ids, minlength=n_blocks).astype(np.float64)  # (J,)
    Spp, Sa, Sb, Cn = _lag_block_sums(x, ids, n_blocks, Lmax)
    R1, Rn = _with_replicates(S1), _with_replicates(cnt)  # (J+1, k), (J+1,)
    Rpp, Ra, Rb, Rc = (_with_replicates(a) for a in (Spp, Sa, Sb, Cn))
    mu = R1 / Rn[:, None]  # (J+1, k)
    gam = (Rpp - mu[:, None] * (Ra + Rb)) / Rc[:, :, None] + mu[:, None] ** 2  # (J+1, Lmax+1, k)
    var = gam[:, 0]  # (J+1, k)
    rho = gam[:, 1:] / var[:, None]  # (J+1, Lmax, k)
    rho_l = rho[:, :lags]
    # integrated time with each direction's window
    mask = (np.arange(1, Lmax + 1)[:, None] <= window[None, :])  # (Lmax, k)
    tau = 1.0 + 2.0 * np.sum(rho * mask[None], axis=1)  # (J+1, k)

    # ---- kernels
    kr = np.full((n_blocks + 1, k, nk), np.nan)
    kv = np.full((n_blocks + 1, k, nk), np.nan)
    for j, kern in enumerate(ks):
        a, first = apply_kernel(x, kern)  # (k, T - first)
        ida = ids[first:]
        A1 = _with_replicates(_block_sums(a, ida, n_blocks))
        A2 = _with_replicates(_block_sums(a * a, ida, n_blocks))
        An = _with_replicates(np.bincount(ida, minlength=n_blocks).astype(np.float64))
        va = A2 / An[:, None] - (A1 / An[:, None]) ** 2
        kv[:, :, j] = va
        kr[:, :, j] = va / var
    if kappa is not None:
        lr_ = 0.5 * kappa[None, :, None] * (var[:, :, None] - kv)
    else:
        lr_ = np.full_like(kv, np.nan)

    def est(a):
        return a[0], _jackknife(a[0], a[1:])

    v0, vse = est(var)
    r0, rse = est(np.moveaxis(rho_l, 1, 2))  # (J+1, k, L)
    t0, tse = est(tau)
    k0, kse = est(kr)
    a0, ase = est(kv)
    l0, lse = est(lr_)
    # correlation time of the summands: tau for linear statistics, 1 + 2 sum rho^2 for squares (Gaussian)
    tau_sq = 1.0 + 2.0 * np.sum(np.moveaxis(rho[0], 0, 1) ** 2 * mask.T, axis=1)
    corr_time = np.maximum(np.maximum(t0, tau_sq), 1.0)
    block_ok = b >= BLOCK_FACTOR * corr_time
    return Measurement(steps=int(N), n_blocks=int(n_blocks), block_length=int(b), lags=np.arange(1, lags + 1),
                       kernels=tuple(str(x_) for x_ in ks), mean=P.mean(0), variance=v0, variance_se=vse,
                       autocorrelation=r0, autocorrelation_se=rse, integrated_time=t0, integrated_time_se=tse,
                       window=window, window_ok=window_ok, correlation_time=corr_time, variance_ratio=k0,
                       variance_ratio_se=kse,
                       averaged_variance=a0, averaged_variance_se=ase, loss_reduction=l0, loss_reduction_se=lse,
                       block_ok=block_ok, dof=int(n_blocks - 1))


# ====================================================================================== comparison
def fit_statistic(measured, predicted, *, n_boot: int = 2000, seed: int = 0) -> FitStatistic:
    r"""Median over (direction, kernel) of :math:`|\log(\text{measured}/\text{predicted})|` with a bootstrap
    over directions; passes when below :data:`FIT_THRESHOLD` (:math:`\log 1.5`, fixed).

    measured, predicted: (k, n_kernels) arrays (or (k,)) of positive quantities; pairs that are not finite
    and positive on both sides (unstable directions, NaN) are left out. n_boot: bootstrap resamples.
    """
    m = np.asarray(measured, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if m.shape != p.shape:
        raise ValueError(f"measured {m.shape} and predicted {p.shape} must have the same shape")
    if m.ndim == 1:
        m, p = m[:, None], p[:, None]
    n_boot = check_int("n_boot", n_boot, 1)
    seed = check_seed(seed, allow_none=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(m) & np.isfinite(p) & (m > 0) & (p > 0)
        d = np.where(ok, np.abs(np.log(np.where(ok, m, 1.0) / np.where(ok, p, 1.0))), np.nan)
    rows = np.flatnonzero(ok.any(axis=1))
    if rows.size == 0:
        nan = float("nan")
        return FitStatistic(nan, nan, nan, nan, FIT_THRESHOLD, False, 0, 0, n_boot, seed)
    d = d[rows]
    value = float(np.nanmedian(d))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        boots[i] = np.nanmedian(d[rng.integers(0, rows.size, rows.size)])
    return FitStatistic(value=value, se=float(boots.std(ddof=1)) if n_boot > 1 else float("nan"),
                        ci_low=float(np.percentile(boots, 2.5)), ci_high=float(np.percentile(boots, 97.5)),
                        threshold=FIT_THRESHOLD, passed=bool(value < FIT_THRESHOLD), n_directions=int(rows.size),
                        n_values=int(np.isfinite(d).sum()), n_boot=n_boot, seed=seed)


def compare(prediction: Prediction, measurement: Measurement, *, n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Measured against predicted: log ratios, z-scores (measured - predicted) / se, and the verdict statistic."""
    if tuple(prediction.kernels) != tuple(measurement.kernels):
        raise ValueError(f"prediction kernels {prediction.kernels} differ from measurement kernels "
                         f"{measurement.kernels}")
    if prediction.kappa.shape != measurement.variance.shape:
        raise ValueError("prediction and measurement must have the same number of directions")
    L = min(len(prediction.lags), len(measurement.lags))
    with np.errstate(divide="ignore", invalid="ignore"):
        lvr = np.log(measurement.variance_ratio / prediction.variance_ratio)
        zvr = (measurement.variance_ratio - prediction.variance_ratio) / measurement.variance_ratio_se
        lv = np.log(measurement.variance / prediction.variance)
        zv = (measurement.variance - prediction.variance) / measurement.variance_se
        za = ((measurement.autocorrelation[:, :L] - prediction.autocorrelation[:, :L])
              / measurement.autocorrelation_se[:, :L])
        zt = (measurement.integrated_time - prediction.integrated_time) / measurement.integrated_time_se
    stat = fit_statistic(measurement.variance_ratio, prediction.variance_ratio, n_boot=n_boot, seed=seed)
    vstat = fit_statistic(measurement.variance, prediction.variance, n_boot=n_boot, seed=seed)
    return Comparison(kernels=tuple(prediction.kernels), log_variance_ratio=lvr, z_variance_ratio=zvr,
                      log_variance=lv, z_variance=zv, z_autocorrelation=za, z_integrated_time=zt,
                      statistic=stat, variance_statistic=vstat)


def t_quantile(dof: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for intervals ``estimate +- t * se`` with ``dof`` degrees of freedom."""
    return float(stats.t.ppf(0.5 + level / 2.0, dof))
