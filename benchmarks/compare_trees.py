"""Speed of the same public calls (quadsgd, and realnet's averaging API) in two checkouts (before / after a change), in
one run.

    python benchmarks/compare_trees.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 3] [--repeat 5] [--only TEXT]

Every case runs in a fresh interpreter that imports ``quadsgd`` from the given checkout (``PYTHONPATH``),
compiles (one warm-up call), then times ``--repeat`` calls and reports the median. The two checkouts
alternate ``--rounds`` times (the machine may be shared), and the script prints, per case, the median over
rounds of each checkout and the ratio new / old (< 1: the new checkout is faster). Only public API calls
whose signature both checkouts share are timed; Numba runs on 1 thread (NUMBA_NUM_THREADS=1) so that the
ratio does not depend on what else the machine does with its second core.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

#: the averaging API on a real network (torch on one thread): 20 updates of a fresh average
AVERAGING = """
import torch
torch.set_num_threads(1)
from realnet.averaging import KernelAveragedModel
from realnet.models import create_model
net = create_model("resnet20", num_classes=10, small_stem=True)
def f():
    avg = KernelAveragedModel(net, "{spec}", at_step={at})
    for _ in range(20):
        avg.update_parameters(net)
"""

CASES = {
    "simulate diagonal d=1000, 1000 chains, T=200, (Last, EMA)": """
m = qs.LinearModel(np.linspace(0.01, 1.0, 1000), lr=0.5)
f = lambda: qs.simulate(m, 200, chains=1000, kernels=(qs.Last(), qs.EMA(0.1)), seed=0)
""",
    "simulate diagonal + momentum 0.9, SWA(50), d=200, 500 chains, T=500": """
m = qs.LinearModel(np.linspace(0.01, 1.0, 200), lr=0.05, momentum=0.9)
f = lambda: qs.simulate(m, 500, chains=500, kernels=(qs.Last(), qs.SWA(50)), seed=0)
""",
    "simulate exact, fast/slow, 1e5 steps, 1e4 chains, EMA(1/450)": """
m = qs.LinearModel(np.array([1.0, 0.015]), lr=0.05)
f = lambda: qs.simulate(m, 100000, chains=10000, kernels=(qs.Last(), qs.EMA(1/450)), record_every=1000,
                        method="exact", seed=0)
""",
    "stationary_covariance diagonal d=1e5, momentum 0.9, SWA(1000)": """
m = qs.LinearModel(np.linspace(1e-4, 1.0, 100000), lr=0.1, momentum=0.9)
f = lambda: qs.stationary_covariance(m, qs.SWA(1000))
""",
    "stationary_covariance dense d=128, TwoPoint(50)": """
rng = np.random.default_rng(0)
q = np.linalg.qr(rng.standard_normal((128, 128)))[0]
m = qs.LinearModel((q * np.linspace(0.01, 1, 128)) @ q.T, lr=0.5)
f = lambda: qs.stationary_covariance(m, qs.TwoPoint(50))
""",
    "expected_loss diagonal d=1e4, T=1e4, EMA(1/450)": """
m = qs.LinearModel(np.linspace(1e-3, 1.0, 10000), lr=0.05)
f = lambda: qs.expected_loss(m, qs.EMA(1/450), steps=10000, u0=np.ones(10000))
""",
    "KernelAveragedModel ResNet-20 update x20: ema:0.01": AVERAGING.format(spec="ema:0.01", at="None"),
    "KernelAveragedModel ResNet-20 update x20: swa:10 sliding window": AVERAGING.format(spec="swa:10", at="None"),
    "KernelAveragedModel ResNet-20 update x20: npoint:3:4 at step 20": AVERAGING.format(spec="npoint:3:4", at="20"),
}

RUNNER = """
import json, statistics, sys, time
import numpy as np
import quadsgd as qs
{setup}
f()
ts = []
for _ in range({repeat}):
    t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
print(json.dumps(dict(median=statistics.median(ts), file=qs.__file__)))
"""


def run_case(tree: str, setup: str, repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree), "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", RUNNER.format(setup=setup, repeat=repeat)], env=env,
                         capture_output=True, text=True, check=True, cwd=os.path.abspath(tree))
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["file"].startswith(os.path.abspath(tree)):
        raise RuntimeError(f"quadsgd was imported from {res['file']}, not from {tree}")
    return res["median"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="", help="run only the cases whose name contains this text")
    a = ap.parse_args(argv)
    print(f"old: {a.old}\nnew: {a.new}\nrounds {a.rounds}, repeat {a.repeat}, Numba on 1 thread; "
          f"load average {os.getloadavg()}")
    print(f"{'case':70s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s}")
    for name, setup in CASES.items():
        if a.only not in name:
            continue
        t = {"old": [], "new": []}
        for _ in range(a.rounds):
            for which in ("old", "new"):
                t[which].append(run_case(getattr(a, which), setup, a.repeat))
        o, n = statistics.median(t["old"]), statistics.median(t["new"])
        print(f"{name:70s} {o * 1e3:9.1f} {n * 1e3:9.1f} {n / o:8.2f}", flush=True)


if __name__ == "__main__":
    main()
