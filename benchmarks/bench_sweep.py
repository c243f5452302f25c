"""Benchmark of quadsgd sweeps: points/s at 1 vs 2 workers (and the ratio), measured in this run.

    python benchmarks/bench_sweep.py [--quick] [--no-dask] [--repeat N]

Workloads (built-in quantities, the spec engine as `python -m quadsgd sweep` runs it, with results
persisted to a fresh directory each time):

* theory:     48 points, loguniform spectrum d = 200, kernels Last/EMA/TwoPoint/SWA, stationary loss,
              effective lr and exact expected-loss curves (T = 6000, 50 records);
* simulation: 16 points, two-scale model, Last + EMA, 1000 chains x 6000 steps, simulated loss curve.

Executors: a warm local process pool (forkserver, one Numba thread per worker so the ratio measures the
sweep's parallelism, not Numba's), and a Dask LocalCluster on loopback (processes, 1 thread each).
Each configuration runs ``--repeat`` times (the configurations take turns); the median points/s is
printed, and the 2-worker / 1-worker ratio of those medians, with the CPU seconds the workers used per
wall second ("cores busy": about 2 for two workers on an idle 2-core machine, less when other processes
hold the cores). The "serial" line is the in-process run (no pickling, no pool).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import statistics
import sys
import tempfile
import time

from quadsgd.sweeps import load_spec, sweep
from quadsgd.sweeps.engine import init_worker
from sgdtraj.workers import mp_context


def theory_spec(quick):
    return {
        "sweep": {"name": "bench-theory", "seed": 0, "kernels": ["Last", "EMA", "TwoPoint", "SWA"],
                  "quantities": ["stationary_loss", "effective_lr", "expected_loss"]},
        "params": {"spectrum": "loguniform", "dim": 100 if quick else 200, "omega_min": 1e-3, "omega_max": 1.0,
                   "steps": 2000 if quick else 6000, "records": 50, "window": 20},
        "grid": {"lr": [0.05, 0.2, 0.5, 1.0], "decay": [0.1, 0.01, 0.001], "delta": [1, 10, 100, 1000]},
    }


def sim_spec(quick):
    return {
        "sweep": {"name": "bench-sim", "seed": 0, "kernels": ["Last", "EMA"], "quantities": ["sim_loss"],
                  "batch_size": 1},
        "params": {"lr": 0.05, "decay": 1 / 450, "steps": 2000 if quick else 6000, "chains": 1000, "records": 20,
                   "record_spacing": "linear"},
        "grid": {"replicate": list(range(8 if quick else 16))},
    }


def worker_cpu(executor) -> float:
    """CPU seconds used so far by the executor's worker processes (and this process, for "serial")."""
    if executor == "serial":
        return time.process_time()
    if isinstance(executor, cf.ProcessPoolExecutor):
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in list(executor._processes.values()):
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return total
    return sum(executor.run(time.process_time).values())  # Dask: every worker process


def run_once(spec, executor):
    out = tempfile.mkdtemp(prefix="bench-sweep-")
    try:
        c0 = worker_cpu(executor)
        t0 = time.perf_counter()
        df = sweep(spec.function(), spec.points, executor, out=out, seed=spec.seed, fingerprint=spec.fingerprint,
                   batch_size=spec.batch_size, progress=False)
        dt = time.perf_counter() - t0
        cpu = worker_cpu(executor) - c0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return (len(spec.points) / dt, cpu / dt), df


def warm(spec, executor):
    run_once(load_spec({**spec.data, "grid": {k: v[:2] for k, v in spec.data["grid"].items()}}), executor)


def measure(spec, executors, repeat):
    """Median points/s per executor; the executors take turns in each repeat (fair under changing load)."""
    for ex in executors.values():
        warm(spec, ex)
    rates = {k: [] for k in executors}
    cores = {k: [] for k in executors}
    tables = {}
    for _ in range(repeat):
        for k, ex in executors.items():
            (r, c), df = run_once(spec, ex)
            rates[k].append(r)
            cores[k].append(c)
            if k in tables:
                assert df.equals(tables[k]), "results differ between repeats"
            tables[k] = df
    return ({k: statistics.median(v) for k, v in rates.items()},
            {k: statistics.median(v) for k, v in cores.items()}, tables)


def line(label, rate, cores):
    return f"    {label:34s}{rate:8.2f} points/s   ({cores:4.2f} cores busy in the workers)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller workloads (smoke run)")
    ap.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster measurement")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"quadsgd sweep benchmark: {os.cpu_count()} cores, python {sys.version.split()[0]}; "
          f"median of {args.repeat} runs, points/s (higher is better); load average before: "
          f"{os.getloadavg()[0]:.2f}")
    for name, spec_dict in (("theory", theory_spec(args.quick)), ("simulation", sim_spec(args.quick))):
        spec = load_spec(spec_dict)
        print(f"\n[{name}] {len(spec.points)} points")
        pools = {n: cf.ProcessPoolExecutor(n, mp_context=mp_context(), initializer=init_worker, initargs=(1,))
                 for n in (1, 2)}
        try:
            res, cores, tables = measure(spec, {"serial": "serial", **pools}, args.repeat)
        finally:
            for p in pools.values():
                p.shutdown()
        ref = tables["serial"]
        assert tables[1].equals(ref) and tables[2].equals(ref), "pool results differ from the serial run"
        print(line("serial (in process)", res["serial"], cores["serial"]))
        for n in (1, 2):
            print(line(f"local pool, {n} worker{'s' if n > 1 else ''}", res[n], cores[n]))
        print(f"    speed-up 2 vs 1 workers           {res[2] / res[1]:8.2f}x")
        if not args.no_dask:
            from contextlib import ExitStack

            from distributed import Client, LocalCluster

            with ExitStack() as stack:
                clients = {}
                for n in (1, 2):
                    cluster = stack.enter_context(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                               host="127.0.0.1", dashboard_address="127.0.0.1:0"))
                    clients[n] = stack.enter_context(Client(cluster))
                dres, dcores, dtables = measure(spec, clients, args.repeat)
            assert dtables[1].equals(ref) and dtables[2].equals(ref), "Dask results differ from the serial run"
            for n in (1, 2):
                print(line(f"dask LocalCluster, {n} worker{'s' if n > 1 else ''}", dres[n], dcores[n]))
            print(f"    speed-up 2 vs 1 Dask workers      {dres[2] / dres[1]:8.2f}x")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (other processes on the cores lower the 2-worker rate)")


if __name__ == "__main__":
    main()
