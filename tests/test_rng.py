"""Random streams of the simulator: xoshiro256++, SplitMix64 seeding, jump streams, ziggurat normals.

Statistical tests use fixed seeds (deterministic in CI); each states its false-alarm rate.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from quadsgd.simulation import _rng as nb
from quadsgd.simulation import draw_normals

from .simtruth import jump_by_matrix_power, splitmix_py, xoshiro_py

# ------------------------------------------------------------------------------- generator


def test_xoshiro_reference_vector():
    # state (1, 2, 3, 4): first output rotl(1 + 4, 23) + 1 (reference implementation)
    st = np.array([1, 2, 3, 4], dtype=np.uint64)
    out = nb.raw_u64(st, 1000)
    assert int(out[0]) == (5 << 23) + 1
    ref, _ = xoshiro_py([1, 2, 3, 4], 1000)
    assert [int(x) for x in out] == ref


def test_splitmix_seeding():
    # SplitMix64 from 0: first output 0xE220A8397B1DCDAF (Vigna's reference)
    assert splitmix_py(0)[0] == 0xE220A8397B1DCDAF
    for seed in (0, 1, 12345, 2**64 - 1):
        assert [int(x) for x in nb.splitmix_state(np.uint64(seed))] == splitmix_py(seed)


def test_jump_is_two_to_the_128_steps():
    # independent check: the linear engine's GF(2) matrix raised to 2^128 by 128 squarings
    st = nb.splitmix_state(np.uint64(7))
    expected = jump_by_matrix_power([int(x) for x in st], 128)
    s = st.copy()
    nb.jump(s)
    assert [int(x) for x in s] == expected
    # sanity of the matrix method itself: 2^3 steps = 8 plain steps
    _, s8 = xoshiro_py([int(x) for x in st], 8)
    assert jump_by_matrix_power([int(x) for x in st], 3) == s8


def test_chain_streams_are_jumps_and_independent_of_chain_count():
    seed = 99
    st = nb.chain_states(np.uint64(seed), 6)
    s = nb.splitmix_state(np.uint64(seed))
    for c in range(6):
        assert np.array_equal(st[c], s)
        nb.jump(s)
    a = draw_normals(seed, 3, 500)
    b = draw_normals(seed, 8, 500)
    assert np.array_equal(a, b[:3])
    # a longer draw continues the same stream
    assert np.array_equal(draw_normals(seed, 2, 800)[:, :500], a[:2])
    assert not np.array_equal(draw_normals(seed + 1, 3, 500), a)


# ------------------------------------------------------------------------------- ziggurat tables


def test_ziggurat_tables_are_equal_area_layers():
    ki, wi, fi = nb.ziggurat_tables()
    r = nb.ZIG_R
    v = r * math.exp(-r * r / 2) + math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
    x = wi * 2.0**52  # right edges x_i (layer 0: width of the base strip)
    assert x[255] == pytest.approx(r, rel=1e-15)
    # layers 1..255: x_i (f(x_{i-1}) - f(x_i)) = v, with f(x_0) = 1
    area = x[1:] * (fi[:-1] - fi[1:])
    np.testing.assert_allclose(area, v, rtol=1e-9)
    assert x[0] * fi[255] == pytest.approx(v, rel=1e-12)
    np.testing.assert_allclose(fi[1:], np.exp(-0.5 * x[1:] ** 2), rtol=1e-12)
    # immediate-accept thresholds: 2^52 x_{i-1} / x_i (layer 1: x_0 = 0; layer 0: r / width)
    np.testing.assert_allclose(ki[2:].astype(float), 2.0**52 * x[1:-1] / x[2:], rtol=1e-12)
    assert ki[1] == 0
    assert float(ki[0]) == pytest.approx(2.0**52 * r / x[0], rel=1e-12)


# ------------------------------------------------------------------------------- normal law
# One fixed sample of 4e6 normals from 8 streams; each test below has false-alarm rate <= 1e-6
# (a fixed seed: the outcome is the same on every run).
ALPHA = 1e-6


@pytest.fixture(scope="module")
def sample():
    return draw_normals(2024, 8, 500_000).ravel()


def test_normal_moments(sample):
    n = sample.size
    z_mean = sample.mean() * math.sqrt(n)
    assert 2 * stats.norm.sf(abs(z_mean)) > ALPHA
    # E z^2 = 1 (var 2), E z^4 = 3 (var 96): z-tests
    z2 = (np.mean(sample**2) - 1) / math.sqrt(2 / n)
    z4 = (np.mean(sample**4) - 3) / math.sqrt(96 / n)
    assert 2 * stats.norm.sf(abs(z2)) > ALPHA
    assert 2 * stats.norm.sf(abs(z4)) > ALPHA


def test_normal_ks_and_binned_chi_square(sample):
    assert stats.kstest(sample[:1_000_000], "norm").pvalue > ALPHA
    # 200 equiprobable bins: chi-square with 199 degrees of freedom
    edges = stats.norm.ppf(np.linspace(0, 1, 201)[1:-1])
    counts = np.bincount(np.searchsorted(edges, sample), minlength=200)
    expected = sample.size / 200
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, 199) > ALPHA


def test_normal_tails_and_wedges(sample):
    # the tail beyond r and the wedges (rejection paths) get the right mass
    n = sample.size
    r = nb.ZIG_R
    for lo, hi in ((r, np.inf), (2.0, r), (0.0, 0.05), (4.0, np.inf)):
        p = 2 * (stats.norm.cdf(hi) - stats.norm.cdf(lo))
        k = int(np.count_nonzero((np.abs(sample) >= lo) & (np.abs(sample) < hi)))
        pv = 2 * min(stats.binom.cdf(k, n, p), stats.binom.sf(k - 1, n, p))
        assert pv > ALPHA, (lo, hi, k, n * p)
    # symmetric: the sign bit is independent of the magnitude
    k = int(np.count_nonzero(sample[np.abs(sample) > r] > 0))
    m = int(np.count_nonzero(np.abs(sample) > r))
    assert stats.binomtest(k, m, 0.5).pvalue > ALPHA


def test_streams_uncorrelated():
    # 64 chains x 20000 draws: correlations between streams and lag-1 within streams ~ N(0, 1/n)
    x = draw_normals(5, 64, 20_000)
    n = x.shape[1]
    c = np.corrcoef(x)[np.triu_indices(64, 1)] * math.sqrt(n)
    lag = np.array([np.corrcoef(row[:-1], row[1:])[0, 1] for row in x]) * math.sqrt(n)
    z = np.concatenate([c, lag])
    # Bonferroni over 2080 + 64 tests at family-wise rate 1e-6
    assert 2 * stats.norm.sf(np.abs(z).max()) > ALPHA / z.size
