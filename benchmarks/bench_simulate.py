"""Benchmarks for quadsgd.simulate; prints medians and ratios measured in this run.

    python benchmarks/bench_simulate.py [--quick] [--full] [--repeat N]

1. Diagonal omega, d = 1000, chains = 1000, T = 200, kernels (Last, EMA), float64, loss recorded at
   every step (record_every = 1, the default) and once (record_every = T): chain-coordinate-steps per
   second, ratio to (a) a vectorized numpy implementation of the same recursion (numpy's default
   Generator, in-place updates, the same per-step losses) and (b) the raw normal-sampling rate of the
   simulator's own xoshiro256++/ziggurat streams on all threads (normals summed, nothing stored).
   Targets: >= 3x numpy, >= 60% of the raw rate.
2. Dense omega, d = 256, chains = 1024, T = 100, (Last, EMA), loss every 10 steps: ratio to the numpy
   matmul baseline (U <- U - lr (U Omega^T - Z), same trackers and losses). Target >= 1x.
3. method="exact" on the paper's fast/slow system (omega = (1, 0.015), lr 0.05, EMA 1/450), 10^6
   steps, 100 records, 10^4 chains, vs method="step". The step run is timed on the first 10^5 steps
   (100 records) and scaled by 10 (its cost is linear in steps); --full times all 10^6 steps.
   Target >= 100x.

Timings are medians over --repeat runs, the contenders interleaved (the machine may be shared).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import quadsgd as qs
from quadsgd.simulation import _rng as nb


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, repeat: int) -> dict:
    """Median wall time of each callable, calling them in turn `repeat` times."""
    ts = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            ts[k].append(_time(f))
    return {k: statistics.median(v) for k, v in ts.items()}


# ------------------------------------------------------------------------------------- baselines
def numpy_diag(omega, h, lr, a, T, C, record_every, seed=0):
    """Vectorized numpy twin of the diagonal recursion with (Last, EMA) and per-record mean losses."""
    rng = np.random.default_rng(seed)
    d = omega.size
    g = 1.0 - lr * omega
    u = np.ones((C, d))
    e = np.ones((C, d))
    z = np.empty((C, d))
    out = []
    for t in range(T):
        rng.standard_normal(out=z)
        u *= g
        z *= lr
        u += z  # u <- (1 - lr omega) u + lr xi
        e *= 1.0 - a
        e += a * u
        if (t + 1) % record_every == 0:
            # per-chain losses without BLAS (a threaded gemv here would fight Numba's idle threads)
            out.append((0.5 * np.einsum("ij,j,ij->i", u, h, u).mean(),
                        0.5 * np.einsum("ij,j,ij->i", e, h, e).mean()))
    return out


def numpy_dense(Om, H, lr, a, T, C, record_every, seed=0):
    rng = np.random.default_rng(seed)
    d = Om.shape[0]
    OmT = np.ascontiguousarray(Om.T)
    u = np.ones((C, d))
    e = np.ones((C, d))
    G = np.empty((C, d))
    z = np.empty((C, d))
    out = []
    for t in range(T):
        np.matmul(u, OmT, out=G)
        rng.standard_normal(out=z)
        G -= z
        G *= lr
        u -= G
        e *= 1.0 - a
        e += a * u
        if (t + 1) % record_every == 0:
            out.append((0.5 * np.einsum("ij,ij->i", u @ H, u).mean(), 0.5 * np.einsum("ij,ij->i", e @ H, e).mean()))
    return out


# ------------------------------------------------------------------------------------- benchmarks
def bench_diag(repeat, quick):
    d, C, T = (200, 200, 50) if quick else (1000, 1000, 200)
    omega = np.exp(np.linspace(np.log(0.01), 0.0, d))
    m = qs.LinearModel(omega, 0.5)
    ks = (qs.Last(), qs.EMA(1 / 450))
    work = C * d * T
    rng_states = nb.chain_states(np.uint64(1), C)
    sums = np.zeros(C)
    gen = np.random.default_rng(0)
    buf = np.empty((C, d))
    n_np = max(1, T // 4)  # numpy: T/4 steps' worth of normals into a reused (C, d) buffer

    def numpy_normals():
        for _ in range(n_np):
            gen.standard_normal(out=buf)

    nb.normal_sums(rng_states, 10, sums)  # compile
    qs.simulate(m, 2, C, ks)
    fns = {
        "simulate, record_every=1": lambda: qs.simulate(m, T, C, ks, record_every=1, seed=1),
        "simulate, record_every=T": lambda: qs.simulate(m, T, C, ks, record_every=T, seed=1),
        "simulate float32, record_every=1": lambda: qs.simulate(m, T, C, ks, seed=1, dtype=np.float32),
        "numpy, record_every=1": lambda: numpy_diag(omega, omega, m.lr, 1 / 450, T, C, 1),
        "numpy, record_every=T": lambda: numpy_diag(omega, omega, m.lr, 1 / 450, T, C, T),
        "raw normals (simulator streams)": lambda: nb.normal_sums(rng_states, d * T, sums),
        "raw normals (numpy Generator)": numpy_normals,
    }
    t = interleaved(fns, repeat)
    rate = {k: work / v for k, v in t.items()}
    rate["raw normals (numpy Generator)"] = n_np * C * d / t["raw normals (numpy Generator)"]
    print(f"\n[1] diagonal omega, d = {d}, chains = {C}, T = {T}, kernels (Last, EMA), float64")
    for k, v in t.items():
        unit = "normals/s" if k.startswith("raw") else "chain-coordinate-steps/s"
        print(f"    {k:36s} {v * 1e3:9.1f} ms   {rate[k]:9.3g} {unit}")
    raw = rate["raw normals (simulator streams)"]
    for rec in ("1", "T"):
        s = rate[f"simulate, record_every={rec}"]
        print(f"    record_every={rec}: {s / rate[f'numpy, record_every={rec}']:5.2f}x numpy (target >= 3x), "
              f"{100 * s / raw:5.1f}% of the raw sampling rate (target >= 60%)")
    print(f"    simulator streams vs numpy Generator (raw sampling): "
          f"{raw / rate['raw normals (numpy Generator)']:.2f}x")


def bench_dense(repeat, quick):
    d, C, T = (64, 256, 40) if quick else (256, 1024, 100)
    rs = np.random.default_rng(0)
    A = rs.standard_normal((d, d)) / np.sqrt(d)
    Om = A @ A.T + 0.5 * np.eye(d)
    m = qs.LinearModel(Om, 0.5 / np.linalg.eigvalsh(Om).max())
    ks = (qs.Last(), qs.EMA(1 / 450))
    qs.simulate(m, 2, C, ks)
    fns = {
        "simulate (BLAS path)": lambda: qs.simulate(m, T, C, ks, record_every=10, seed=1),
        "numpy matmul baseline": lambda: numpy_dense(Om, Om, m.lr, 1 / 450, T, C, 10),
    }
    t = interleaved(fns, repeat)
    flop = 2.0 * C * d * d * T
    print(f"\n[2] dense omega, d = {d}, chains = {C}, T = {T}, kernels (Last, EMA), loss every 10 steps")
    for k, v in t.items():
        print(f"    {k:36s} {v * 1e3:9.1f} ms   {flop / v / 1e9:6.1f} GFLOP/s in the gradient matmuls")
    print(f"    ratio simulate / numpy: {t['numpy matmul baseline'] / t['simulate (BLAS path)']:.2f}x (target >= 1x)")


def bench_exact(repeat, quick, full):
    m = qs.LinearModel(np.array([1.0, 0.015]), lr=0.05)
    ks = (qs.Last(), qs.EMA(1 / 450))
    steps, C = (10**5, 2000) if quick else (10**6, 10**4)
    every = steps // 100
    short = steps if full else steps // 10
    qs.simulate(m, 10, C, ks, method="exact")
    qs.simulate(m, 10, C, ks)
    t_exact = interleaved({"exact": lambda: qs.simulate(m, steps, C, ks, record_every=every, method="exact")},
                          repeat)["exact"]
    t_step = interleaved({"step": lambda: qs.simulate(m, short, C, ks, record_every=short // 100)},
                         max(1, repeat // 2 if not full else 1))["step"]
    scale = steps / short
    print(f"\n[3] fast/slow system (omega = (1, 0.015), lr 0.05, EMA 1/450), {steps:.0e} steps, "
          f"100 records, {C} chains")
    print(f"    method='exact'                        {t_exact * 1e3:9.1f} ms")
    what = "" if full else f" (timed on {short:.0e} steps, x{scale:g})"
    print(f"    method='step'                         {t_step * scale * 1e3:9.1f} ms{what}")
    print(f"    ratio step / exact: {t_step * scale / t_exact:.0f}x (target >= 100x)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--full", action="store_true", help="time method='step' over all 10^6 steps in [3]")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (median)")
    args = ap.parse_args(argv)
    import numba

    print(f"quadsgd.simulate benchmarks: numba {numba.__version__}, {numba.get_num_threads()} threads, "
          f"numpy {np.__version__}")
    bench_diag(args.repeat, args.quick)
    bench_dense(args.repeat, args.quick)
    bench_exact(args.repeat, args.quick, args.full)


if __name__ == "__main__":
    main()
