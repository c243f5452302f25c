"""Property-based checking of anyone's formula against the simulator.

Write a hypothesis test over whole parameter ranges and one assertion::

    from hypothesis import given, settings
    import quadsgd as qs
    from quadsgd import testing as qst

    @settings(deadline=None, max_examples=30)
    @given(qst.models(), qst.kernels())
    def test_my_formula(m, k):
        qst.assert_stationary_matches(my_covariance(m, k), m, k)

* :func:`models`, :func:`kernels` -- hypothesis strategies of stable, well-conditioned cases with bounded mixing
  time (imported lazily: ``import quadsgd`` does not import hypothesis);
* :func:`check_stationary` / :func:`assert_stationary_matches` -- ``predicted`` a (d, d) covariance (exact
  Wishart test, Sidak or Fisher combined; not symmetric or not positive definite fails with p = 0), a (d,)
  vector of variances (chi-square per coordinate) or a scalar (z-test of the mean loss, or of ``quantity``);
* :func:`check_curve` / :func:`assert_curve_matches` -- a predicted expected-loss curve (steps + 1,) against
  ``chains`` chains (Bonferroni over records, or Hotelling's :math:`T^2`);
* :class:`CheckResult` -- statistic, p-value and the discrepancy; :func:`mixing_time`, :func:`burn_in_steps`.

A correct formula fails with probability ``alpha`` (exactly for the Wishart and Hotelling tests, at most for
the conservative ones); a wrong one fails with an AssertionError stating the test, the statistic, the p-value,
the model with a reproducer, the kernel and the largest discrepancy, and hypothesis shrinks it (the simulation
seed is derived from the parameters). ValueError, naming the argument: ``predicted`` of the wrong shape or not
finite, ``alpha`` outside (0, 1), a burn-in or curve longer than ``max_steps``.
The tests, their exactness and power: ``docs/testing-formulas.md``.
"""
from __future__ import annotations

from .checks import CheckResult, assert_curve_matches, assert_stationary_matches, check_curve, check_stationary
from .mixing import burn_in_steps, mixing_time
from .strategies import kernels, models

__all__ = [
    "models", "kernels", "assert_stationary_matches", "assert_curve_matches",
    "check_stationary", "check_curve", "CheckResult", "mixing_time", "burn_in_steps",
]
