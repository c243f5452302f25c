"""False-alarm rate and power of quadsgd.testing's assertions; prints observed rates next to alpha.

    python benchmarks/bench_testing.py [--seeds N] [--quick] [--json PATH]

Cases: the first 24 (model, kernel) draws of ``qs.testing.models()`` x ``qs.testing.kernels()``
(hypothesis, derandomized: diagonal, dense and non-normal Omega, momentum 0 / 0.5 / 0.9, every kernel
family); seed i uses case i mod 24 and ``seed=i`` (so the simulation seed differs for every run).

1. False alarms: each check on the *exact* formula, N seeds (default 1000; --quick 200). Every run
   gives one p-value; the observed rejection rate at alpha in {0.05, 0.01, 1e-3, 1e-6} is
   #{p <= alpha} / N, with a Clopper-Pearson 95% interval, and a Kolmogorov-Smirnov test of the
   p-values against U(0, 1) (exact tests: uniform; conservative ones: skewed towards 1).
   * stationary covariance, Wishart/Bartlett test, Sidak and Fisher combination (4000 chains)
   * stationary variances (d,) chi-square + Sidak; stationary loss z-test (4000 chains)
   * loss curves, 40 steps, record every 4 (10 records), u0 ones, max|z|+Bonferroni and Hotelling
     (4000 chains, method "step")
2. Power against a formula off by 5% in one coordinate (coordinate 0):
   * covariance: the exact covariance with entry [0, 0] (diagonal model: variance 0) times 1.05;
   * loss curve: expected_loss with H[0, 0] times 1.05 (the loss of coordinate 0 off by 5%);
   N_power seeds (default 200) at several chain counts, rejection rate at alpha = 1e-6 and 0.01.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from scipy import stats

import quadsgd as qs
from quadsgd import testing as qst

ALPHAS = (0.05, 0.01, 1e-3, 1e-6)


def cases(n=24):
    out = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(qst.models(), qst.kernels())
    def collect(m, k):
        if len(out) < n:
            out.append((m, k))

    collect()
    return out


def clopper_pearson(k, n, level=0.95):
    lo = stats.beta.ppf((1 - level) / 2, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - (1 - level) / 2, k + 1, n - k) if k < n else 1.0
    return lo, hi


def rates(pvals, alphas=ALPHAS):
    p = np.asarray(pvals)
    out = {}
    for a in alphas:
        k = int(np.sum(p <= a))
        lo, hi = clopper_pearson(k, p.size)
        out[a] = dict(rejections=k, rate=k / p.size, ci95=(lo, hi))
    return out


def report(name, pvals, seconds):
    p = np.asarray(pvals)
    ks = stats.kstest(p, "uniform").pvalue
    print(f"\n{name}: {p.size} seeds, {seconds:.1f} s ({1e3 * seconds / p.size:.0f} ms per assertion)")
    print(f"  {'alpha':>8} {'rejected':>9} {'observed rate':>14} {'95% CI':>20}")
    r = rates(p)
    for a, v in r.items():
        print(f"  {a:>8g} {v['rejections']:>9d} {v['rate']:>14.4f}   [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]")
    print(f"  KS test of the p-values against U(0,1): p = {ks:.3g}; mean p = {p.mean():.3f} (uniform: 0.5)")
    return dict(seeds=int(p.size), seconds=seconds, ks_pvalue=float(ks), mean_p=float(p.mean()),
                rates={str(a): v for a, v in r.items()})


def _off_by_5(m, k):
    cov = np.array(qs.stationary_covariance(m, k), dtype=float)
    if cov.ndim == 1:
        cov[0] *= 1.05
    else:
        cov[0, 0] *= 1.05
    return cov


def _curve_off_by_5(m, k, steps):
    H = np.array(m.loss_matrix(), dtype=float)
    if H.ndim == 1:
        H[0] *= 1.05
    else:
        H[0, 0] *= 1.05
    m2 = qs.LinearModel(m.omega, m.lr, m.momentum, hessian=H)
    return qs.expected_loss(m2, k, steps=steps)


def run(label, fn, n, cs):
    t0 = time.perf_counter()
    ps = []
    for i in range(n):
        m, k = cs[i % len(cs)]
        ps.append(fn(m, k, i).pvalue)
        if (i + 1) % 100 == 0:
            print(f"  [{label}] {i + 1}/{n}", file=sys.stderr, flush=True)
    return ps, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=None, help="false-alarm seeds (default 1000; --quick 200)")
    ap.add_argument("--power-seeds", type=int, default=None, help="power seeds (default 200; --quick 100)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None, help="write the numbers to this JSON file")
    args = ap.parse_args(argv)
    n = args.seeds or (200 if args.quick else 1000)
    npow = args.power_seeds or (100 if args.quick else 200)
    cs = cases()
    print(f"cases: {len(cs)} (model, kernel) draws of qs.testing.models() x qs.testing.kernels(): "
          f"{sum(m.diagonal for m, _ in cs)} diagonal, {sum(m.symmetric and not m.diagonal for m, _ in cs)} dense, "
          f"{sum(not m.symmetric for m, _ in cs)} non-normal; momentum {sorted({m.momentum for m, _ in cs})}; "
          f"kernels {sorted({type(k).__name__ for _, k in cs})}")
    out = dict(cases=len(cs), false_alarm={}, power={})
    C = 4000
    T, every = 40, 4

    print("\n=== 1. False-alarm rate on exact formulas ===")
    checks = {
        "stationary covariance, Wishart/Bartlett + Sidak (exact)": lambda m, k, i: qst.check_stationary(
            qs.stationary_covariance(m, k), m, k, chains=C, seed=i),
        "stationary covariance, Wishart/Bartlett + Fisher (exact)": lambda m, k, i: qst.check_stationary(
            qs.stationary_covariance(m, k), m, k, chains=C, seed=i, combine="fisher"),
        "stationary variances (d,), chi-square + Sidak": lambda m, k, i: qst.check_stationary(
            np.diag(np.atleast_2d(qs.stationary_covariance(m, k))) if not m.diagonal
            else qs.stationary_covariance(m, k),
            m, k, chains=C, seed=i),
        "stationary loss (scalar), z-test": lambda m, k, i: qst.check_stationary(
            qs.stationary_loss(m, k), m, k, chains=C, seed=i),
        f"loss curve ({T} steps, {T // every} records), max|z| + Bonferroni": lambda m, k, i: qst.check_curve(
            qs.expected_loss(m, k, steps=T), m, k, T, record_every=every, chains=C, seed=i),
        f"loss curve ({T} steps, {T // every} records), Hotelling T^2": lambda m, k, i: qst.check_curve(
            qs.expected_loss(m, k, steps=T), m, k, T, record_every=every, chains=C, seed=i, combine="hotelling"),
    }
    for name, fn in checks.items():
        ps, sec = run(name[:30], fn, n, cs)
        out["false_alarm"][name] = report(name, ps, sec)

    print("\n=== 2. Power against a formula off by 5% in coordinate 0 ===")
    print(f"  {'check':<44} {'chains':>7} {'seeds':>6} {'rate@1e-6':>10} {'rate@0.01':>10}")
    plan = [("covariance (Sidak)", c,
             lambda m, k, i, c=c: qst.check_stationary(_off_by_5(m, k), m, k, chains=c, seed=i))
            for c in (4000, 20000, 60000)]
    plan += [("covariance (Fisher)", 60000, lambda m, k, i: qst.check_stationary(
        _off_by_5(m, k), m, k, chains=60000, seed=i, combine="fisher"))]
    plan += [(f"loss curve, Bonferroni ({T // every} records)", c, lambda m, k, i, c=c: qst.check_curve(
        _curve_off_by_5(m, k, T), m, k, T, record_every=every, chains=c, seed=i)) for c in (4000, 40000)]
    plan += [(f"loss curve, Hotelling ({T // every} records)", c, lambda m, k, i, c=c: qst.check_curve(
        _curve_off_by_5(m, k, T), m, k, T, record_every=every, chains=c, seed=i, combine="hotelling"))
        for c in (4000, 40000)]
    for name, c, fn in plan:
        ps, sec = run(name[:30], fn, npow, cs)
        p = np.asarray(ps)
        r6, r2 = float(np.mean(p <= 1e-6)), float(np.mean(p <= 0.01))
        print(f"  {name:<44} {c:>7d} {npow:>6d} {r6:>10.3f} {r2:>10.3f}   ({sec:.0f} s)")
        out["power"][f"{name}, chains={c}"] = {"chains": c, "seeds": npow, "rate_at_1e-6": r6, "rate_at_0.01": r2,
                                               "seconds": sec}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return out


if __name__ == "__main__":
    main()
