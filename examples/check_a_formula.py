"""Check a formula against the simulator with ``quadsgd.testing``: wrong formulas are caught and shrunk.

    python examples/check_a_formula.py          # CPU only

A formula is any function ``formula(m, kernel)`` of a :class:`quadsgd.LinearModel` and an averaging
kernel that returns the stationary covariance ((d, d), or (d,) variances for a diagonal model or
when only the variances are predicted) or a scalar (the stationary loss). One hypothesis test over
whole parameter ranges and one assertion decide it:

    @given(qst.models(), qst.kernels())
    def test(m, k):
        qst.assert_stationary_matches(formula(m, k), m, k)

Each assertion simulates 20000 independent chains (exact Gaussian transitions, burn-in of 40 mixing
times) and applies an exact test whose false-alarm rate is alpha = 1e-6; a failure states the
statistic, the p-value, the model (with a copy-paste reproducer), the kernel and the largest
discrepancy, and hypothesis shrinks the case to a small counterexample.

1. The exact stationary covariance ``qs.stationary_covariance`` passes (diagonal, dense and
   non-normal Omega, momentum 0 / 0.5 / 0.9, every kernel family), and so does the exact
   transient curve ``qs.expected_loss``.
2. The paper's eq. 19 (``method="paper"``) applied to a non-normal Omega (correlated gradient noise,
   ``LinearModel.from_quadratic``) is caught: its matrix is not even symmetric, and its diagonal (the
   variances it predicts) is rejected by the chi-square test; hypothesis shrinks it to a
   2-dimensional counterexample.
3. Eq. 19's stationary *loss* 0.5 tr(H F) is exact even for non-normal Omega and passes.
4. A plausible new rule -- "an n-point average divides the variance by n" -- is caught and shrunk to
   the simplest case that breaks it (the points are closer than the mixing time, so they are
   correlated).
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings

import quadsgd as qs
from quadsgd import testing as qst


def property_test(formula, models, kernels, max_examples=15):
    """Run ``assert_stationary_matches(formula(m, k), m, k)`` over hypothesis draws.

    Returns None when every example passes, else the AssertionError text of the shrunk counterexample.
    """
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=[HealthCheck.too_slow],
              report_multiple_bugs=False)
    @given(models, kernels)
    def test(m, k):
        qst.assert_stationary_matches(formula(m, k), m, k)

    try:
        test()
    except AssertionError as e:
        return str(e)
    return None


def exact(m, k):
    return qs.stationary_covariance(m, k)


def eq19(m, k):
    """The paper's eq. 19 (with eq. 20 / 21 for two-point and n-point kernels), exactly as printed."""
    return qs.stationary_covariance(m, k, method="paper")


def eq19_variances(m, k):
    """The per-coordinate variances eq. 19 predicts (the diagonal of its F)."""
    return np.diag(np.atleast_2d(qs.stationary_covariance(m, k, method="paper"))).copy()


def eq19_loss(m, k):
    return qs.stationary_loss(m, k, method="paper")


def n_point_divides_by_n(m, k):
    """A plausible but wrong rule: an n-point average has 1/n of the variance of the last iterate."""
    return qs.stationary_covariance(m, qs.Last()) / k.n


def show(title, verdict):
    print(f"\n=== {title}")
    print("all examples passed" if verdict is None else "caught; shrunk counterexample:\n" + verdict)


def main():
    show("1. exact covariance, all model kinds and kernels",
         property_test(exact, qst.models(), qst.kernels(), max_examples=25))
    m = qs.LinearModel.from_quadratic(np.diag([1.0, 0.2]), [[1.0, 0.6], [0.6, 1.0]], lr=0.4, momentum=0.5)
    r = qst.assert_curve_matches(qs.expected_loss(m, qs.EMA(0.1), steps=50), m, qs.EMA(0.1), 50)
    print(f"    exact transient curve (50 steps, EMA(0.1), non-normal, momentum 0.5): p = {r.pvalue:.3g}")

    nn = qst.models(kind="non_normal", momentum=0.0)  # eq. 19 has no momentum
    show("2a. eq. 19 on non-normal Omega, as printed", property_test(eq19, nn, qst.kernels()))
    show("2b. eq. 19's variances on non-normal Omega", property_test(eq19_variances, nn, qst.kernels()))
    show("3. eq. 19's stationary loss on non-normal Omega (exact: passes)",
         property_test(eq19_loss, nn, qst.kernels()))
    show("4. 'an n-point average divides the variance by n'",
         property_test(n_point_divides_by_n, qst.models(), qst.kernels(kind="n_point")))


if __name__ == "__main__":
    main()
