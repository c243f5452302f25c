"""Benchmarks for quadsgd.theory; prints medians and ratios measured in this run.

    python benchmarks/bench_theory.py [--quick]

1. stationary_covariance, diagonal d = 1e6, every kernel (target: well under a second).
2. stationary_covariance, dense d = 512 (non-normal, from_quadratic), vs
   scipy.linalg.solve_discrete_lyapunov on the augmented state, at equal accuracy (target >= 10x).
3. expected_loss, diagonal d = 1e4, T = 1e4, vs a Monte Carlo estimate of equal accuracy
   (the MC cost is measured on a small run and extrapolated by its 1/sqrt(chains) error).
4. stationary_covariance of an arbitrary Kernel with L = 1e6 weights (--quick: 1e5), diagonal d = 1e3,
   SGD and momentum 0.9: FFT autocorrelation (O(L log L)) + Paterson-Stockmeyer (O(sqrt L) products,
   O(L d) additions), vs the O(L^2) direct correlation it replaced (timed at L/10, scaled by 100).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # measure this checkout's quadsgd, not an installed copy
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import scipy.linalg as sla  # noqa: E402

import quadsgd as qs  # noqa: E402


def median_time(fn, repeat=5):
    ts = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def bench_diagonal(d):
    om = np.exp(np.linspace(np.log(1e-6), 0.0, d))
    m = qs.LinearModel(om, 0.5)
    mm = qs.LinearModel(om, 0.5, momentum=0.9)
    print(f"\n[1] stationary_covariance, diagonal d = {d:.0e}")
    for k in (qs.Last(), qs.EMA(1 / 450), qs.TwoPoint(10**5), qs.NPoint(8, 1000), qs.SWA(10**4)):
        t, _ = median_time(lambda: qs.stationary_covariance(m, k))
        tm, _ = median_time(lambda: qs.stationary_covariance(mm, k), repeat=3)
        print(f"    {k!r:28s} SGD {t * 1e3:8.1f} ms   momentum 0.9 {tm * 1e3:8.1f} ms")


def bench_dense(d, beta):
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(d, d)))
    A = (U * np.exp(rng.uniform(np.log(0.01), 0.0, d))) @ U.T
    A = 0.5 * (A + A.T)
    B = rng.normal(size=(d, d))
    C = B @ B.T / d + 0.5 * np.eye(d)
    m = qs.LinearModel.from_quadratic(A, C, 0.5, momentum=beta)
    kernel = qs.TwoPoint(50)
    t_ours, ours = median_time(lambda: qs.stationary_covariance(m, kernel), repeat=3)

    def baseline():
        # augmented (u, buf) state, scipy's Lyapunov solver, then the lagged sum for the two-point kernel
        om = m.omega
        n = d if beta == 0 else 2 * d
        if beta == 0:
            M = np.eye(d) - m.lr * om
            N = m.lr * np.eye(d)
        else:
            M = np.block([[np.eye(d) - m.lr * om, -m.lr * beta * np.eye(d)], [om, beta * np.eye(d)]])
            N = np.vstack([m.lr * np.eye(d), -np.eye(d)])
        P = sla.solve_discrete_lyapunov(M, N @ N.T)
        R = np.linalg.matrix_power(M, kernel.delta) @ P
        cov = 0.5 * P + 0.25 * (R + R.T)
        return cov[:d, :d], n

    t_base, (base, n) = median_time(baseline, repeat=1 if d > 256 else 3)
    err = np.max(np.abs(ours - base)) / np.max(np.abs(base))
    print(f"\n[2] stationary_covariance dense d = {d}, momentum {beta} (augmented state {n}), TwoPoint(50)")
    print(f"    ours {t_ours:.3f} s   scipy solve_discrete_lyapunov {t_base:.3f} s   "
          f"ratio {t_base / t_ours:.1f}x   max rel. difference {err:.1e}")


def bench_expected_loss(d, T):
    om = np.exp(np.linspace(np.log(1e-3), 0.0, d))
    m = qs.LinearModel(om, 0.5)
    k = qs.EMA(0.01)
    qs.expected_loss(qs.LinearModel(om[:10], 0.5), k, steps=10)  # compile
    t_exact, curve = median_time(lambda: qs.expected_loss(m, k, steps=T), repeat=3)
    # Monte Carlo: numpy recursion, chains x d, measure the relative standard error at the end
    chains, Tm = 64, 2000
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    u = np.ones((chains, d))
    e = u.copy()
    g = 1.0 - m.lr * om
    for _ in range(Tm):
        u = g * u + m.lr * rng.standard_normal((chains, d))
        e += k.decay * (u - e)
    t_mc = time.perf_counter() - t0
    per_chain_step = t_mc / (chains * Tm)
    losses = 0.5 * np.sum(om * e * e, axis=1)
    rse_one_chain = np.std(losses, ddof=1) / np.mean(losses)
    target = 1e-10  # the exact method's verified accuracy (tests: 1e-9 vs shift registers; rounding ~1e-15)
    chains_needed = (rse_one_chain / target) ** 2
    t_mc_equal = chains_needed * per_chain_step * T
    print(f"\n[3] expected_loss diagonal d = {d:.0e}, T = {T:.0e}, EMA(0.01)")
    print(f"    exact: {t_exact:.2f} s for the whole curve (T+1 = {T + 1} points)")
    print(f"    Monte Carlo: {per_chain_step * 1e6:.1f} us per chain-step at d = {d}; one chain's loss has "
          f"relative std {rse_one_chain:.3f};")
    print(f"    equal accuracy ({target:.0e}) needs {chains_needed:.1e} chains = {t_mc_equal:.1e} s "
          f"-> ratio {t_mc_equal / t_exact:.1e}x; even 1% accuracy costs "
          f"{(rse_one_chain / 1e-2) ** 2 * per_chain_step * T:.1f} s "
          f"({(rse_one_chain / 1e-2) ** 2 * per_chain_step * T / t_exact:.1f}x)")


def bench_long_kernel(L, d=1000):
    rng = np.random.default_rng(0)
    w = rng.random(L)
    k = qs.Kernel(w / w.sum())
    om = np.exp(np.linspace(np.log(1e-3), 0.0, d))
    m = qs.LinearModel(om, 0.5)
    mm = qs.LinearModel(om, 0.5, momentum=0.9)
    t, _ = median_time(lambda: qs.stationary_covariance(m, k), repeat=3)
    tm, _ = median_time(lambda: qs.stationary_covariance(mm, k), repeat=3)
    ws = w[: L // 10]
    tc, _ = median_time(lambda: np.correlate(ws, ws, mode="full"), repeat=3)
    print(f"\n[4] stationary_covariance, Kernel with L = {L:.0e} weights, diagonal d = {d}")
    print(f"    SGD {t:.2f} s   momentum 0.9 {tm:.2f} s   (the O(L^2) direct correlation alone: "
          f"{tc * 100:.1f} s, from {tc:.3f} s at L/10 x 100 -> ratio {tc * 100 / t:.0f}x)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args(argv)
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}, quadsgd from {Path(qs.__file__).parent}")
    bench_diagonal(10**5 if args.quick else 10**6)
    for beta in (0.0, 0.9):
        bench_dense(128 if args.quick else 512, beta)
    bench_expected_loss(10**3 if args.quick else 10**4, 10**3 if args.quick else 10**4)
    bench_long_kernel(10**5 if args.quick else 10**6)


if __name__ == "__main__":
    main()
