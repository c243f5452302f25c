"""The kernel protocol of quadsgd.kernels: spec grammar, tracking, psi / paper_factor / cumulative against
brute-force sums -- and a kernel defined only in this module working with the theory unchanged.

Ground truths are written out here or in tests/groundtruth.py (explicit weights, autocorrelations by
double sums, generating functions by summing powers, shift registers, Lyapunov solves).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quadsgd as qs
from quadsgd._heavy_ball import companion, companion_shifted_inverse
from quadsgd._linalg import Ops, Transition
from quadsgd.kernels import AveragingKernel, Tracking, kernel_classes, kernel_from_params, parse_kernel

from .groundtruth import brute_expected_loss, brute_stationary_cov, kernel_weights

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUILTIN = {"last", "twopoint", "npoint", "swa", "ema", "kernel"}


# ============================================================================================ strategies
def _normalised(ws):
    w = np.asarray(ws, dtype=np.float64)
    if w.sum() < 0.1:
        w[-1] += 0.1
    return qs.Kernel(w / w.sum())


def kernel_strategy(large=False):
    """Every built-in kernel type; ``large`` widens the size parameters (for the spec grammar only)."""
    S = 10**9 if large else 60
    return st.one_of(
        st.just(qs.Last()),
        st.builds(qs.TwoPoint, st.integers(1, S)),
        st.builds(qs.NPoint, st.integers(2, 10**4 if large else 8), st.integers(1, S // 8)),
        st.builds(qs.SWA, st.integers(1, S)),
        st.builds(qs.EMA, st.floats(0.0, 1.0, exclude_min=True) if large else st.floats(0.05, 1.0)),
        st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40 if large else 12).map(_normalised),
    )


SPEC_STRATEGIES = {  # one per built-in spec name (checked against the registry below)
    "last": st.just(qs.Last()),
    "twopoint": st.builds(qs.TwoPoint, st.integers(1, 10**9)),
    "npoint": st.builds(qs.NPoint, st.integers(2, 10**4), st.integers(1, 10**9)),
    "swa": st.builds(qs.SWA, st.integers(1, 10**9)),
    "ema": st.builds(qs.EMA, st.floats(0.0, 1.0, exclude_min=True)),
    "kernel": st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40).map(_normalised),
}


# ============================================================================================ brute force
def dense_weights(kernel, ema_tol=1e-18):
    """mu_0..mu_{L-1}; EMA truncated where its tail is below ema_tol (tests/groundtruth.py's rule)."""
    return kernel_weights(kernel, ema_tol)


def brute_autocorrelation(mu):
    L = len(mu)
    return np.array([np.dot(mu[:L - d], mu[d:]) for d in range(L)])  # C_d = sum_k mu_k mu_{k+d}


def brute_psi_scalar(kernel, g):
    """C_0/2 + sum_d C_d g^d, term by term."""
    c = brute_autocorrelation(dense_weights(kernel))
    out = 0.5 * c[0] * np.ones_like(g)
    p = np.ones_like(g)
    for cd in c[1:]:
        p = p * g
        out = out + cd * p
    return out


def brute_psi_matrix(kernel, M):
    """C_0/2 I + sum_d C_d M^d for a stack of matrices, by repeated products."""
    c = brute_autocorrelation(dense_weights(kernel))
    I = np.broadcast_to(np.eye(M.shape[-1]), M.shape)
    out = 0.5 * c[0] * I
    P = np.array(I)
    for cd in c[1:]:
        P = P @ M
        out = out + cd * P
    return out


def random_matrices(rng, n, radius, symmetric=False):
    """n random 2x2 matrices of spectral radius ``radius`` (symmetric or general, often non-normal)."""
    A = rng.normal(size=(n, 2, 2))
    if symmetric:
        A = A + np.swapaxes(A, 1, 2)
    rho = np.max(np.abs(np.linalg.eigvals(A)), axis=1)
    return A * (radius / rho)[:, None, None]


def close(a, b, rtol):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = np.max(np.abs(b))
    assert np.max(np.abs(a - b)) <= rtol * scale, (np.max(np.abs(a - b)) / scale)


# ============================================================================================ weights
def test_weights_of_each_builtin_written_out():
    np.testing.assert_array_equal(qs.Last().weights(), [1.0])
    np.testing.assert_array_equal(qs.TwoPoint(3).weights(), [0.5, 0, 0, 0.5])
    np.testing.assert_allclose(qs.NPoint(3, 2).weights(), [1 / 3, 0, 1 / 3, 0, 1 / 3], rtol=1e-15)
    np.testing.assert_array_equal(qs.SWA(4).weights(), [0.25] * 4)
    np.testing.assert_array_equal(qs.EMA(0.5).weights(4), [0.5, 0.25, 0.125, 0.0625])
    np.testing.assert_array_equal(qs.Kernel([0.5, 0.5, 0.0]).weights(), [0.5, 0.5])  # trailing zeros trimmed
    assert [k.support for k in (qs.Last(), qs.TwoPoint(3), qs.NPoint(3, 2), qs.SWA(4))] == [1, 4, 5, 4]
    assert qs.EMA(0.5).support == np.inf


# ============================================================================================ spec grammar
def test_registry_has_a_strategy_for_every_builtin_kernel():
    reg = kernel_classes()
    builtin = {name for name, cls in reg.items() if cls.__module__ == "quadsgd.kernels"}
    assert builtin == BUILTIN == set(SPEC_STRATEGIES)
    assert reg["ema"] is qs.EMA and reg["twopoint"] is qs.TwoPoint and reg["kernel"] is qs.Kernel


@settings(max_examples=60, deadline=None)
@given(st.one_of(*SPEC_STRATEGIES.values()))
def test_spec_round_trip(kernel):
    spec = str(kernel)
    back = parse_kernel(spec)
    assert type(back) is type(kernel)
    assert back == kernel, (spec, back, kernel)
    assert str(back) == spec
    assert parse_kernel(spec.upper()) == kernel  # names are case-insensitive (numbers unaffected)
    assert parse_kernel(kernel) is kernel
    params = {p: kernel.weights() if p == "weights" else getattr(kernel, p) for p in type(kernel).params}
    assert kernel_from_params(type(kernel).__name__, params) == kernel


@pytest.mark.parametrize("kernel, spec", [
    (qs.Last(), "last"), (qs.EMA(0.02), "ema:0.02"), (qs.TwoPoint(100), "twopoint:100"),
    (qs.NPoint(3, 50), "npoint:3:50"), (qs.SWA(200), "swa:200"), (qs.Kernel([0.5, 0.3, 0.2]), "kernel:0.5,0.3,0.2"),
    (qs.EMA(1), "ema:1.0"),
])
def test_spec_strings_as_documented(kernel, spec):
    assert str(kernel) == spec
    assert parse_kernel(spec) == kernel


@pytest.mark.parametrize("spec, kernel", [
    ("SGD", qs.Last()), ("last_iterate", qs.Last()), ("Two_Point:5", qs.TwoPoint(5)), ("two-point:5", qs.TwoPoint(5)),
    ("n_point:3:2", qs.NPoint(3, 2)), ("NPoint:3:2", qs.NPoint(3, 2)), (" ema:0.5 ", qs.EMA(0.5)),
    ("twopoint:10.0", qs.TwoPoint(10)), ("kernel:0.5, 0.5", qs.Kernel([0.5, 0.5])),
])
def test_aliases_and_class_names(spec, kernel):
    assert parse_kernel(spec) == kernel


@pytest.mark.parametrize("spec, length, kernel", [
    ("twopoint", 100, qs.TwoPoint(100)), ("swa", 200, qs.SWA(200)), ("npoint:3", 100, qs.NPoint(3, 50)),
    ("npoint:5", 4, qs.NPoint(5, 1)), ("npoint:4", 10, qs.NPoint(4, 3)),
    ("ema:0.1", 100, qs.EMA(0.1)), ("twopoint:7", 100, qs.TwoPoint(7)), ("npoint:3:2", 100, qs.NPoint(3, 2)),
])
def test_templates_filled_by_length(spec, length, kernel):
    assert parse_kernel(spec, length=length) == kernel


@pytest.mark.parametrize("spec, length, match", [
    ("", None, "non-empty string"),
    (None, None, "non-empty string"),
    (3, None, "non-empty string"),
    ("gaussian:1", None, r"unknown kernel 'gaussian'; known: .*ema:a"),
    ("ema:abc", None, r"bad kernel spec 'ema:abc' \('abc' is not a number\); forms: "),
    ("ema:0", None, r"bad kernel spec 'ema:0' \(decay must be in \(0, 1\]"),
    ("ema:1.5", None, "decay"),
    ("ema", None, r"ema takes 1 argument\(s\) \('decay',\)"),
    ("twopoint:0", None, r"'twopoint:0' \(delta must be an integer >= 1"),
    ("twopoint:1:2", None, "twopoint takes 1 argument"),
    ("twopoint", None, "twopoint takes 1 argument"),
    ("swa:2.5", None, "window must be an integer"),
    ("npoint:1:3", None, "n must be an integer >= 2"),
    ("npoint:5", None, "npoint takes 2 argument"),
    ("npoint:5", 3, r"npoint:5 needs a length >= 4, got 3"),
    ("kernel:0.5,0.4", None, "sum to 1"),
    ("kernel:", None, "non-empty"),
    ("kernel:0.5,-0.5,1", None, "non-negative"),
])
def test_bad_specs_say_what_is_wrong(spec, length, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_kernel(spec, length=length)
    if isinstance(spec, str) and spec and not spec.startswith("gaussian"):
        assert "forms: last, twopoint:D, npoint:n:D, swa:W, ema:a, kernel:w0,w1,..." in str(e.value)


def test_kernel_from_params_and_unknown_names():
    assert kernel_from_params("two_point", {"delta": 5, "other": 1}) == qs.TwoPoint(5)
    assert kernel_from_params("NPoint", {"n": 3, "delta": 2}) == qs.NPoint(3, 2)
    assert kernel_from_params("ema", {"decay": 0.1}) == qs.EMA(0.1)
    assert kernel_from_params("last", {}) == qs.Last()
    with pytest.raises(ValueError, match="unknown kernel 'cyclic'"):
        kernel_from_params("cyclic", {})


# ============================================================================================ tracking
@pytest.mark.parametrize("kernel, kind, decay, stride, n, weights, window", [
    (qs.Last(), "last", 0.0, 1, 1, None, 0),
    (qs.SWA(1), "last", 0.0, 1, 1, None, 0),
    (qs.Kernel([1.0]), "last", 0.0, 1, 1, None, 0),
    (qs.SWA(5), "points", 0.0, 1, 5, None, 5),
    (qs.TwoPoint(7), "points", 0.0, 7, 2, None, 0),
    (qs.TwoPoint(1), "points", 0.0, 1, 2, None, 2),
    (qs.NPoint(3, 4), "points", 0.0, 4, 3, None, 0),
    (qs.NPoint(3, 1), "points", 0.0, 1, 3, None, 3),
    (qs.EMA(0.1), "geometric", 0.1, 1, 1, None, 0),
    (qs.EMA(1.0), "geometric", 1.0, 1, 1, None, 0),
    (qs.Kernel([0.5, 0.0, 0.5]), "points", 0.0, 1, 3, [0.5, 0.0, 0.5], 0),
    (qs.Kernel([0.25] * 4), "points", 0.0, 1, 4, [0.25] * 4, 4),
    (qs.Kernel([0.7, 0.3]), "points", 0.0, 1, 2, [0.7, 0.3], 0),
])
def test_tracking_of_every_kernel(kernel, kind, decay, stride, n, weights, window):
    t = kernel.tracking()
    assert isinstance(t, Tracking)
    assert (t.kind, t.decay, t.stride, t.n) == (kind, decay, stride, n)
    if weights is None:
        assert t.weights is None
    else:
        np.testing.assert_array_equal(t.weights, weights)
    assert t.uniform_window == window
    assert t.weight_array().shape == (n,) and t.weight_array().sum() == pytest.approx(1.0, abs=1e-15)
    assert kernel.is_last == (kind == "last" or decay == 1.0)
    if kind != "geometric":  # the tracked points are the kernel's dense weights
        mu = np.zeros((n - 1) * stride + 1)
        mu[::stride] = t.weight_array()
        np.testing.assert_allclose(mu, kernel.weights(), rtol=1e-15, atol=0)


# ============================================================================================ psi
@SETTINGS
@given(kernel_strategy(), st.integers(0, 2**32 - 1))
def test_psi_on_scalars_is_the_autocorrelation_sum(kernel, seed):
    rng = np.random.default_rng(seed)
    g = rng.uniform(-0.95, 0.95, 7)
    close(kernel.psi(Transition.scalars(g)), brute_psi_scalar(kernel, g), 1e-11)
    gc = 0.95 * rng.uniform(0, 1, 5) * np.exp(2j * np.pi * rng.uniform(0, 1, 5))
    close(kernel.psi(Transition.scalars(gc)), brute_psi_scalar(kernel, gc), 1e-11)
    # the variance ratio of a scalar AR(1) is 2 psi = sum_{j,k} mu_j mu_k g^|j-k|
    mu = dense_weights(kernel)
    j = np.arange(len(mu))
    K = np.array([np.sum(np.outer(mu, mu) * x ** np.abs(j[:, None] - j[None, :])) for x in g[:3]])
    close(kernel.variance_ratio(g[:3]), K, 1e-11)
    close(qs.kernel_variance_ratio(kernel, g[:3]), K, 1e-11)


@SETTINGS
@given(kernel_strategy(), st.integers(0, 2**32 - 1))
def test_psi_on_2x2_matrices_is_the_autocorrelation_sum(kernel, seed):
    rng = np.random.default_rng(seed)
    M = random_matrices(rng, 6, 0.9)
    close(kernel.psi(Transition(M, Ops(M, matrix=True))), brute_psi_matrix(kernel, M), 1e-10)


@SETTINGS
@given(kernel_strategy(), st.floats(0.05, 1.9), st.sampled_from([0.0, 0.5, 0.9]))
def test_psi_with_the_companion_adjugate_inverse(kernel, lr_kappa_max, beta):
    # the heavy-ball companion matrices with the cancellation-free (I - (1-a) Phi)^-1 (used by EMA)
    # (the brute sum runs over the kernel's lags only: finite, or EMA's truncated at 1e-18)
    lam = np.array([1.0, 0.3, 0.01])
    lr = lr_kappa_max * (1 + beta)
    Phi = companion(lam, lr, beta)
    T = Transition(Phi, Ops(Phi, matrix=True), shifted_inverse=lambda a: companion_shifted_inverse(lam, lr, beta, a))
    close(kernel.psi(T), brute_psi_matrix(kernel, Phi), 1e-9)


# ============================================================================================ paper factor
@SETTINGS
@given(kernel_strategy(), st.integers(0, 2**32 - 1))
def test_paper_factor_equals_twice_psi_for_symmetric_transitions(kernel, seed):
    # eq. 19's bracket C_0 + 2 sum C_d Gamma^d is 2 Psi(Gamma): the printed closed forms (eq. 20, 21 with
    # their inverses of I - Gamma^Delta) are exact there; |Gamma^Delta| <= 0.9 keeps those inverses tame
    rng = np.random.default_rng(seed)
    g = rng.uniform(-0.9, 0.9, 7)
    close(kernel.paper_factor(g, Ops(g, matrix=False)), 2 * brute_psi_scalar(kernel, g), 1e-9)
    close(kernel.paper_factor(g, Ops(g, matrix=False)), 2 * kernel.psi(Transition.scalars(g)), 1e-9)
    G = random_matrices(rng, 5, 0.9, symmetric=True)
    close(kernel.paper_factor(G, Ops(G, matrix=True)), 2 * brute_psi_matrix(kernel, G), 1e-9)


# ============================================================================================ cumulative
@SETTINGS
@given(kernel_strategy())
def test_cumulative_is_the_cumsum_of_the_weights(kernel):
    if np.isinf(kernel.support):
        mu = kernel.weights(300)
        r = np.arange(300)
        close(kernel.cumulative(r), np.concatenate([[0.0], np.cumsum(mu)])[r], 1e-12)
        return
    mu = kernel.weights()
    L = len(mu)
    r = np.arange(L + 4)
    cs = [sum(mu[:min(x, L)]) for x in r]
    np.testing.assert_allclose(kernel.cumulative(r), cs, rtol=1e-13, atol=1e-15)
    assert kernel.cumulative(np.array([L + 100]))[0] == pytest.approx(1.0, abs=1e-12)


# ============================================================================================ a new kernel
@dataclass(frozen=True)
class TruncatedEMA(AveragingKernel):
    r"""Defined only here: :math:`\mu_{k\,\mathrm{every}} \propto a(1-a)^k` for k < length, normalised.

    Only ``point_weights`` and ``stride`` are given; psi, paper_factor, tracking, cumulative, the
    variance ratio and the spec text fall back to AveragingKernel's generic defaults.
    """

    decay: float
    length: int
    every: int = 1

    @property
    def stride(self) -> int:  # type: ignore[override]
        return self.every

    @property
    def point_weights(self) -> np.ndarray:
        w = self.decay * (1.0 - self.decay) ** np.arange(self.length)
        return w / w.sum()


def _new_kernel_models():
    A = np.array([[1.0, 0.3, 0.0], [0.3, 0.6, 0.1], [0.0, 0.1, 0.2]])
    C = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.2], [0.1, 0.2, 0.5]])
    return {
        "diagonal": qs.LinearModel(np.array([1.0, 0.3, 0.05]), 0.5),
        "diagonal-momentum": qs.LinearModel(np.array([1.0, 0.3, 0.05]), 0.3, momentum=0.6),
        "dense": qs.LinearModel(A, 0.8),
        "non-normal-momentum": qs.LinearModel.from_quadratic(A, C, 0.4, momentum=0.5),
    }


@pytest.mark.parametrize("kernel", [TruncatedEMA(0.3, 6), TruncatedEMA(0.5, 4, every=3)], ids=repr)
@pytest.mark.parametrize("name", list(_new_kernel_models()))
def test_a_kernel_defined_only_in_the_test_works_with_the_theory(kernel, name):
    m = _new_kernel_models()[name]
    assert kernel.tracking().kind == "points" and kernel.tracking().uniform_window == 0
    # stationary covariance and loss against the Lyapunov + lagged-sum brute force
    truth = brute_stationary_cov(m, kernel)
    close(qs.stationary_covariance(m, kernel), truth, 1e-9)
    close(qs.stationary_covariance(m, kernel, method="lyapunov"), truth, 1e-9)
    H = m.loss_matrix()
    loss = 0.5 * (np.dot(H, truth) if m.diagonal else np.trace(H @ truth))
    assert qs.stationary_loss(m, kernel) == pytest.approx(loss, rel=1e-9)
    if m.momentum == 0.0 and m.symmetric:  # eq. 19 as printed (generic paper_factor) is exact here
        close(qs.stationary_covariance(m, kernel, method="paper"), truth, 1e-9)
    # transient expected loss against the shift register, under a varying lr schedule
    rng = np.random.default_rng(0)
    steps = 40
    lrs = m.lr * rng.uniform(0.3, 1.0, steps)
    u0 = rng.normal(size=m.dim)
    got = qs.expected_loss(m, kernel, steps=steps, lr=lrs, u0=u0)
    np.testing.assert_allclose(got, brute_expected_loss(m, kernel, steps, lrs, u0), rtol=1e-9, atol=1e-14)
    # effective lr (ratio): lr x the averaged / raw stationary variance of each eigen-direction with
    # unit noise -- a diagonal model of the eigenvalues, brute-forced
    lam = np.asarray(m.eigenvalues, dtype=float)
    eig = qs.LinearModel(lam, m.lr, momentum=m.momentum)
    ratio = brute_stationary_cov(eig, kernel) / brute_stationary_cov(eig, qs.Last())
    np.testing.assert_allclose(qs.effective_lr(m, kernel), m.lr * ratio, rtol=1e-9)
    lr_exact = qs.effective_lr(m, kernel, method="exact")
    for lam_i, lr_i, v in zip(lam, lr_exact, brute_stationary_cov(eig, kernel)):
        assert qs.stationary_covariance(qs.LinearModel([lam_i], lr_i, m.momentum))[0] == pytest.approx(v, rel=1e-9)


def test_a_new_kernel_gets_the_generic_behaviour():
    k = TruncatedEMA(0.5, 4, every=3)
    mu = kernel_weights(k)
    assert len(mu) == 10 and mu[::3].sum() == pytest.approx(1.0) and np.all(mu[1::3] == 0)
    assert str(k) == repr(k)  # no spec_name: not registered with parse_kernel, printed as its repr
    assert "truncatedema" not in kernel_classes()
    g = np.linspace(-0.9, 0.9, 11)
    close(qs.kernel_variance_ratio(k, g), 2 * brute_psi_scalar(k, g), 1e-12)
    np.testing.assert_allclose(qs.equivalent_schedule(k, 0.1), 0.1 * np.cumsum(mu)[::-1], rtol=1e-13)
    # Lemma 2: with constant gradients, the average is the side-trip with the equivalent schedule
    rng = np.random.default_rng(1)
    grads, lr = rng.normal(size=(13, 2)), rng.uniform(0.01, 0.1, 13)
    traj = -np.concatenate([np.zeros((1, 2)), np.cumsum(lr[:, None] * grads, axis=0)])
    avg = sum(mu[j] * traj[-1 - j] for j in range(len(mu)))
    np.testing.assert_allclose(avg, -np.sum(qs.equivalent_schedule(k, lr)[:, None] * grads, axis=0), atol=1e-14)
    with pytest.raises(ValueError, match="kernel must be an averaging kernel"):
        qs.stationary_covariance(qs.LinearModel([1.0], 0.1), "truncema")
