r"""Simulate and test: :func:`check_stationary`, :func:`check_curve` (return a :class:`CheckResult`) and
their asserting twins :func:`assert_stationary_matches`, :func:`assert_curve_matches`.

A check validates its arguments (:mod:`._args`), derives the simulation seed from every parameter
(the same case always gets the same verdict), runs :func:`quadsgd.simulate`, applies the tests of
:mod:`.statistics` per kernel (one :class:`_KernelOutcome` each), combines kernels by Bonferroni and
has :mod:`.messages` write the message.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from sgdtraj.arguments import check_array, check_choice, check_int, check_lr_schedule, check_real

from ..kernels import AveragingKernel, Last
from ..model import LinearModel
from . import messages
from ._args import as_prediction, check_common, split_predictions
from .mixing import burn_in_steps, kernel_time, mixing_time
from .statistics import bonferroni, hotelling, mean_z_test, two_sided_normal_p, variance_test, wishart_test

__all__ = ["CheckResult", "check_stationary", "check_curve", "assert_stationary_matches", "assert_curve_matches"]

#: default step budget of a stationary check (burn-in) per simulation method
_MAX_STEPS = {"exact": 10**6, "step": 50_000}
#: relative asymmetry above which a predicted covariance fails outright
_SYM_RTOL = 1e-8
#: relative tolerance of a deterministic value (standard error 0)
_DET_RTOL = 1e-8


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


class _KernelOutcome(NamedTuple):
    """The test of one kernel's prediction: p-value, statistic, what was tested, largest discrepancy."""

    kernel: AveragingKernel
    kind: str  # "scalar", "variances", "covariance" or "curve"
    predicted: np.ndarray
    pvalue: float
    statistic: float
    text: str
    worst: dict


# ============================================================================ seeds
def _seed_key(k: AveragingKernel) -> str:
    """The kernel's part of the simulation seed: its ``repr``.

    Kept from the single-module version so that a case keeps its simulation seed, hence its verdict,
    across versions (a test suite that passed keeps passing); only ``Kernel`` instances changed key
    (that version wrote their weights as a list, bypassing their ``repr``).
    """
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


def _combine_kernels(per: list[_KernelOutcome]) -> tuple[np.ndarray, int, float]:
    """(kernel p-values, index of the smallest, Bonferroni p over kernels)."""
    kp = np.array([x.pvalue for x in per])
    j = int(np.argmin(kp))
    return kp, j, bonferroni(kp)


# ============================================================================ stationary check
def _stationary_outcome(k, kind, P, X, model, quantity, combine, chains) -> _KernelOutcome:
    """Test one kernel's stationary prediction P against its final averaged iterates X (chains, d)."""
    if kind == "scalar":
        if quantity is None:
            H = np.asarray(model.loss_matrix(), dtype=np.float64)
            vals = 0.5 * (np.sum(X * X * H, axis=1) if H.ndim == 1 else np.einsum("ci,ij,cj->c", X, H, X))
            what = "the loss 0.5 x^T H x"
        else:
            vals = np.asarray(quantity(X), dtype=np.float64)
            if vals.shape != (chains,):
                raise ValueError(f"quantity must return shape (chains,) = ({chains},), got {vals.shape}")
            what = f"quantity {getattr(quantity, '__name__', repr(quantity))}"
        pred = float(P)
        r = mean_z_test(vals, pred, rtol=_DET_RTOL)
        return _KernelOutcome(k, kind, P, r.pvalue, 0.0 if r.deterministic else r.z,
                              messages.mean_text(r, what, _DET_RTOL), messages.mean_worst(r, pred, what))
    if kind == "variances":
        if np.any(P <= 0):
            j = int(np.argmin(P))
            return _KernelOutcome(k, kind, P, 0.0, 0.0, f"predicted variance {j} is {P[j]:.6g} <= 0 (no variance "
                                  f"can be): failed without simulation statistics",
                                  dict(where=f"Var[{j}]", predicted=float(P[j]), simulated=float(np.mean(X[:, j] ** 2)),
                                       z=-math.inf, relative_error=None))
        r = variance_test(X, P, combine)
        return _KernelOutcome(k, kind, P, r.pvalue, r.statistic, messages.variance_text(r),
                              messages.variance_worst(r, P))
    scale = float(np.max(np.abs(P))) or 1.0
    asym = np.abs(P - P.T)
    if asym.max() > _SYM_RTOL * scale:
        a, b = np.unravel_index(int(np.argmax(asym)), asym.shape)
        S = X.T @ X / chains
        return _KernelOutcome(k, kind, P, 0.0, float(asym.max() / scale),
                              f"predicted covariance is not symmetric (no covariance is): |P[{a},{b}] - P[{b},{a}]| = "
                              f"{asym[a, b]:.4g} = {asym[a, b] / scale:.3g} x max|P| > {_SYM_RTOL:g}",
                              dict(where=f"P[{a},{b}] = {P[a, b]:.6g} but P[{b},{a}] = {P[b, a]:.6g}; Cov[{a}, {b}]",
                                   predicted=float(P[a, b]), simulated=float(S[a, b]), z=None, relative_error=None))
    P = 0.5 * (P + P.T)
    w = np.linalg.eigvalsh(P)
    if w[0] <= 0:
        return _KernelOutcome(k, kind, P, 0.0, float(w[0]),
                              f"predicted covariance is not positive definite (smallest eigenvalue {w[0]:.4g}; a "
                              f"stationary covariance of this model is)",
                              dict(where="smallest eigenvalue", predicted=float(w[0]),
                                   simulated=float(np.linalg.eigvalsh(X.T @ X / chains)[0]), z=-math.inf,
                                   relative_error=None))
    N = X.shape[0]
    r = wishart_test(X, P, combine)
    return _KernelOutcome(k, kind, P, r.pvalue, r.statistic, messages.wishart_text(r),
                          messages.covariance_worst(X.T @ X / N, P, N))


def check_stationary(predicted, model, kernel=Last(), *, chains=20000, alpha=1e-6, seed=0,
                     method="exact", quantity=None, burn_in=40.0, max_steps=None,
                     combine="sidak") -> CheckResult:
    r"""Simulate and test a predicted stationary covariance, variance vector or scalar; never raises on a mismatch.

    Parameters
    ----------
    predicted : float, (d,) or (d, d) array -- or a list of them, one per kernel
        (d, d): the stationary covariance of the averaged iterate (exact Wishart test);
        (d,): its diagonal (per-coordinate chi-square); scalar: the stationary mean of
        ``quantity`` (z-test). Statistics: docs/testing-formulas.md.
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
    ks, alpha, chains = check_common(model, kernel, alpha, chains, method)
    check_choice("combine", combine, ("sidak", "fisher"))
    burn_in = check_real("burn_in", burn_in, 0.0, low_open=True)
    if quantity is not None and not callable(quantity):
        raise ValueError(f"quantity must be a callable (N, d) -> (N,) or None, got {quantity!r}")
    seed = check_int("seed", seed, 0)
    d = model.dim
    preds = [as_prediction(p, d, "" if isinstance(kernel, AveragingKernel) else f"[{i}]")
             for i, p in enumerate(split_predictions(predicted, kernel, ks))]
    if any(kind == "covariance" for kind, _ in preds) and chains <= d:
        raise ValueError(f"chains must be > d = {d} for a covariance test, got {chains}")
    budget = _MAX_STEPS[method] if max_steps is None else check_int("max_steps", max_steps, 1)
    tau = mixing_time(model)
    steps = burn_in_steps(model, ks, burn_in)
    if not (steps <= budget):
        kt = max((kernel_time(k)[0] for k in ks))
        raise ValueError(
            f"the model mixes too slowly for the step budget: mixing time {tau:.4g} steps"
            f"{f' (EMA memory {kt:.4g} steps)' if kt > tau else ''}, so the burn-in of {burn_in:g} "
            f"mixing times + kernel support needs {steps} steps > max_steps = {budget} (method "
            f"{method!r}); raise max_steps (method='exact' costs the same for any burn-in) or use a "
            f"faster-mixing model (larger lr * curvature; qs.testing.models(max_mixing=...))")
    from ..simulation import simulate

    sim_seed = _derive_seed("stationary", _model_key(model), tuple(_seed_key(k) for k in ks),
                            chains, method, steps, seed)
    res = simulate(model, steps, chains, tuple(ks), u0=np.zeros(d), record_every=steps, seed=sim_seed,
                   method=method)
    per = [_stationary_outcome(k, kind, P, np.asarray(res.final[i], dtype=np.float64), model, quantity, combine,
                               chains)
           for i, (k, (kind, P)) in enumerate(zip(ks, preds))]
    kp, j, p = _combine_kernels(per)
    passed = p > alpha
    o = per[j]
    what = {"scalar": "stationary mean", "variances": "stationary variances",
            "covariance": "stationary covariance"}[o.kind]
    lines, rep = messages.head_lines(passed, what, p, alpha, o.text, ks, kp[j], o.worst, model, o.kernel)
    lines.append(f"  simulation: {chains} independent chains from u0 = 0, method {method!r}, {steps} steps "
                 f"(burn-in {burn_in:g} mixing times + kernel support), seed {sim_seed} (from seed={seed})")
    if o.kind != "scalar":
        X = np.asarray(res.final[j], dtype=np.float64)
        sim = (X.T @ X / chains) if o.kind == "covariance" else np.mean(X * X, axis=0)
        lines.append(f"  predicted: {messages.arr(o.predicted)}")
        lines.append(f"  simulated: {messages.arr(sim)} (second moments, mean known 0)")
    lines.append(messages.reproduce_line(rep, o.kernel))
    return CheckResult(passed=passed, pvalue=p, alpha=alpha, test=o.text, statistic=float(o.statistic),
                       worst=o.worst, message="\n".join(lines), seed=sim_seed, chains=chains, steps=steps,
                       method=method, kernel_pvalues=kp)


def assert_stationary_matches(predicted, model, kernel=Last(), *, chains=20000, alpha=1e-6, seed=0,
                              method="exact", quantity=None, burn_in=40.0, max_steps=None,
                              combine="sidak") -> CheckResult:
    r"""Assert that ``predicted`` is the stationary covariance / variances / mean of the averaged iterate.

    Same arguments as :func:`check_stationary` (statistics in docs/testing-formulas.md: the
    (d, d) test is an exact Wishart test whose false-alarm rate is exactly ``alpha``). Raises
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


# ============================================================================ curve check
def _curve_outcome(k, pred, sim, se, chain_loss, times, combine, chains) -> _KernelOutcome:
    """Test one kernel's predicted curve (R,) against the mean loss over chains at the records."""
    R = times.size
    det = se <= 1e-12 * np.maximum(np.abs(sim), np.abs(pred))
    bad_det = det & ~(np.abs(sim - pred) <= _DET_RTOL * np.maximum(np.abs(pred), np.abs(sim)) + 1e-300)
    z = np.zeros(R)
    z[~det] = (sim[~det] - pred[~det]) / se[~det]
    if bad_det.any():
        r = int(np.flatnonzero(bad_det)[0])
        return _KernelOutcome(k, "curve", pred, 0.0, math.inf,
                              f"record t = {times[r]} is deterministic (standard error 0) and differs "
                              f"from the prediction by more than relative {_DET_RTOL:g}",
                              messages.curve_worst(times, r, pred, sim, se, math.inf))
    n = int((~det).sum())
    if n == 0:
        return _KernelOutcome(k, "curve", pred, 1.0, 0.0,
                              f"all {R} records deterministic (standard error 0), equal within relative "
                              f"{_DET_RTOL:g}", messages.curve_worst(times, 0, pred, sim, se, 0.0))
    r = int(np.argmax(np.abs(z)))
    worst = messages.curve_worst(times, r, pred, sim, se, z[r])
    if combine == "bonferroni":
        pz = two_sided_normal_p(z[~det])
        p = float(min(1.0, n * pz.min()))
        return _KernelOutcome(k, "curve", pred, p, float(abs(z[r])),
                              messages.bonferroni_curve_text(n, abs(z[r]), pz.min()), worst)
    h = hotelling(chain_loss[:, ~det] - pred[~det])
    return _KernelOutcome(k, "curve", pred, h.pvalue, h.T2, messages.hotelling_text(h, n, chains, abs(z[r])), worst)


def check_curve(predicted, model, kernel, steps, *, chains=10000, alpha=1e-6, lr=None, u0=None,
                record_every=1, seed=0, method="step", combine="bonferroni",
                max_steps=100_000) -> CheckResult:
    r"""Simulate and test a predicted expected-loss curve; never raises on a mismatch.

    Parameters
    ----------
    predicted : array (steps + 1,) -- the curve at t = 0..steps, like :func:`quadsgd.expected_loss`
        -- or (R,) at the record times ``quadsgd.simulation.record_times(steps, record_every)``;
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
    ks, alpha, chains = check_common(model, kernel, alpha, chains, method)
    check_choice("combine", combine, ("bonferroni", "hotelling"))
    budget = check_int("max_steps", max_steps, 1)
    steps = check_int("steps", steps, 1)
    if steps > budget:
        raise ValueError(f"steps = {steps} exceeds the step budget max_steps = {budget}")
    record_every = check_int("record_every", record_every, 1)
    if record_every > steps:
        raise ValueError(f"record_every must be in [1, steps = {steps}], got {record_every}")
    seed = check_int("seed", seed, 0)
    from ..simulation import record_times, simulate

    times = record_times(steps, record_every)
    R = times.size
    preds = []
    for i, p in enumerate(split_predictions(predicted, kernel, ks)):
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
    # validated here with the simulator's own rules (the arrays also enter the derived seed)
    u0a = np.ones(model.dim) if u0 is None else check_array("u0", u0, shape=(model.dim,))
    if lr is not None:
        check_lr_schedule(lr, steps, model.lr_bound)
    lra = None if lr is None else np.asarray(lr, dtype=np.float64)
    sim_seed = _derive_seed("curve", _model_key(model), tuple(_seed_key(k) for k in ks), chains, method,
                            steps, record_every, u0a, lra, seed)
    res = simulate(model, steps, chains, tuple(ks), lr=lr, u0=u0, record_every=record_every, seed=sim_seed,
                   method=method, per_chain_loss=combine == "hotelling")
    per = [_curve_outcome(k, pred, res.loss[i], res.loss_sem[i],
                          res.chain_loss[i] if combine == "hotelling" else None, times, combine, chains)
           for i, (k, pred) in enumerate(zip(ks, preds))]
    kp, j, p = _combine_kernels(per)
    passed = p > alpha
    o = per[j]
    if lra is None:
        lrtxt = f"constant {model.lr:.6g}"
    elif lra.ndim == 0:
        lrtxt = f"constant {float(lra):.6g}"
    else:
        lrtxt = f"schedule {messages.arr(lra, 4)}"
    lines, rep = messages.head_lines(passed, "loss curve", p, alpha, o.text, ks, kp[j], o.worst, model, o.kernel)
    lines.append(f"  simulation: {chains} chains, {steps} steps, record_every {record_every} ({R} records), method "
                 f"{method!r}, u0 = {messages.arr(u0a, 4)}, lr {lrtxt}, seed {sim_seed} (from seed={seed})")
    lines.append(messages.reproduce_line(rep, o.kernel))
    return CheckResult(passed=passed, pvalue=p, alpha=alpha, test=o.text, statistic=float(o.statistic),
                       worst=o.worst, message="\n".join(lines), seed=sim_seed, chains=chains, steps=steps,
                       method=method, kernel_pvalues=kp)


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
