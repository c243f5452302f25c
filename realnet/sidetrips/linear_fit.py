r"""``linear-fit`` (paper App. A.1, eq. 14-16): fit the paper's linear model to a real trajectory at checkpoint
``S``, predict, measure, compare -- per top Hessian direction.

Python: ``realnet.fit_linear_model(run_dir, S, out_dir, k=10, steps=N, ...)`` (the side-trip) and :func:`fit_model`
(the same computation on any ``nn.Module`` with any batches and update function).
CLI: ``python -m realnet sidetrip linear-fit --run DIR --step S --out OUT [--k K] [--steps N] [--key=value ...]``.
Steps: top-``k`` Hessian eigenpairs at :math:`\theta_S` (:func:`realnet.hessian.lanczos`, train-mode BN by default),
curvature :math:`\kappa_i` (Rayleigh quotient on fresh batches, or the eigenvalue, + weight decay), noise
:math:`\sigma_i`, predictions (:func:`quadsgd.fitting.predict`), a constant-lr continuation of ``burn_in + steps``
updates recording :math:`p_{i,t} = v_i^\top(\theta_{S+t} - \theta_S)`, measurement and comparison
(:mod:`quadsgd.fitting`). Every batch of the run's size (the sample's chunks, the curvature and noise batches) is
evaluated as the run normalised it: BatchNorm over each rank's share of a DDP run without SyncBN (the checkpoint's
``world_size``), one pass per share, and at most ``micro_batch`` examples per pass (a share is never split: a smaller
bound is refused; with ``micro_batch`` the Hessian sample is kept in host memory and moved a part at a time).
``steps`` must be >= ``quadsgd.fitting.min_steps(lags, kernels, n_blocks)`` (ConfigError naming ``steps``);
``steps = 0`` means that minimum. Method and reasoning: ``docs/linear-model-fit.md``.

Outputs (:class:`LinearFitResult`; column meanings in each table class):

* ``directions.csv`` (:class:`DirectionTable`, per direction, Lanczos order): ``direction``, ``eigenvalue``,
  ``residual``, ``rayleigh``, ``rayleigh_se``, ``kappa``, ``kappa_se``, ``lr_kappa``, ``edge_fraction``
  (:math:`\lambda\kappa/2(1+\beta)`), ``stable``, ``sigma``, ``sigma_se``, ``drift``, ``drift_se``,
  ``predicted_variance`` (``_se``), ``measured_variance`` (``_se``), ``log_variance``, ``z_variance``,
  ``predicted_integrated_time`` (``_se``), ``measured_integrated_time`` (``_se``), ``window``, ``window_ok``,
  ``correlation_time``, ``block_ok``, ``predicted_loss`` (``_se``), ``measured_loss``, ``trend``,
  ``median_abs_log_ratio``.
* ``kernels.csv`` (:class:`KernelTable`, per (direction, kernel)): ``direction``, ``kernel``, ``predicted_ratio``
  (``_se``), ``measured_ratio`` (``_se``), ``log_ratio``, ``z_ratio``, ``predicted_loss_reduction`` (``_se``),
  ``measured_loss_reduction`` (``_se``).
* ``autocorrelation.csv`` (:class:`AutocorrelationTable`, per (direction, lag)): ``direction``, ``lag``,
  ``predicted`` (``_se``), ``measured`` (``_se``), ``z``.
* ``spectrum.csv`` (:class:`SpectrumTable`): ``index``, ``eigenvalue``, ``residual``, ``converged``, ``rayleigh``,
  ``rayleigh_se``.
* ``projections.csv`` (:class:`ProjectionTable`, long format): ``t`` (updates since S), ``direction``,
  ``projection``; ``result.projections`` is the (N+1, k) array.
* ``continuation.csv`` (:class:`ContinuationTable`): ``t``, ``step``, ``lr``, ``train_loss`` (of update S+t).
* ``summary.json``: ``lr``, ``momentum``, ``weight_decay``, ``batch_size``, ``parameters``, ``k``, ``sample_size``,
  ``bn_mode``, ``hvp_method``, ``kappa_source``, ``noise_batches``, ``curvature_batches``, ``steps``, ``burn_in``,
  ``lags``, ``kernels``, ``n_blocks``, ``block_length``, ``independent_pool``, ``eigenvalues``, ``noise_std``,
  ``noise_std_se``, ``rayleigh``, ``rayleigh_se``, ``kappa``, ``stable``, ``lanczos``, ``statistic``,
  ``variance_statistic`` (:class:`quadsgd.fitting.FitStatistic`), ``alternative_kappa_source``,
  ``alternative_statistic``, ``alternative_variance_statistic``, ``subspace_loss_reduction`` (per kernel:
  predicted, measured, measured_se), ``timing`` (per phase: sample, lanczos, curvature, noise, continuation,
  analysis), ``provenance``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from quadsgd import fitting as lf
from sgdtraj.files import jsonable
from sgdtraj.provenance import provenance as _provenance
from sgdtraj.timing import Stopwatch

from ..config import ConfigError, check_choice, check_int, check_real
from ..hessian import BN_MODES, HVP_METHODS, LanczosResult, SampleLoss, lanczos, projected_gradients, rayleigh_quotients
from ._results import SideTripResult, Table, column
from ._runner import RunContext, SideTrip, SideTripOptions, check_lr, run_sidetrip

__all__ = ["LinearFitOptions", "LinearFitResult", "DirectionTable", "KernelTable", "AutocorrelationTable",
           "SpectrumTable", "ProjectionTable", "ContinuationTable", "LanczosInfo",
           "SubspaceLoss", "LinearFit", "fit_model", "build_result", "fit_linear_model", "SIDETRIP",
           "KAPPA_SOURCES", "SAMPLE_SEED"]

KAPPA_SOURCES = ("rayleigh", "lanczos")
SAMPLE_SEED = 8_100_001  # offset of the seeds of the Hessian sample and the fresh-batch pool
_CURVATURE, _NOISE = 1, 2  # sub-streams of the fresh batches


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------


@dataclass
class LinearFitOptions(SideTripOptions):
    k: int = 10  # Hessian directions: top-k eigenpairs (1 <= k <= parameters)
    sample_size: int = 0  # examples of the fixed Hessian sample (a multiple of the run's batch size; 0 = 16 batches)
    bn_mode: str = "batch"  # batch (BN per batch of the run's size, as SGD sees it; default) | eval (PyHessian's)
    hvp_method: str = "double_backward"  # double_backward | func (torch.func jvp(grad))
    lanczos_steps: int = 0  # Lanczos basis size (0 = max(2k + 10, 20), capped at the parameter count)
    lanczos_tol: float = 1e-4  # relative Ritz residual at which Lanczos stops
    lanczos_restarts: int = 20  # maximal thick restarts
    curvature_batches: int = 32  # fresh batches for the Rayleigh quotients v^T H_B v (k HVPs each)
    noise_batches: int = 200  # fresh batches for sigma_i = sd(v_i^T g_B) (one gradient each)
    kappa_source: str = "rayleigh"  # curvature the model uses: rayleigh (fresh batches; default) | lanczos
    steps: int = 0  # N: recorded updates of the constant-lr continuation (0 = the length rule's minimum)
    burn_in: int = 0  # updates before recording starts (e.g. when lr differs from the run's)
    lr: float | None = None  # constant lr of the continuation (None = the run's lr at the checkpoint)
    lags: int = 10  # autocorrelations at lags 1..lags
    kernels: list[str] = field(default_factory=lambda: list(lf.DEFAULT_KERNELS))  # averaging kernels (specs)
    n_blocks: int = 20  # jackknife blocks of the measurement
    n_boot: int = 2000  # bootstrap resamples (over directions) of the statistic
    seed: int = 0  # Hessian sample, fresh batches, Lanczos start vector, bootstrap

    def validate(self, step: int) -> None:
        check_int("k", self.k, 1)
        check_int("sample_size", self.sample_size, 0)
        check_choice("bn_mode", self.bn_mode, BN_MODES)
        check_choice("hvp_method", self.hvp_method, HVP_METHODS)
        check_int("lanczos_steps", self.lanczos_steps, 0)
        if self.lanczos_steps and self.lanczos_steps <= self.k:
            raise ConfigError(f"lanczos_steps (the Lanczos basis size, {self.lanczos_steps}) must exceed k "
                              f"({self.k}); use lanczos_steps >= {self.k + 1} or 0 (auto)")
        check_real("lanczos_tol", self.lanczos_tol, 0.0, low_open=True)
        check_int("lanczos_restarts", self.lanczos_restarts, 0)
        check_int("curvature_batches", self.curvature_batches, 2)
        check_int("noise_batches", self.noise_batches, 4)
        check_choice("kappa_source", self.kappa_source, KAPPA_SOURCES)
        check_int("steps", self.steps, 0)
        check_int("burn_in", self.burn_in, 0)
        check_lr(self.lr)
        check_int("lags", self.lags, 1)
        check_int("n_blocks", self.n_blocks, 5)
        check_int("n_boot", self.n_boot, 1)
        check_int("seed", self.seed, 0)
        if not isinstance(self.kernels, (list, tuple)) or not self.kernels:
            raise ConfigError("kernels must name at least one averaging kernel, e.g. ['ema:0.05', 'twopoint:20', "
                              "'swa:20'] (quadsgd specs with explicit lengths)")
        try:
            need = lf.min_steps(self.lags, list(self.kernels), self.n_blocks)
        except ValueError as e:
            raise ConfigError(f"kernels: {e}") from None
        if len(set(self.kernels)) != len(self.kernels):
            raise ConfigError(f"kernels must be distinct; got {list(self.kernels)}")
        if self.steps and self.steps < need:
            span = max([self.lags] + [lf.kernel_span(x) for x in self.kernels])
            raise ConfigError(
                f"steps = {self.steps} is too short: lag-{self.lags} autocorrelations and the kernels "
                f"{list(self.kernels)} (longest span {span} steps) with n_blocks = {self.n_blocks} jackknife blocks "
                f"of >= {lf.SPAN_FACTOR} x span need steps >= {need} (or steps = 0 for exactly that); "
                f"increase steps or reduce lags / the kernel spans / n_blocks")

    def resolved_steps(self) -> int:
        """N: ``steps``, or the length rule's minimum when ``steps`` is 0."""
        return int(self.steps) or lf.min_steps(self.lags, list(self.kernels), self.n_blocks)


# ---------------------------------------------------------------------------------------------
# tables and result
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DirectionTable(Table):
    """``directions.csv``: one row per Hessian direction (Lanczos order, eigenvalue descending)."""

    direction: np.ndarray = column("int", "index i of v_i (0 = top eigenvalue)")
    eigenvalue: np.ndarray = column("float", "Lanczos eigenvalue of the loss Hessian on the fixed sample")
    residual: np.ndarray = column("float", "relative Ritz residual ||Hv - lambda v|| / |lambda_0|")
    rayleigh: np.ndarray = column("float", "mean Rayleigh quotient v^T H_B v over fresh batches")
    rayleigh_se: np.ndarray = column("float", "its standard error")
    kappa: np.ndarray = column("float", "curvature the model uses: chosen estimate + weight decay")
    kappa_se: np.ndarray = column("float", "standard error of the curvature (Rayleigh quotient's)")
    lr_kappa: np.ndarray = column("float", "lr * kappa")
    edge_fraction: np.ndarray = column("float", "lr kappa / (2 (1 + momentum)): 1 = heavy-ball stability edge")
    stable: np.ndarray = column("int", "1 if modelled (kappa > 0 and below the stability edge)")
    sigma: np.ndarray = column("float", "sd of v^T g_B over fresh batches of the run's batch size")
    sigma_se: np.ndarray = column("float", "its standard error")
    drift: np.ndarray = column("float", "mean of v^T g_B at S")
    drift_se: np.ndarray = column("float", "its standard error")
    predicted_variance: np.ndarray = column("float", "stationary Var(v^T theta) of the linear model")
    predicted_variance_se: np.ndarray = column("float", "propagated from sigma_se and kappa_se")
    measured_variance: np.ndarray = column("float", "variance of the recorded projection")
    measured_variance_se: np.ndarray = column("float", "block-jackknife standard error")
    log_variance: np.ndarray = column("float", "log(measured / predicted variance)")
    z_variance: np.ndarray = column("float", "(measured - predicted) / sqrt(se_m^2 + se_p^2)")
    predicted_integrated_time: np.ndarray = column("float", "1 + 2 sum_L rho_L of the model")
    predicted_integrated_time_se: np.ndarray = column("float", "propagated from kappa_se")
    measured_integrated_time: np.ndarray = column("float", "windowed estimate")
    measured_integrated_time_se: np.ndarray = column("float", "block-jackknife standard error")
    window: np.ndarray = column("int", "summation window of the measured integrated time")
    window_ok: np.ndarray = column("int", "1 if the self-consistent window was found below the block length")
    correlation_time: np.ndarray = column("float", "max(tau, 1 + 2 sum rho^2, 1) of the series")
    block_ok: np.ndarray = column("int", "1 if blocks >= 10 correlation times (intervals honest)")
    predicted_loss: np.ndarray = column("float", "0.5 kappa Var p of the model")
    predicted_loss_se: np.ndarray = column("float", "propagated")
    measured_loss: np.ndarray = column("float", "0.5 kappa * measured variance")
    trend: np.ndarray = column("float", "LS slope of p over the series x its length / measured sd")
    median_abs_log_ratio: np.ndarray = column("float", "median over kernels of |log(measured / predicted ratio)|")


@dataclass(frozen=True, eq=False)
class KernelTable(Table):
    """``kernels.csv``: one row per (direction, kernel)."""

    direction: np.ndarray = column("int", "direction i")
    kernel: np.ndarray = column("str", "kernel spec")
    predicted_ratio: np.ndarray = column("float", "Var(averaged p) / Var(p) of the model")
    predicted_ratio_se: np.ndarray = column("float", "propagated from kappa_se")
    measured_ratio: np.ndarray = column("float", "the same from the recorded projection")
    measured_ratio_se: np.ndarray = column("float", "block-jackknife standard error")
    log_ratio: np.ndarray = column("float", "log(measured / predicted ratio)")
    z_ratio: np.ndarray = column("float", "(measured - predicted) / sqrt(se_m^2 + se_p^2)")
    predicted_loss_reduction: np.ndarray = column("float", "0.5 kappa (Var p - Var averaged p) of the model")
    predicted_loss_reduction_se: np.ndarray = column("float", "propagated")
    measured_loss_reduction: np.ndarray = column("float", "the same from the recorded projection (fitted kappa)")
    measured_loss_reduction_se: np.ndarray = column("float", "block-jackknife standard error")


@dataclass(frozen=True, eq=False)
class AutocorrelationTable(Table):
    """``autocorrelation.csv``: one row per (direction, lag)."""

    direction: np.ndarray = column("int", "direction i")
    lag: np.ndarray = column("int", "lag L")
    predicted: np.ndarray = column("float", "rho_L of the model")
    predicted_se: np.ndarray = column("float", "propagated from kappa_se")
    measured: np.ndarray = column("float", "rho_L of the recorded projection")
    measured_se: np.ndarray = column("float", "block-jackknife standard error")
    z: np.ndarray = column("float", "(measured - predicted) / sqrt(se_m^2 + se_p^2)")


@dataclass(frozen=True, eq=False)
class SpectrumTable(Table):
    """``spectrum.csv``: the Hessian's top spectrum (Lanczos) and the fresh-batch curvature along each vector."""

    index: np.ndarray = column("int", "eigenvalue index (0 = largest)")
    eigenvalue: np.ndarray = column("float", "Lanczos eigenvalue of the loss Hessian on the fixed sample")
    residual: np.ndarray = column("float", "relative Ritz residual")
    converged: np.ndarray = column("int", "1 if the residual is below lanczos_tol")
    rayleigh: np.ndarray = column("float", "v^T H_B v averaged over fresh batches")
    rayleigh_se: np.ndarray = column("float", "its standard error")


@dataclass(frozen=True, eq=False)
class ProjectionTable(Table):
    """``projections.csv`` (long format): the recorded series p_{i,t} = v_i^T (theta_{S+t} - theta_S)."""

    t: np.ndarray = column("int", "updates since S")
    direction: np.ndarray = column("int", "direction i")
    projection: np.ndarray = column("float", "v_i^T (theta_{S+t} - theta_S), float64")


@dataclass(frozen=True, eq=False)
class ContinuationTable(Table):
    """``continuation.csv``: the constant-lr continuation's updates."""

    t: np.ndarray = column("int", "updates since S (update S+t)")
    step: np.ndarray = column("int", "absolute step S + t")
    lr: np.ndarray = column("float", "lr of the update")
    train_loss: np.ndarray = column("float", "loss of the training batch of the update, before it")


@dataclass
class LanczosInfo:
    """How Lanczos went: operator applications (HVPs of the whole sample), restarts, basis size, residuals."""

    matvecs: int
    restarts: int
    krylov_dim: int
    tol: float
    converged: int
    max_relative_residual: float
    wall_s: float


@dataclass
class SubspaceLoss:
    """Loss reduction by one kernel summed over the modelled directions: 0.5 sum_i kappa_i (Var p_i - Var p_hat_i)."""

    kernel: str
    predicted: float
    measured: float
    measured_se: float


@dataclass(eq=False)
class LinearFitResult(SideTripResult):
    """Result of :func:`fit_linear_model` (module docstring: the files and their columns)."""

    NAME: ClassVar[str] = "linear-fit"
    TABLES: ClassVar[dict[str, str]] = {
        "directions": "directions.csv", "kernel_table": "kernels.csv", "autocorrelation": "autocorrelation.csv",
        "spectrum": "spectrum.csv", "projection_table": "projections.csv", "continuation": "continuation.csv"}

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    parameters: int
    k: int
    sample_size: int
    bn_mode: str
    hvp_method: str
    kappa_source: str
    noise_batches: int
    curvature_batches: int
    steps: int
    burn_in: int
    lags: int
    kernels: list[str]
    n_blocks: int
    block_length: int
    independent_pool: bool
    eigenvalues: np.ndarray
    noise_std: np.ndarray
    noise_std_se: np.ndarray
    rayleigh: np.ndarray
    rayleigh_se: np.ndarray
    kappa: np.ndarray
    stable: list[bool]
    lanczos: LanczosInfo
    statistic: lf.FitStatistic
    variance_statistic: lf.FitStatistic
    alternative_kappa_source: str
    alternative_statistic: lf.FitStatistic
    alternative_variance_statistic: lf.FitStatistic
    subspace_loss_reduction: list[SubspaceLoss]
    timing: dict  # sgdtraj.timing.Stopwatch.as_dict(): {phase: {wall_s, cpu_s, calls}}
    provenance: dict
    directions: DirectionTable
    kernel_table: KernelTable
    autocorrelation: AutocorrelationTable
    spectrum: SpectrumTable
    projection_table: ProjectionTable
    continuation: ContinuationTable
    # cosines of the principal angles between the top-k directions at S and the end point's Hessian applied to them
    # (subspace_stability; empty for results saved before it was measured)
    subspace_cos: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def projections(self) -> np.ndarray:
        """The recorded series as an (N + 1, k) array (row t = updates since S + burn_in offset)."""
        pt = self.projection_table
        T = int(pt.t.max() - pt.t.min()) + 1 if len(pt) else 0
        out = np.full((T, self.k), np.nan)
        out[pt.t - pt.t.min(), pt.direction] = pt.projection
        return out

    def per_kernel(self, name: str) -> np.ndarray:
        """A column of ``kernels.csv`` as a (k, n_kernels) array (kernels in ``self.kernels`` order)."""
        kt = self.kernel_table
        out = np.full((self.k, len(self.kernels)), np.nan)
        col = {s: j for j, s in enumerate(self.kernels)}
        for i, s, v in zip(kt.direction, kt.kernel, getattr(kt, name)):
            out[int(i), col[str(s)]] = v
        return out

    @staticmethod
    def headline_of(summary):
        st, vs = summary["statistic"], summary["variance_statistic"]
        return jsonable({"statistic": st["value"], "statistic_se": st["se"], "passed": st["passed"],
                         "variance_statistic": vs["value"], "variance_passed": vs["passed"],
                         "top_eigenvalue": summary["eigenvalues"][0], "kappa": summary["kappa"],
                         "lr": summary["lr"], "steps": summary["steps"]})


# ---------------------------------------------------------------------------------------------
# the computation on any model
# ---------------------------------------------------------------------------------------------


class LinearFit(NamedTuple):
    """Everything :func:`fit_model` computed (arrays, no files).

    lanczos: :class:`realnet.hessian.LanczosResult` (eigenvectors (k, P) included). rayleigh: (n_curv, k)
    per-batch Rayleigh quotients. noise: :class:`quadsgd.fitting.NoiseEstimate`. kappa, kappa_se: (k,)
    the curvatures used. prediction / measurement / comparison: the :mod:`quadsgd.fitting` results with
    ``kappa_source``; alternative_prediction / alternative_comparison: with the other estimate.
    prediction_se: {name: array} propagated standard errors of the prediction's fields. projections:
    (N + 1, k) float64. losses: (burn_in + N,) batch losses of the updates. timing: seconds per phase.
    lr, momentum, weight_decay: of the continuation. kappa_source: which estimate. sample_size, parameters.
    """

    lanczos: LanczosResult
    rayleigh: np.ndarray
    noise: lf.NoiseEstimate
    kappa: np.ndarray
    kappa_se: np.ndarray
    kappa_source: str
    prediction: lf.Prediction
    prediction_se: dict
    measurement: lf.Measurement
    comparison: lf.Comparison
    alternative_prediction: lf.Prediction
    alternative_comparison: lf.Comparison
    projections: np.ndarray
    losses: np.ndarray
    trend: np.ndarray
    timing: Stopwatch
    lr: float
    momentum: float
    weight_decay: float
    sample_size: int
    parameters: int
    subspace_cos: np.ndarray | None = None  # (k,) subspace_stability at the continuation's end


def _no_bar(total=None, desc=""):
    class _Bar:
        def update(self, n=1):
            pass

        def set_postfix_str(self, s):
            pass

        def close(self):
            pass
    return _Bar()


def _counted(batches: Iterable, bar) -> Iterator:
    for b in batches:
        yield b
        bar.update(1)


def _prediction_se(kappa, kappa_se, sigma, sigma_se, lr, momentum, kernels, lags, base: lf.Prediction) -> dict:
    """Delta-method standard errors of the prediction: central differences in kappa, analytic in sigma
    (variance, loss and loss reduction scale with sigma^2; ratios, correlations and times do not depend on it)."""
    h = np.maximum(1e-4 * np.abs(kappa), 1e-12)
    up = lf.predict(kappa + h, sigma, lr, momentum, kernels, lags)
    dn = lf.predict(kappa - h, sigma, lr, momentum, kernels, lags)
    ks = np.nan_to_num(np.asarray(kappa_se, dtype=np.float64), nan=0.0)
    ss = np.nan_to_num(np.asarray(sigma_se, dtype=np.float64), nan=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_sigma = np.where(sigma > 0, 2.0 * ss / np.where(sigma > 0, sigma, 1.0), np.nan)
    out = {}
    for name in ("variance", "autocorrelation", "integrated_time", "variance_ratio", "loss", "loss_reduction"):
        b = getattr(base, name)
        shape = (-1,) + (1,) * (b.ndim - 1)
        d_kappa = (getattr(up, name) - getattr(dn, name)) / (2.0 * h.reshape(shape))
        var = (d_kappa * ks.reshape(shape)) ** 2
        if name in ("variance", "loss", "loss_reduction"):
            var = var + (b * rel_sigma.reshape(shape)) ** 2
        out[name] = np.sqrt(var)
    return out


def _trend(P: np.ndarray) -> np.ndarray:
    """Least-squares slope of each column over its index, times the length, over the column's sd."""
    T = P.shape[0]
    t = np.arange(T) - (T - 1) / 2.0
    slope = (t @ (P - P.mean(0))) / (t @ t)
    sd = P.std(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, slope * (T - 1) / np.where(sd > 0, sd, 1.0), np.nan)


class _Spectrum(NamedTuple):
    """Steps 1-3 at theta_S: the Hessian's top-k of the sample, curvature and gradient noise along it."""

    lanczos: LanczosResult  # eigenpairs of the sample's Hessian (eigenvectors (k, P))
    rayleigh: np.ndarray  # (n_curv, k) per-batch Rayleigh quotients v_i^T H_B v_i
    noise: lf.NoiseEstimate  # sigma_i from the projected gradients of fresh batches
    layout: Any  # the flat parameter layout (realnet.hessian)
    loss: Any  # the sample's realnet.hessian.SampleLoss (HVPs at any theta: the subspace check at the end)


class _Continuation(NamedTuple):
    """Step 4: the constant-lr continuation recorded along the eigenvectors."""

    projections: np.ndarray  # (N + 1, k) float64: p_t = v^T (theta_t - theta_S), t from burn_in on
    losses: np.ndarray  # (burn_in + N,) batch losses of the updates


def _spectrum(model, sample, curvature_batches, noise_batches, o: LinearFitOptions, sw: Stopwatch, bar, *,
              batch_size, loss_fn, label_smoothing, device, dtype, plan) -> _Spectrum:
    """Lanczos on the fixed sample, Rayleigh quotients and projected gradients on fresh batches (every batch of
    ``batch_size`` evaluated in the parts of ``plan``)."""
    x_s, y_s = sample
    with sw.phase("sample"):
        L = SampleLoss(model, x_s, y_s, chunk_size=batch_size if o.bn_mode == "batch" else min(batch_size, len(x_s)),
                       bn_mode=o.bn_mode, method=o.hvp_method, dtype=dtype, device=device, loss_fn=loss_fn,
                       label_smoothing=label_smoothing, plan=plan)
    if o.k > L.size:
        raise ConfigError(f"k = {o.k} exceeds the number of trainable parameters ({L.size}); k must be in "
                          f"[1, {L.size}]")
    flat = L.flat
    with sw.phase("lanczos"):
        b = bar(None, "linear-fit: Lanczos (HVPs)")

        def progress(matvecs, res):
            b.update(1)
            b.set_postfix_str(f"max residual {float(np.max(res)):.2e}")

        lz = lanczos(L.operator(), L.size, k=int(o.k), steps=o.lanczos_steps or None, tol=o.lanczos_tol,
                     max_restarts=o.lanczos_restarts, seed=o.seed, dtype=flat.dtype, device=flat.device,
                     progress=progress)
        b.close()
    V = lz.eigenvectors
    with sw.phase("curvature"):
        b = bar(o.curvature_batches, "linear-fit: curvature (k HVPs per batch)")
        it = _counted(_take(curvature_batches, o.curvature_batches, "curvature_batches"), b)
        R = rayleigh_quotients(flat, it, V, method=o.hvp_method)
        b.close()
    with sw.phase("noise"):
        b = bar(o.noise_batches, "linear-fit: gradient noise")
        G = projected_gradients(flat, _take(noise_batches, o.noise_batches, "noise_batches"), V,
                                progress=lambda i: b.update(1))
        b.close()
        noise = lf.noise_estimate(G)
    return _Spectrum(lanczos=lz, rayleigh=R, noise=noise, layout=flat.layout, loss=L)


def _continue(model, layout, V: torch.Tensor, continuation: Iterable, update, burn: int, N: int, lr: float,
              bar) -> _Continuation:
    r"""Run ``burn + N`` updates and record :math:`p_t = V(\theta_t - \theta_S)` (float64) from ``burn`` on."""
    V64 = V.to(torch.float64)
    dev = V64.device
    theta_S = layout.flatten(model, torch.float64).to(dev)
    rec = torch.empty(N + 1, V.shape[0], dtype=torch.float64, device=dev)
    losses = []
    b = bar(burn + N, f"linear-fit: continuation at lr {lr:g}")
    batches = iter(continuation)
    for t in range(burn + N + 1):
        if t >= burn:
            with torch.no_grad():
                rec[t - burn] = V64 @ (layout.flatten(model, torch.float64).to(dev) - theta_S)
        if t == burn + N:
            break
        try:
            x, y = next(batches)
        except StopIteration:
            raise ValueError(f"continuation yielded only {t} batches; burn_in + steps = {burn + N} needed") from None
        losses.append(update(x, y))
        b.update(1)
    b.close()
    return _Continuation(projections=rec.cpu().numpy(),
                         losses=np.array([float(v) for v in losses], dtype=np.float64))


def fit_model(model: nn.Module, sample: tuple[torch.Tensor, torch.Tensor], curvature_batches: Iterable,
              noise_batches: Iterable, continuation: Iterable, update: Callable[[Any, Any], Any], *, lr: float,
              momentum: float, weight_decay: float, batch_size: int, options: LinearFitOptions | None = None,
              loss_fn: Callable | None = None, label_smoothing: float = 0.0, device=None,
              dtype: torch.dtype | None = None, bar: Callable | None = None, plan=None) -> LinearFit:
    r"""Fit the linear model at ``model``'s current parameters, run the continuation, measure and compare.

    model: the network at :math:`\theta_S` (its parameters are changed only by ``update``, after the
    Hessian, curvature and noise estimates, which use a private copy). sample: (inputs, targets) of the
    fixed Hessian sample (a whole number of ``batch_size`` chunks with ``bn_mode="batch"``).
    curvature_batches / noise_batches: iterables of fresh (x, y) batches of ``batch_size`` (at least
    ``options.curvature_batches`` / ``options.noise_batches`` of them; consumed lazily). continuation:
    iterable of (x, y) for the updates (``burn_in + steps`` are taken). update: ``update(x, y)`` performs one
    optimizer step of ``model`` at the constant lr (returns the batch loss, float or 0-d tensor).
    lr, momentum, weight_decay: of that optimizer (PyTorch heavy-ball convention, coupled weight decay).
    options: :class:`LinearFitOptions` (sizes and choices; device options are ignored here). loss_fn,
    label_smoothing, device, dtype: of :class:`realnet.hessian.SampleLoss` (default: cross-entropy).
    plan: None (every sample chunk, curvature and noise batch in one pass) or how each is cut into passes
    (:mod:`realnet.hessian`'s ``plan``, e.g. :class:`realnet.sidetrips._losses.BatchPlan`: BatchNorm over the run's
    per-rank groups and a memory bound; the HVP, gradient and loss of a batch are sums over its parts).
    bar: ``bar(total, desc)`` -> a tqdm-like progress bar (None: silent).
    Returns :class:`LinearFit` (its ``timing``: :class:`sgdtraj.timing.Stopwatch` of the phases sample,
    lanczos, curvature, noise, continuation, analysis).
    """
    o = options if options is not None else LinearFitOptions()
    o.validate(0)
    bar = bar or _no_bar
    lr = float(lr)
    sw = Stopwatch()
    sp = _spectrum(model, sample, curvature_batches, noise_batches, o, sw, bar, batch_size=batch_size,
                   loss_fn=loss_fn, label_smoothing=label_smoothing, device=device, dtype=dtype, plan=plan)
    with sw.phase("continuation"):
        cont = _continue(model, sp.layout, sp.lanczos.eigenvectors, continuation, update, int(o.burn_in),
                         o.resolved_steps(), lr, bar)
    with sw.phase("stability"):
        cos = subspace_stability(sp.lanczos.eigenvectors, sp.loss, sp.layout.flatten(model, sp.loss.flat.dtype))
    with sw.phase("analysis"):
        fit = _analyse(sp, cont, o, lr=lr, momentum=float(momentum), weight_decay=float(weight_decay))
    return fit._replace(timing=sw, sample_size=int(len(sample[0])), subspace_cos=cos)


def subspace_stability(V: torch.Tensor, loss, theta: torch.Tensor) -> np.ndarray:
    r"""Cosines of the principal angles between span(V) (the top-k directions at :math:`\theta_S`, rows of ``V``,
    shape (k, P)) and span(:math:`H(\theta) V^T`), the sample's Hessian at ``theta`` (the continuation's end)
    applied to them: all 1 when the directions still span an invariant subspace of the Hessian there (the top-k
    subspace did not rotate); a cosine c says the subspace has turned by about arccos c (exactly so for a Hessian
    whose top-k eigenvalues lie far above the rest). Shape (k,), descending; ``loss``: a
    :class:`realnet.hessian.SampleLoss` (k HVPs)."""
    theta = theta.to(device=V.device, dtype=V.dtype)
    W = torch.stack([loss.hvp(V[i], theta) for i in range(V.shape[0])], dim=1).to(torch.float64)
    Q, _ = torch.linalg.qr(W)
    return torch.linalg.svdvals(V.to(torch.float64) @ Q).clamp(max=1.0).cpu().numpy()


def _analyse(sp: _Spectrum, cont: _Continuation, o: LinearFitOptions, *, lr: float, momentum: float,
             weight_decay: float) -> LinearFit:
    """Step 5: predictions, measurement and comparison with both curvature estimates."""
    R, lz, noise, proj = sp.rayleigh, sp.lanczos, sp.noise, cont.projections
    kernels = list(o.kernels)
    ray = R.mean(0)
    ray_se = R.std(0, ddof=1) / math.sqrt(R.shape[0])
    kap = {"rayleigh": lf.curvatures(ray, weight_decay), "lanczos": lf.curvatures(lz.eigenvalues, weight_decay)}
    src = o.kappa_source
    alt = [s for s in KAPPA_SOURCES if s != src][0]
    kappa = kap[src]
    pred = lf.predict(kappa, noise.sigma, lr, momentum, kernels, o.lags)
    pse = _prediction_se(kappa, ray_se, noise.sigma, noise.sigma_se, lr, momentum, kernels, o.lags, pred)
    meas = lf.measure(proj, kernels, o.lags, kappa=kappa, n_blocks=o.n_blocks)
    comp = lf.compare(pred, meas, n_boot=o.n_boot, seed=o.seed)
    apred = lf.predict(kap[alt], noise.sigma, lr, momentum, kernels, o.lags)
    acomp = lf.compare(apred, lf.measure(proj, kernels, o.lags, kappa=kap[alt], n_blocks=o.n_blocks),
                       n_boot=o.n_boot, seed=o.seed)
    return LinearFit(lanczos=lz, rayleigh=R, noise=noise, kappa=kappa, kappa_se=ray_se, kappa_source=src,
                     prediction=pred, prediction_se=pse, measurement=meas, comparison=comp,
                     alternative_prediction=apred, alternative_comparison=acomp, projections=proj,
                     losses=cont.losses, trend=_trend(proj), timing=Stopwatch(), lr=lr, momentum=momentum,
                     weight_decay=weight_decay, sample_size=0, parameters=int(sp.layout.size))


def _take(batches: Iterable, n: int, name: str) -> Iterator:
    it = iter(batches)
    for i in range(n):
        try:
            yield next(it)
        except StopIteration:
            raise ValueError(f"{name}: only {i} batches were given, {n} needed") from None


# ---------------------------------------------------------------------------------------------
# result assembly
# ---------------------------------------------------------------------------------------------


def _combined_z(m, m_se, p, p_se):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (m - p) / np.sqrt(np.asarray(m_se) ** 2 + np.nan_to_num(np.asarray(p_se), nan=0.0) ** 2)


def build_result(fit: LinearFit, options: LinearFitOptions, *, run: str, step: int, batch_size: int,
                 provenance: dict | None = None, steps_of: Callable[[np.ndarray], np.ndarray] | None = None,
                 independent_pool: bool = True) -> LinearFitResult:
    """The typed, saveable :class:`LinearFitResult` of a :class:`LinearFit` (tables in the module docstring).

    run, step: what the result describes. batch_size: of the fresh batches. provenance: dict for the summary
    (default: :func:`sgdtraj.provenance.provenance` of the options). steps_of: t -> absolute step (default S + t).
    independent_pool: whether the fresh batches excluded the Hessian sample (recorded in the summary).
    """
    o = options
    pr, m, c, se = fit.prediction, fit.measurement, fit.comparison, fit.prediction_se
    lz, ne = fit.lanczos, fit.noise
    k = len(fit.kappa)
    kernels = list(pr.kernels)
    nk = len(kernels)
    idx = np.arange(k)
    R = fit.rayleigh
    ray, ray_se = R.mean(0), R.std(0, ddof=1) / math.sqrt(R.shape[0])
    top = max(abs(float(lz.eigenvalues[0])), 1e-300)
    edge = 2.0 * (1.0 + fit.momentum)
    with np.errstate(divide="ignore", invalid="ignore"):
        abs_lr = np.abs(c.log_variance_ratio)
        med = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nan for r in abs_lr])
    directions = DirectionTable(
        direction=idx, eigenvalue=lz.eigenvalues, residual=lz.residuals / top, rayleigh=ray, rayleigh_se=ray_se,
        kappa=fit.kappa, kappa_se=fit.kappa_se, lr_kappa=pr.lr_kappa, edge_fraction=pr.lr_kappa / edge,
        stable=pr.stable.astype(int), sigma=ne.sigma, sigma_se=ne.sigma_se, drift=ne.mean, drift_se=ne.mean_se,
        predicted_variance=pr.variance, predicted_variance_se=se["variance"], measured_variance=m.variance,
        measured_variance_se=m.variance_se, log_variance=c.log_variance,
        z_variance=_combined_z(m.variance, m.variance_se, pr.variance, se["variance"]),
        predicted_integrated_time=pr.integrated_time, predicted_integrated_time_se=se["integrated_time"],
        measured_integrated_time=m.integrated_time, measured_integrated_time_se=m.integrated_time_se,
        window=m.window, window_ok=m.window_ok.astype(int), correlation_time=m.correlation_time,
        block_ok=m.block_ok.astype(int), predicted_loss=pr.loss, predicted_loss_se=se["loss"],
        measured_loss=0.5 * fit.kappa * m.variance, trend=fit.trend, median_abs_log_ratio=med)
    kernel_table = KernelTable(
        direction=np.repeat(idx, nk), kernel=kernels * k, predicted_ratio=pr.variance_ratio.ravel(),
        predicted_ratio_se=se["variance_ratio"].ravel(), measured_ratio=m.variance_ratio.ravel(),
        measured_ratio_se=m.variance_ratio_se.ravel(), log_ratio=c.log_variance_ratio.ravel(),
        z_ratio=_combined_z(m.variance_ratio, m.variance_ratio_se, pr.variance_ratio, se["variance_ratio"]).ravel(),
        predicted_loss_reduction=pr.loss_reduction.ravel(), predicted_loss_reduction_se=se["loss_reduction"].ravel(),
        measured_loss_reduction=m.loss_reduction.ravel(), measured_loss_reduction_se=m.loss_reduction_se.ravel())
    L = len(pr.lags)
    autocorrelation = AutocorrelationTable(
        direction=np.repeat(idx, L), lag=np.tile(pr.lags, k), predicted=pr.autocorrelation.ravel(),
        predicted_se=se["autocorrelation"].ravel(), measured=m.autocorrelation.ravel(),
        measured_se=m.autocorrelation_se.ravel(),
        z=_combined_z(m.autocorrelation, m.autocorrelation_se, pr.autocorrelation, se["autocorrelation"]).ravel())
    spectrum = SpectrumTable(index=idx, eigenvalue=lz.eigenvalues, residual=lz.residuals / top,
                             converged=lz.converged.astype(int), rayleigh=ray, rayleigh_se=ray_se)
    T = fit.projections.shape[0]
    burn = int(o.burn_in)
    t_rec = np.arange(T) + burn
    projection_table = ProjectionTable(t=np.repeat(t_rec, k), direction=np.tile(idx, T),
                                       projection=fit.projections.ravel())
    t_upd = np.arange(len(fit.losses))
    steps_of = steps_of or (lambda t: int(step) + t)
    continuation = ContinuationTable(t=t_upd, step=steps_of(t_upd), lr=np.full(len(t_upd), fit.lr),
                                     train_loss=fit.losses)
    s = pr.stable
    sub = []
    for j, spec in enumerate(kernels):
        meas_j = m.loss_reduction[s, j]
        sub.append(SubspaceLoss(kernel=spec, predicted=float(np.sum(pr.loss_reduction[s, j])),
                                measured=float(np.sum(meas_j)),
                                measured_se=float(np.sqrt(np.sum(m.loss_reduction_se[s, j] ** 2)))))
    if provenance is None:
        provenance = _provenance(seed=int(o.seed), config={"sidetrip": LinearFitResult.NAME, "run": str(run),
                                                           "step": int(step), "options": dataclasses.asdict(o)})
    alt = fit.alternative_comparison
    return LinearFitResult(
        run=str(run), step=int(step), lr=fit.lr, momentum=fit.momentum, weight_decay=fit.weight_decay,
        batch_size=int(batch_size), parameters=fit.parameters, k=k, sample_size=fit.sample_size, bn_mode=o.bn_mode,
        hvp_method=o.hvp_method, kappa_source=fit.kappa_source, noise_batches=int(ne.n_batches),
        curvature_batches=int(R.shape[0]), steps=int(m.steps), burn_in=burn, lags=int(L), kernels=kernels,
        n_blocks=int(m.n_blocks), block_length=int(m.block_length), independent_pool=bool(independent_pool),
        eigenvalues=np.asarray(lz.eigenvalues, dtype=np.float64), noise_std=ne.sigma, noise_std_se=ne.sigma_se,
        rayleigh=ray, rayleigh_se=ray_se, kappa=fit.kappa, stable=[bool(v) for v in pr.stable],
        lanczos=LanczosInfo(matvecs=int(lz.matvecs), restarts=int(lz.restarts), krylov_dim=int(lz.krylov_dim),
                            tol=float(o.lanczos_tol), converged=int(np.sum(lz.converged)),
                            max_relative_residual=float(np.max(lz.residuals) / top), wall_s=float(lz.wall_s)),
        statistic=c.statistic, variance_statistic=c.variance_statistic,
        alternative_kappa_source=[x for x in KAPPA_SOURCES if x != fit.kappa_source][0],
        alternative_statistic=alt.statistic,
        alternative_variance_statistic=alt.variance_statistic, subspace_loss_reduction=sub,
        timing=fit.timing.as_dict(), provenance=provenance, directions=directions, kernel_table=kernel_table,
        autocorrelation=autocorrelation, spectrum=spectrum, projection_table=projection_table,
        continuation=continuation,
        subspace_cos=np.asarray(fit.subspace_cos if fit.subspace_cos is not None else [], dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# the side-trip
# ---------------------------------------------------------------------------------------------


def fit_linear_model(run_dir, step: int, out_dir, options: LinearFitOptions | None = None,
                     **overrides) -> LinearFitResult:
    """Fit the paper's linear model at checkpoint ``step`` of ``run_dir`` and check its predictions against a
    constant-lr continuation (module docstring); writes ``out_dir`` and returns the typed result."""
    return run_sidetrip(SIDETRIP, run_dir, step, out_dir, options, overrides)


def _seeds(*entropy: int, n: int) -> list[int]:
    return [int(v) for v in np.random.SeedSequence([int(e) for e in entropy]).generate_state(n, np.uint64)
            >> np.uint64(1)]


def _examples(ctx: RunContext, idx: torch.Tensor, seed: int, tag: int,
              host: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Training examples ``idx`` (augmented as in the run, with fixed seeds), as one (x, y) pair on the device,
    or in host memory with ``host`` (built one batch at a time on the device)."""
    B = ctx.cfg.batch_size
    keys = [(idx[i:i + B], _seeds(seed, tag, i, n=len(idx[i:i + B]))) for i in range(0, len(idx), B)]
    batches = ctx.data.train.iterate(keys, train=ctx.cfg.augment, device=ctx.rt.device)
    xs, ys = zip(*(((x.cpu(), y.cpu()) if host else (x, y)) for x, y in batches))
    return torch.cat(xs), torch.cat(ys)


def _fresh(ctx: RunContext, pool: torch.Tensor, n: int, seed: int, tag: int) -> Iterator:
    """``n`` batches of the run's batch size drawn from ``pool`` (each without replacement), lazily."""
    B = ctx.cfg.batch_size
    g = torch.Generator().manual_seed(int(_seeds(seed, tag, n=1)[0] % (2 ** 63)))

    def keys():
        for i in range(n):
            idx = pool[torch.randperm(len(pool), generator=g)[:B]]
            yield idx, _seeds(seed, tag, 1, i, n=B)
    return ctx.data.train.iterate(keys(), train=ctx.cfg.augment, device=ctx.rt.device)


def _compute(ctx: RunContext, S: int, opts: LinearFitOptions) -> LinearFitResult:
    cfg = ctx.cfg
    B = int(cfg.batch_size)
    n_train = len(ctx.data.train)
    size = opts.sample_size or min(16, n_train // B) * B
    if opts.bn_mode == "batch" and size % B:
        raise ConfigError(f"sample_size ({size}) must be a multiple of the run's batch size ({B}) with bn_mode='batch' "
                          f"(each chunk is one BatchNorm batch); use sample_size = {max(1, size // B) * B}")
    if not 1 <= size <= n_train:
        raise ConfigError(f"sample_size must be in [1, {n_train}] (the training split has {n_train} examples); "
                          f"got {size}")
    lr = ctx.lr(S, opts.lr)
    branch = ctx.branch(S)
    plan = ctx.batch_plan(opts)  # the run's per-rank BatchNorm groups (known from the checkpoint) and the bound
    plan.part_size(B, opts.bn_mode == "batch")  # ConfigError naming micro_batch or the ranks before any work
    P = sum(p.numel() for p in branch.model.parameters() if p.requires_grad)
    if opts.k > P:
        raise ConfigError(f"k = {opts.k} exceeds the number of trainable parameters ({P}); k must be in [1, {P}]")
    seed = SAMPLE_SEED + int(opts.seed)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    sample_idx, rest = perm[:size], perm[size:]
    independent = len(rest) >= B
    pool = rest if independent else perm
    sample = _examples(ctx, sample_idx, seed, 0, host=bool(opts.micro_batch))  # bounded: in host memory
    N = opts.resolved_steps()
    fit = fit_model(branch.model, sample, _fresh(ctx, pool, opts.curvature_batches, seed, _CURVATURE),
                    _fresh(ctx, pool, opts.noise_batches, seed, _NOISE), ctx.batches(S, S + opts.burn_in + N),
                    lambda x, y: branch.sgd_step(x, y, lr), lr=lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, batch_size=B, options=opts, label_smoothing=cfg.label_smoothing,
                    device=ctx.rt.device, bar=ctx.bar, plan=plan)
    prov = _provenance(seed=cfg.seed, config={"sidetrip": LinearFitResult.NAME, "run": str(ctx.run_dir.resolve()),
                                              "step": int(S), "options": dataclasses.asdict(opts)},
                       data_seed=cfg.data_seed, device=str(ctx.rt.device),
                       precision="bf16" if ctx.rt.amp_dtype else "fp32",
                       hvp_precision=str(fit.lanczos.eigenvectors.dtype))
    return build_result(fit, opts, run=str(ctx.run_dir), step=S, batch_size=B, provenance=prov,
                        independent_pool=independent)


SIDETRIP = SideTrip(name="linear-fit", options=LinearFitOptions, compute=_compute, result=LinearFitResult,
                    doc="fit the paper's linear model (top-k Hessian directions, gradient noise, lr, momentum) and "
                        "compare its predictions with a constant-lr continuation (App. A.1)",
                    function=fit_linear_model)
