"""quadsgd.schedules: kernel_for_schedule inverts equivalent_schedule (Table 1 / Lemma 2) for every kernel kind;
the named cooldowns against their formulas written out here; schedules no non-negative kernel gives are refused."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quadsgd as qs
from quadsgd.kernels import kernel_classes
from quadsgd.schedules import COOLDOWN_SHAPES, cooldown, kernel_for_schedule

# one canonical instance (or more) of every registered kernel kind
EXAMPLES = {
    "last": [qs.Last()],
    "twopoint": [qs.TwoPoint(2), qs.TwoPoint(100)],
    "npoint": [qs.NPoint(3, 4), qs.NPoint(5, 25)],
    "swa": [qs.SWA(2), qs.SWA(17)],
    "ema": [qs.EMA(0.5), qs.EMA(0.02), qs.EMA(1e-3)],
    "kernel": [qs.Kernel([0.5, 0.25, 0.0, 0.25]), qs.Kernel([0.0, 0.0, 1.0])],
}


def _multipliers(k, steps=None):
    """The schedule of k (lr 1) as multipliers[r-1] for the step r before T."""
    return qs.equivalent_schedule(k, 1.0, steps=steps)[::-1]


def test_every_kernel_kind_is_covered():
    # the kernels quadsgd defines (other test modules register kernels of their own in the same session)
    assert set(EXAMPLES) == {n for n, c in kernel_classes().items() if c.__module__ == "quadsgd.kernels"}


@pytest.mark.parametrize("kernel", [k for ks in EXAMPLES.values() for k in ks], ids=str)
def test_round_trip_every_kind(kernel):
    steps = 3000 if kernel.support == float("inf") else None
    assert kernel_for_schedule(_multipliers(kernel, steps)) == kernel


@pytest.mark.parametrize("L", [1, 2, 7, 500])
def test_ema_truncated_to_any_window_is_the_ema(L):
    # the truncated schedule 1 - (1-a)^r never reaches 1: it is recognised whatever the window
    assert kernel_for_schedule(_multipliers(qs.EMA(0.1), L)) == qs.EMA(0.1)


def test_canonical_forms():
    assert kernel_for_schedule(_multipliers(qs.SWA(1))) == qs.Last()
    assert kernel_for_schedule(_multipliers(qs.TwoPoint(1))) == qs.SWA(2)
    assert kernel_for_schedule(_multipliers(qs.NPoint(2, 9))) == qs.TwoPoint(9)
    assert kernel_for_schedule(_multipliers(qs.NPoint(4, 1))) == qs.SWA(4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40).filter(lambda w: sum(w) > 0.05))
def test_round_trip_any_finite_kernel(w):
    w = np.asarray(w) / np.sum(w)
    k = qs.Kernel(w)
    out = kernel_for_schedule(_multipliers(k, len(w)))
    # the weights come back to rounding (the kind may be a named one when w happens to be uniform)
    got = out.weights(len(w))
    np.testing.assert_allclose(got, w, atol=1e-12)
    # and the schedule of the result is the given one
    np.testing.assert_allclose(_multipliers(out, len(w)), _multipliers(k, len(w)), atol=1e-12)


@pytest.mark.parametrize("L", [1, 4, 100])
def test_cooldown_shapes_against_formulas(L):
    r = np.arange(1, L + 1)
    x = (L - r) / L  # fraction of the cooldown before the step
    np.testing.assert_allclose(cooldown("linear", L), 1 - x)
    np.testing.assert_allclose(cooldown("1-sqrt", L), 1 - np.sqrt(x), atol=1e-15)
    np.testing.assert_allclose(cooldown("cosine", L), (1 + np.cos(np.pi * x)) / 2, atol=1e-15)
    np.testing.assert_allclose(cooldown("exp", L, final=0.05), 0.05 ** x)


def test_linear_cooldown_is_swa():
    assert kernel_for_schedule(cooldown("linear", 250)) == qs.SWA(250)


@pytest.mark.parametrize("shape", COOLDOWN_SHAPES)
def test_cooldown_kernel_schedule_round_trip(shape):
    m = cooldown(shape, 64)
    k = kernel_for_schedule(m)
    np.testing.assert_allclose(_multipliers(k, 64), m, atol=1e-12)
    assert np.all(k.weights(64) >= 0)


@pytest.mark.parametrize("bad, match", [
    ([0.5, 0.4, 1.0], r"non-decreasing.*multipliers\[1\]"),
    ([1.0, 0.5, 0.25], r"time order.*\[::-1\]"),
    ([0.2, 0.5, 0.9], r"end at 1"),
    ([-0.1, 1.0], r"\[0, 1\]"),
    ([0.5, 1.5], r"\[0, 1\]"),
    ([[0.5, 1.0]], r"multipliers"),
    ([np.nan, 1.0], r"multipliers"),
])
def test_refused_schedules(bad, match):
    with pytest.raises(ValueError, match=match):
        kernel_for_schedule(bad)


@pytest.mark.parametrize("kw, match", [
    (dict(shape="step", length=5), "shape"), (dict(shape="linear", length=0), "length"),
    (dict(shape="exp", length=5, final=1.0), "final"), (dict(shape="exp", length=5, final=0.0), "final")])
def test_cooldown_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        cooldown(**kw)
