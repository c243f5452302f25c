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

Layout
------
* :mod:`quadsgd.testing.strategies` -- :func:`models`, :func:`kernels` (hypothesis, imported lazily:
  ``import quadsgd`` does not import hypothesis);
* :mod:`quadsgd.testing.mixing` -- :func:`mixing_time`, :func:`burn_in_steps`;
* :mod:`quadsgd.testing.statistics` -- the tests themselves, numbers in and typed results out
  (two-sided chi-square / normal p-values, Sidak, Fisher, Bonferroni, the Bartlett/Wishart
  covariance test, the chi-square variance test, the z-test of a mean, Hotelling's T^2, covariance
  z-scores, slope confidence intervals, bootstrap standard errors); ``validation`` uses the same ones;
* :mod:`quadsgd.testing.checks` -- :func:`check_stationary`, :func:`check_curve`, the ``assert_*``
  twins and :class:`CheckResult`;
* :mod:`quadsgd.testing.messages` -- the failure message: model summary and reproducer (the kernel in
  the spec grammar, ``k = qs.parse_kernel("ema:0.1")``), largest discrepancy.
"""
from __future__ import annotations

from .checks import CheckResult, assert_curve_matches, assert_stationary_matches, check_curve, check_stationary
from .mixing import burn_in_steps, mixing_time
from .strategies import kernels, models

__all__ = [
    "models", "kernels", "assert_stationary_matches", "assert_curve_matches",
    "check_stationary", "check_curve", "CheckResult", "mixing_time", "burn_in_steps",
]
